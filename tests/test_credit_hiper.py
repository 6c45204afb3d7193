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
    a = traj("A", [0.0, 0.0, 0.0, 1.0], ["KEEP", "KEEP", "SWITCH", "KEEP"], ["g1", "g1", "g2", "g2x"], invalid_at=1)
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

# Shaping. A: T = 4, KEEP turns t1, t3 (t0 starts a segment) -> 0.3 * (2/4) / 2 = 0.075 each;
#   t1 invalid -0.1 ; t3 changed subgoal -0.3.  r'_A = (0, -0.175, 0, 1 - 0.075 - 0.3 = 0.625)
# B: T = 3, KEEP turn t2 -> 0.3 * (1/3) / 1 = 0.1.  r'_B = (0, 0.5, -0.1)
SHAPED = [0.0, -0.175, 0.0, 0.625, 0.0, 0.5, -0.1]

# Executor A^L (gamma 0.9, lam_L 0.8, reset at segment ends):
# A t3 (done): 0.625 - 0.6 = 0.025
#   t2: 0 + 0.9*V_L(3) - 0.5 = 0.04 ; A = 0.04 + 0.72*0.025 = 0.058
#   t1 (segment end, next start t2): -0.175 + 0.9*V_H(2) - 0.3 = -0.115 ; A = -0.115
#   t0: 0 + 0.9*0.3 - 0.1 = 0.17 ; A = 0.17 + 0.72*(-0.115) = 0.0872
# B t2 (truncated, no bootstrap): -0.1 - 0.5 = -0.6
#   t1: 0.5 + 0.9*0.5 - 0.4 = 0.55 ; A = 0.55 + 0.72*(-0.6) = 0.118
#   t0 (segment end): 0 + 0.9*V_H(1) - 0.2 = -0.11
A_LOW = [0.0872, -0.115, 0.058, 0.025, -0.11, 0.118, -0.6]

# Switch: G^ inside the segment, bootstrapped by V_H of the next segment's start.
# A: G^_3 = 0.625 ; G^_2 = 0.9*0.625 = 0.5625 ; G^_1 = -0.175 + 0.9*0.4 = 0.185 ; G^_0 = 0.9*0.185 = 0.1665
# B: G^_2 = -0.1 ; G^_1 = 0.5 + 0.9*(-0.1) = 0.41 ; G^_0 = 0 + 0.9*V_H(1) = 0.09
G_HAT = [0.1665, 0.185, 0.5625, 0.625, 0.09, 0.41, -0.1]
A_SWITCH = [0.1665 - 0.2, 0.185 - 0.1, 0.5625 - 0.3, 0.625 - 0.4, 0.09 - 0.1, 0.41 - 0.2, -0.1 - 0.3]

# Planner (lam_H 0.5):
# A seg0 (d=2): G = 0 + 0.9*(-0.175) = -0.1575 ; delta = -0.1575 + 0.81*V_H(2) - V_H(0) = -0.0335
#   seg1 (d=2, done): G = 0.9*0.625 = 0.5625 ; delta = 0.5625 - 0.4 = 0.1625 ; A^H_1 = 0.1625
#   A^H_0 = -0.0335 + 0.81*0.5*0.1625 = 0.0323125
# B seg0 (d=1): delta = 0 + 0.9*V_H(1) - V_H(0) = 0.09 - 0.3 = -0.21
#   seg1 (d=2, truncated, no bootstrap): G = 0.5 + 0.9*(-0.1) = 0.41 ; delta = 0.41 - 0.1 = 0.31
#   A^H_0 = -0.21 + 0.9*0.5*0.31 = -0.0705
A_HIGH = [0.0323125, 0.0, 0.1625, 0.0, -0.0705, 0.31, 0.0]
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


def test_bootstrap_truncated_continues_from_own_low_value():
    b, v = example()
    adv = estimate("hiper", b, values=v, bootstrap_truncated=True, **OPTS)
    # B ends truncated: value after t2 = V_L(2) = 0.5 (A is terminated: unchanged)
    # A^L: t2: -0.1 + 0.9*0.5 - 0.5 = -0.15 ; t1: 0.55 + 0.72*(-0.15) = 0.442 ; t0 unchanged -0.11
    np.testing.assert_allclose(adv.spans["action"], A_LOW[:4] + [-0.11, 0.442, -0.15], atol=1e-12)
    # G^: t2 = -0.1 + 0.45 = 0.35 ; t1 = 0.5 + 0.9*0.35 = 0.815 ; planner seg1 delta = 0.815 - 0.1 = 0.715,
    # seg0 A^H = -0.21 + 0.45*0.715 = 0.11175
    np.testing.assert_allclose(adv.extras["target_switch"][4:], [0.09, 0.815, 0.35])
    np.testing.assert_allclose(adv.spans["subgoal"][4:], [0.11175, 0.715, 0.0], atol=1e-12)


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
    # A t0: -0.175 + V_H(2) - V_L(0) = -0.175 + 0.4 - 0.1 = 0.125 ; t2: 0 + 0.625 - 0.5 = 0.125
    assert adv.spans["action"][0] == pytest.approx(0.125)
    assert adv.spans["action"][2] == pytest.approx(0.125)
    # planner A: seg1 delta = 0.625 - 0.4 = 0.225 ; seg0 delta = -0.175 + 0.4 - 0.2 = 0.025
    # A^H_0 = 0.025 + 1*0.95*0.225 = 0.23875
    assert adv.spans["subgoal"][0] == pytest.approx(0.23875)


def test_missing_fields_and_heads():
    b, v = example()
    with pytest.raises(MissingInputError, match="values"):
        estimate("hiper", b)
    with pytest.raises(MissingInputError, match="switch"):
        estimate("hiper", b, values={"high": v["high"], "low": v["low"]})
    with pytest.raises(ValueError, match="dict"):
        estimate("hiper", b, values=v["low"])
    plain = StepBatch.from_trajectories([Trajectory("G", "G", "x", [Step(obs="o", reward=1.0)], terminated=True)])
    with pytest.raises(MissingInputError, match="switch"):
        estimate("hiper", plain, values={h: np.zeros(1) for h in ("high", "low", "switch")})


# ----------------------------------------------------------------------------- properties

FLOATS = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def hiper_batches(draw):
    trajs = []
    for i in range(draw(st.integers(1, 5))):
        n = draw(st.integers(1, 6))
        trajs.append(
            traj(
                f"t{i}",
                draw(st.lists(FLOATS, min_size=n, max_size=n)),
                draw(st.lists(st.sampled_from(["KEEP", "SWITCH"]), min_size=n, max_size=n)),
                draw(st.lists(st.sampled_from(["x", "y", ""]), min_size=n, max_size=n)),
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
    batch, _ = data
    to_go = {}
    for tid, t, r in sorted(zip(batch.traj_id, batch.turn, batch.reward), key=lambda x: (x[0], -x[1])):
        to_go[(tid, t)] = r + to_go.get((tid, t + 1), 0.0)
    v = np.array([to_go[(tid, t)] for tid, t in zip(batch.traj_id, batch.turn)])
    heads = {"high": v, "low": v, "switch": v}
    adv = estimate("hiper", batch, values=heads, lam_H=1.0, shaping=False, standardize=False)
    scale = 1e-8 * (1 + np.abs(v).max())
    for name in ("action", "subgoal", "switch"):
        np.testing.assert_allclose(adv.spans[name], 0.0, atol=scale)
