"""HiPER hierarchical advantages, with expected numbers worked out by hand."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentrl.credit import MissingInputError, estimate
from agentrl.types import Step, StepBatch, Trajectory


def traj(tid, rewards, switches, subgoals, *, truncated=False, invalid_at=None, group="G"):
    steps = [
        Step(obs=f"o{t}", action="a", reward=r, valid=t != invalid_at, info={"switch": sw, "subgoal": sg})
        for t, (r, sw, sg) in enumerate(zip(rewards, switches, subgoals))
    ]
    return Trajectory(group, group, tid, steps, terminated=not truncated, truncated=truncated)


def example() -> tuple[StepBatch, dict[str, np.ndarray]]:
    # A (terminated): KEEP KEEP SWITCH KEEP -> segments [0,1] [2,3]; invalid at t=1;
    #                 subgoal changes g2 -> g2x on the KEEP turn t=3.
    # B (truncated):  SWITCH SWITCH KEEP   -> segments [0] [1,2].
    a = traj(
        "A", [0.0, 0.0, 0.0, 1.0], ["KEEP", "KEEP", "SWITCH", "KEEP"], ["g1", "g1", "g2", "g2x"], invalid_at=1
    )
    b = traj("B", [0.0, 0.5, 0.0], ["SWITCH", "SWITCH", "KEEP"], ["h1", "h2", "h2"], truncated=True)
    batch = StepBatch.from_trajectories([a, b])
    # 9.0 marks V_H on non-boundary rows: never used by any recursion
    values = {
        "high": np.array([0.2, 9.0, 0.4, 9.0, 0.3, 0.1, 9.0]),
        "low": np.array([0.1, 0.3, 0.5, 0.6, 0.2, 0.4, 0.5]),
        "switch": np.array([0.2, 0.1, 0.3, 0.4, 0.1, 0.2, 0.3]),
    }
    return batch, values


OPTS = {"gamma": 0.9, "lam_L": 0.8, "lam_H": 0.5, "standardize": False}
# Defaults as in the authors' code (JonP07/HiPER-agent, hiper_hae/core_hae.py) and ALFWorld run script:
# KEEP tags counted from t=0, truncated episodes bootstrapped (planner/switch from V_H at the start
# of the last segment, executor from the last row's V_L).

# Shaping. A: T = 4, KEEP tags at t0, t1, t3 -> 0.3 * (3/4) / 3 = 0.075 each;
#   t1 invalid -0.1 ; t3 changed subgoal -0.3.  r'_A = (-0.075, -0.175, 0, 1 - 0.075 - 0.3 = 0.625)
# B: T = 3, KEEP tag at t2 -> 0.3 * (1/3) / 1 = 0.1.  r'_B = (0, 0.5, -0.1)
SHAPED = [-0.075, -0.175, 0.0, 0.625, 0.0, 0.5, -0.1]

# Executor A^L (gamma 0.9, lam_L 0.8, reset at segment ends):
# A t3 (done): 0.625 - 0.6 = 0.025
#   t2: 0 + 0.9*V_L(3) - 0.5 = 0.04 ; A = 0.04 + 0.72*0.025 = 0.058
#   t1 (segment end, next start t2): -0.175 + 0.9*V_H(2) - 0.3 = -0.115 ; A = -0.115
#   t0: -0.075 + 0.9*0.3 - 0.1 = 0.095 ; A = 0.095 + 0.72*(-0.115) = 0.0122
# B t2 (truncated: continues from its own V_L(2) = 0.5): -0.1 + 0.9*0.5 - 0.5 = -0.15
#   t1: 0.5 + 0.9*0.5 - 0.4 = 0.55 ; A = 0.55 + 0.72*(-0.15) = 0.442
#   t0 (segment end): 0 + 0.9*V_H(1) - 0.2 = -0.11
A_LOW = [0.0122, -0.115, 0.058, 0.025, -0.11, 0.442, -0.15]

# Switch: G^ inside the segment, bootstrapped by V_H of the next segment's start; B's last segment
# [1, 2] is cut, so it continues from V_H at its own start, V_H(1) = 0.1.
# A: G^_3 = 0.625 ; G^_2 = 0.9*0.625 = 0.5625 ; G^_1 = -0.175 + 0.9*0.4 = 0.185 ; G^_0 = -0.075 + 0.9*0.185 = 0.0915
# B: G^_2 = -0.1 + 0.9*0.1 = -0.01 ; G^_1 = 0.5 + 0.9*(-0.01) = 0.491 ; G^_0 = 0 + 0.9*V_H(1) = 0.09
G_HAT = [0.0915, 0.185, 0.5625, 0.625, 0.09, 0.491, -0.01]
A_SWITCH = [0.0915 - 0.2, 0.185 - 0.1, 0.5625 - 0.3, 0.625 - 0.4, 0.09 - 0.1, 0.491 - 0.2, -0.01 - 0.3]

# Planner (lam_H 0.5):
# A seg0 (d=2): G = -0.075 + 0.9*(-0.175) = -0.2325 ; delta = -0.2325 + 0.81*V_H(2) - V_H(0) = -0.1085
#   seg1 (d=2, done): G = 0.9*0.625 = 0.5625 ; delta = 0.5625 - 0.4 = 0.1625 ; A^H_1 = 0.1625
#   A^H_0 = -0.1085 + 0.81*0.5*0.1625 = -0.0426875
# B seg1 (d=2, cut): G = 0.5 + 0.9*(-0.1) = 0.41 ; delta = 0.41 + 0.81*V_H(1) - V_H(1) = 0.391
#   seg0 (d=1): delta = 0 + 0.9*V_H(1) - V_H(0) = 0.09 - 0.3 = -0.21 ; A^H_0 = -0.21 + 0.9*0.5*0.391 = -0.03405
A_HIGH = [-0.0426875, 0.0, 0.1625, 0.0, -0.03405, 0.391, 0.0]
BOUNDARY = [True, False, True, False, True, True, False]


def test_shaping_by_hand():
    b, v = example()
    adv = estimate("hiper", b, values=v, **OPTS)
    np.testing.assert_allclose(adv.extras["shaped_reward"], SHAPED)
    plain = estimate("hiper", b, values=v, shaping=False, **OPTS)
    np.testing.assert_allclose(plain.extras["shaped_reward"], b.reward)


def test_three_families_before_standardisation():
    b, v = example()
    adv = estimate("hiper", b, values=v, **OPTS)
    np.testing.assert_allclose(adv.spans["action"], A_LOW, atol=1e-12)
    np.testing.assert_allclose(adv.spans["switch"], A_SWITCH, atol=1e-12)
    np.testing.assert_allclose(adv.spans["subgoal"], A_HIGH, atol=1e-12)
    np.testing.assert_array_equal(adv.masks["subgoal"], BOUNDARY)
    np.testing.assert_array_equal(adv.step, adv.spans["action"])
    # value targets: A + V per head
    np.testing.assert_allclose(adv.extras["target_low"], np.array(A_LOW) + v["low"])
    np.testing.assert_allclose(adv.extras["target_switch"], G_HAT)
    boundary = np.array(BOUNDARY)
    np.testing.assert_allclose(adv.extras["target_high"][boundary], (np.array(A_HIGH) + v["high"])[boundary])


def test_truncated_bootstrap_last_low_option_gives_the_old_numbers():
    b, v = example()
    adv = estimate("hiper", b, values=v, truncated_bootstrap="last_low", **OPTS)
    # B's planner and switch continue from V_L(2) = 0.5 instead of V_H(1) = 0.1 (A is terminated: unchanged)
    # G^: t2 = -0.1 + 0.45 = 0.35 ; t1 = 0.5 + 0.9*0.35 = 0.815 ; planner seg1 delta = 0.815 - 0.1 = 0.715,
    # seg0 A^H = -0.21 + 0.45*0.715 = 0.11175 ; the executor is the same in both (own V_L)
    np.testing.assert_allclose(adv.spans["action"], A_LOW, atol=1e-12)
    np.testing.assert_allclose(adv.extras["target_switch"], G_HAT[:4] + [0.09, 0.815, 0.35], atol=1e-12)
    np.testing.assert_allclose(adv.spans["subgoal"], A_HIGH[:4] + [0.11175, 0.715, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="truncated_bootstrap"):
        estimate("hiper", b, values=v, truncated_bootstrap="zero", **OPTS)


def test_without_bootstrap_a_cut_episode_ends_at_zero():
    b, v = example()
    adv = estimate("hiper", b, values=v, bootstrap_truncated=False, **OPTS)
    # B: A^L t2 = -0.1 - 0.5 = -0.6 ; t1 = 0.55 + 0.72*(-0.6) = 0.118 ; G^ = (0.09, 0.41, -0.1) ;
    # planner seg1 delta = 0.41 - 0.1 = 0.31 ; seg0 A^H = -0.21 + 0.45*0.31 = -0.0705
    np.testing.assert_allclose(adv.spans["action"], A_LOW[:4] + [-0.11, 0.118, -0.6], atol=1e-12)
    np.testing.assert_allclose(adv.extras["target_switch"], G_HAT[:4] + [0.09, 0.41, -0.1], atol=1e-12)
    np.testing.assert_allclose(adv.spans["subgoal"], A_HIGH[:4] + [-0.0705, 0.31, 0.0], atol=1e-12)


def test_keep_penalty_counts_t0_unless_skip_first():
    # C: KEEP KEEP SWITCH (T = 3), D: SWITCH KEEP (T = 2), E: one KEEP turn (T = 1), no other reward
    c = traj("C", [0.0, 0.0, 0.0], ["KEEP", "KEEP", "SWITCH"], ["x", "x", "y"])
    d = traj("D", [0.0, 0.0], ["SWITCH", "KEEP"], ["x", "x"])
    e = traj("E", [0.0], ["KEEP"], ["x"])
    b = StepBatch.from_trajectories([c, d, e])
    v = {h: np.zeros(len(b)) for h in ("high", "low", "switch")}
    # default (core_hae.py): C has 2 KEEP tags of 3 turns -> 0.3 * (2/3) / 2 = 0.1 on t0 and t1 ;
    # D: 1 of 2 -> 0.15 on t1 ; E: one-turn trajectories are skipped
    got = estimate("hiper", b, values=v, standardize=False).extras["shaped_reward"]
    np.testing.assert_allclose(got, [-0.1, -0.1, 0.0, 0.0, -0.15, 0.0])
    # skip_first (core_hgae.py's option): C counts t1 only, 1 of 2 turns -> 0.3 * (1/2) / 1 = 0.15 on t1 ;
    # D: 1 of 1 -> 0.3 on t1
    got = estimate("hiper", b, values=v, standardize=False, keep_penalty_skip_first=True).extras[
        "shaped_reward"
    ]
    np.testing.assert_allclose(got, [0.0, -0.15, 0.0, 0.0, -0.3, 0.0])


def standardised(x, mask=None):
    x = np.asarray(x, dtype=np.float64)
    sel = np.ones(x.size, bool) if mask is None else np.asarray(mask)
    out = np.zeros_like(x)
    out[sel] = (x[sel] - x[sel].mean()) / (x[sel].std() + 1e-8)
    return out


def test_routing_after_standardisation():
    b, v = example()
    adv = estimate("hiper", b, values=v, **{**OPTS, "standardize": True})
    np.testing.assert_allclose(adv.spans["action"], standardised(A_LOW), atol=1e-9)
    np.testing.assert_allclose(adv.spans["switch"], standardised(A_SWITCH), atol=1e-9)
    # subgoal: standardised over the 4 boundary rows only, 0 on the others
    np.testing.assert_allclose(adv.spans["subgoal"], standardised(A_HIGH, BOUNDARY), atol=1e-9)
    assert np.all(adv.spans["subgoal"][~np.array(BOUNDARY)] == 0.0)
    np.testing.assert_array_equal(adv.masks["subgoal"], BOUNDARY)
    np.testing.assert_array_equal(adv.step, adv.spans["action"])
    # targets are never standardised
    np.testing.assert_allclose(adv.extras["target_switch"], G_HAT)


def test_defaults_are_gamma_1_lam_L_1_lam_H_095():
    b, v = example()
    adv = estimate("hiper", b, values=v, standardize=False)
    # lam_L = gamma = 1 inside a segment: A^L_t = (rewards to the segment end) + V_next(end) - V_L(t)
    # A t0: -0.075 - 0.175 + V_H(2) - V_L(0) = -0.25 + 0.4 - 0.1 = 0.05 ; t2: 0 + 0.625 - 0.5 = 0.125
    assert adv.spans["action"][0] == pytest.approx(0.05)
    assert adv.spans["action"][2] == pytest.approx(0.125)
    # planner A: seg1 delta = 0.625 - 0.4 = 0.225 ; seg0 delta = -0.25 + 0.4 - 0.2 = -0.05
    # A^H_0 = -0.05 + 1*0.95*0.225 = 0.16375
    assert adv.spans["subgoal"][0] == pytest.approx(0.16375)
    # bootstrap_truncated is on: B's cut last segment continues from V_H(1) = 0.1:
    # seg1 delta = (0.5 - 0.1) + V_H(1) - V_H(1) = 0.4
    assert adv.spans["subgoal"][5] == pytest.approx(0.4)


def test_missing_fields_and_heads():
    b, v = example()
    with pytest.raises(MissingInputError, match="values"):
        estimate("hiper", b)
    with pytest.raises(MissingInputError, match="switch"):
        estimate("hiper", b, values={"high": v["high"], "low": v["low"]})
    with pytest.raises(ValueError, match="dict"):
        estimate("hiper", b, values=v["low"])
    plain = StepBatch.from_trajectories(
        [Trajectory("G", "G", "x", [Step(obs="o", reward=1.0)], terminated=True)]
    )
    with pytest.raises(MissingInputError, match="switch"):
        estimate("hiper", plain, values={h: np.zeros(1) for h in ("high", "low", "switch")})


# ----------------------------------------------------------------------------- properties

FLOATS = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def hiper_batches(draw, subgoals=("x", "y", "")):
    trajs = []
    for i in range(draw(st.integers(1, 5))):
        n = draw(st.integers(1, 6))
        trajs.append(
            traj(
                f"t{i}",
                draw(st.lists(FLOATS, min_size=n, max_size=n)),
                draw(st.lists(st.sampled_from(["KEEP", "SWITCH"]), min_size=n, max_size=n)),
                draw(st.lists(st.sampled_from(subgoals), min_size=n, max_size=n)),
                truncated=draw(st.booleans()),
                invalid_at=draw(st.none() | st.integers(0, n - 1)),
                group=f"g{i % 2}",
            )
        )
    return StepBatch.from_trajectories(trajs), draw(st.integers(0, 2**16))


def keyed(batch, arr):
    return {(tid, int(t)): float(a) for tid, t, a in zip(batch.traj_id, batch.turn, arr)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hiper_batches(), st.sampled_from([True, False]), st.sampled_from([True, False]))
def test_properties_permutation_finite_deterministic(data, standardize, bootstrap):
    batch, seed = data
    rng = np.random.default_rng(seed)
    values = {h: rng.normal(size=len(batch)) for h in ("high", "low", "switch")}
    opts = {"gamma": 0.95, "standardize": standardize, "bootstrap_truncated": bootstrap}
    adv = estimate("hiper", batch, values=values, **opts)
    for key, arr in adv.arrays().items():
        assert np.all(np.isfinite(arr.astype(np.float64))), key
    again = estimate("hiper", batch, values=values, **opts)
    for key, arr in adv.arrays().items():
        np.testing.assert_array_equal(arr, again.arrays()[key])
    perm = rng.permutation(len(batch))
    moved = batch.take(perm)
    got = estimate("hiper", moved, values={h: x[perm] for h, x in values.items()}, **opts)
    for key, arr in adv.arrays().items():
        want, have = keyed(batch, arr), keyed(moved, got.arrays()[key])
        for k, a in want.items():
            assert have[k] == pytest.approx(a, rel=1e-9, abs=1e-9), (key, k)


@settings(max_examples=25, deadline=None)
@given(hiper_batches())
def test_exact_critic_without_shaping_gives_zero(data):
    # gamma = lam = 1, V_L = V_T = V_H = reward still to come: all three families are exactly 0
    # (no bootstrap: an exact critic of a cut episode has nothing left to come after its last row)
    batch, _ = data
    to_go = {}
    for tid, t, r in sorted(zip(batch.traj_id, batch.turn, batch.reward), key=lambda x: (x[0], -x[1])):
        to_go[(tid, t)] = r + to_go.get((tid, t + 1), 0.0)
    v = np.array([to_go[(tid, t)] for tid, t in zip(batch.traj_id, batch.turn)])
    heads = {"high": v, "low": v, "switch": v}
    adv = estimate(
        "hiper", batch, values=heads, lam_H=1.0, shaping=False, standardize=False, bootstrap_truncated=False
    )
    scale = 1e-8 * (1 + np.abs(v).max())
    for name in ("action", "subgoal", "switch"):
        np.testing.assert_allclose(adv.spans[name], 0.0, atol=scale)


def reference_loops(batch, values, *, gamma, lam_L, lam_H, bootstrap):
    """HiPER's recursions written one trajectory and one turn at a time, in the order of the authors'
    compute_hae_advantage (JonP07/HiPER-agent, hiper_hae/core_hae.py): normalized KEEP penalty counted
    from t=0 (one-turn trajectories skipped), invalid penalty, subgoal-change penalty on KEEP turns
    t >= 1 when both subgoals are present, executor GAE per segment, planner GAE across segments,
    switch returns per segment."""
    v_h, v_l, v_t = values["high"], values["low"], values["switch"]
    low, high, switch_ret = (np.zeros(len(batch)) for _ in range(3))
    for tid in dict.fromkeys(batch.traj_id):
        rows = sorted(np.flatnonzero(batch.traj_id == tid), key=lambda i: batch.turn[i])
        n = len(rows)
        sw = [bool(batch.switch[i]) for i in rows]
        sg = [batch.subgoal[i] for i in rows]
        r = [float(batch.reward[i]) for i in rows]
        n_keep = sum(not x for x in sw)
        for k in range(n):
            if n > 1 and n_keep and not sw[k]:
                r[k] -= 0.3 * (n_keep / n) / n_keep
            if not batch.valid[rows[k]]:
                r[k] -= 0.1
            if k and not sw[k] and sg[k] and sg[k - 1] and sg[k] != sg[k - 1]:
                r[k] -= 0.3
        done = [bool(batch.done[i]) for i in rows]
        starts = [0] + [k for k in range(1, n) if sw[k]]
        nexts = starts[1:] + [None]
        segs = [(s, n - 1 if nxt is None else nxt - 1, nxt) for s, nxt in zip(starts, nexts)]
        for s, e, nxt in segs:
            adv = 0.0
            for k in range(e, s - 1, -1):
                i, live = rows[k], 0.0 if done[k] else 1.0
                if k < e:
                    v_next = v_l[rows[k + 1]]
                elif live and nxt is not None:
                    v_next = v_h[rows[nxt]]
                else:
                    v_next = v_l[i] if live and bootstrap else 0.0
                adv = r[k] + gamma * live * v_next - v_l[i] + gamma * lam_L * live * adv
                low[i] = adv
        seg_adv = 0.0
        for s, e, nxt in reversed(segs):
            live, d = 0.0 if done[e] else 1.0, e - s + 1
            if live and nxt is not None:
                boot = v_h[rows[nxt]]
            else:
                boot = v_h[rows[s]] if live and bootstrap else 0.0
            ret = sum(gamma**j * r[s + j] for j in range(d))
            seg_adv = ret + gamma**d * live * boot - v_h[rows[s]] + gamma**d * lam_H * live * seg_adv
            high[rows[s]] = seg_adv
            g = live * boot
            for k in range(e, s - 1, -1):
                g = r[k] + gamma * g
                switch_ret[rows[k]] = g
    return low, high, switch_ret - v_t


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hiper_batches(subgoals=("x", "y")), st.sampled_from([True, False]))
def test_defaults_match_a_turn_by_turn_transcription_of_the_authors_code(data, bootstrap):
    # subgoals always present: the code skips the change penalty when a turn has no subgoal tag,
    # which a StepBatch cannot tell apart from a KEEP turn that carried its subgoal over
    batch, seed = data
    rng = np.random.default_rng(seed)
    values = {h: rng.normal(size=len(batch)) for h in ("high", "low", "switch")}
    opts = {"gamma": 0.9, "lam_L": 0.8, "lam_H": 0.7}
    adv = estimate("hiper", batch, values=values, standardize=False, bootstrap_truncated=bootstrap, **opts)
    low, high, switch = reference_loops(batch, values, bootstrap=bootstrap, **opts)
    scale = 1e-9 * (1 + np.abs(batch.reward).max())
    np.testing.assert_allclose(adv.spans["action"], low, rtol=1e-9, atol=scale)
    np.testing.assert_allclose(adv.spans["subgoal"], high, rtol=1e-9, atol=scale)
    np.testing.assert_allclose(adv.spans["switch"], switch, rtol=1e-9, atol=scale)
