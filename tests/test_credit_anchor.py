"""Anchor-state estimators (GiGPO, HGPO, SALT): numbers worked out by hand from credit.md,
identities with GRPO and between the methods, properties on random batches, and the
benchmark's plain-Python GiGPO yardstick."""

from __future__ import annotations

import dataclasses
import difflib
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentrl.credit import MissingInputError, estimate
from agentrl.credit.gigpo import step_advantage
from agentrl.credit.ops import layout
from agentrl.eval.naive_gigpo import naive_gigpo
from agentrl.eval.synthetic_rollouts import synthetic_batch, synthetic_trajectories
from agentrl.types import Step, StepBatch, Trajectory

EPS = 1e-6


def traj(tid: str, steps: list[tuple], group: str = "g") -> Trajectory:
    """steps: (state, action, reward) or (state, action, reward, valid)."""
    return Trajectory(
        task_id=group,
        group_id=group,
        traj_id=tid,
        steps=[
            Step(obs=str(s[0]), state_key=s[0], action=s[1], reward=s[2], valid=s[3] if len(s) > 3 else True)
            for s in steps
        ],
        terminated=True,
    )


def advantages(name: str, trajs: list[Trajectory], **options) -> dict[tuple[str, int], float]:
    b = StepBatch.from_trajectories(trajs)
    adv = estimate(name, b, **options).step
    return {(tid, int(t)): float(a) for tid, t, a in zip(b.traj_id, b.turn, adv)}


# ----------------------------------------------------------------------------- GiGPO by hand


def gigpo_trajs() -> list[Trajectory]:
    # outcomes a=1, b=0, c=1; b's first action is invalid; states A (3 rows), B (2), C, D (alone)
    return [
        traj("a", [("A", "go", 0.0), ("B", "take", 1.0)]),
        traj("b", [("A", "go", 0.0, False), ("C", "look", 0.0)]),
        traj("c", [("A", "go", 0.0), ("B", "take", 0.0), ("D", "put", 1.0)]),
    ]


# step returns with gamma 0.5, c_inv 0.1 after discounting:
# a: 0 + .5*1 = .5, 1 | b: 0 - .1 = -.1, 0 | c: 0 + .5*0 + .25*1 = .25, .5, 1
RET = {
    ("a", 0): 0.5,
    ("a", 1): 1.0,
    ("b", 0): -0.1,
    ("b", 1): 0.0,
    ("c", 0): 0.25,
    ("c", 1): 0.5,
    ("c", 2): 1.0,
}
ANCHOR = {
    ("a", 0): "A",
    ("b", 0): "A",
    ("c", 0): "A",
    ("a", 1): "B",
    ("c", 1): "B",
    ("b", 1): "C",
    ("c", 2): "D",
}


def test_gigpo_mean_std_by_hand():
    got = advantages("gigpo", gigpo_trajs(), gamma=0.5)
    # episode: outcomes 1, 0, 1 -> mean 2/3, unbiased std sqrt(((1/3)^2 + (2/3)^2 + (1/3)^2)/2) = sqrt(1/3)
    s_ep = math.sqrt(((1 / 3) ** 2 + (2 / 3) ** 2 + (1 / 3) ** 2) / 2)
    episode = {key: ((0.0 if key[0] == "b" else 1.0) - 2 / 3) / (s_ep + EPS) for key in RET}
    # the invalid row is penalised after normalising (the penalty is not in the trajectory statistics)
    episode[("b", 0)] = (0.0 - 2 / 3) / (s_ep + EPS) - 0.1
    # anchor A: returns .5, -.1, .25 ; anchor B: 1, .5 ; C and D are singletons -> 0
    m_a = (0.5 - 0.1 + 0.25) / 3
    s_a = math.sqrt(((0.5 - m_a) ** 2 + (-0.1 - m_a) ** 2 + (0.25 - m_a) ** 2) / 2)
    m_b, s_b = 0.75, math.sqrt((0.25**2 + 0.25**2) / 1)
    stats = {"A": (m_a, s_a), "B": (m_b, s_b)}
    for key, r in RET.items():
        anchor = ANCHOR[key]
        step = (r - stats[anchor][0]) / (stats[anchor][1] + EPS) if anchor in stats else 0.0
        assert got[key] == pytest.approx(episode[key] + step, rel=1e-12), key
    assert got[("b", 1)] == pytest.approx((0 - 2 / 3) / (s_ep + EPS), rel=1e-12)  # singleton anchor adds 0


def test_gigpo_mean_mode_and_omega_by_hand():
    got = advantages("gigpo", gigpo_trajs(), gamma=0.5, mode="mean", omega=0.5)
    m_a = (0.5 - 0.1 + 0.25) / 3
    expected = {
        ("a", 0): (1 - 2 / 3) + 0.5 * (0.5 - m_a),
        ("a", 1): (1 - 2 / 3) + 0.5 * (1.0 - 0.75),
        ("b", 0): (0 - 0.1 - 2 / 3) + 0.5 * (-0.1 - m_a),
        ("b", 1): (0 - 2 / 3) + 0.0,
        ("c", 0): (1 - 2 / 3) + 0.5 * (0.25 - m_a),
        ("c", 1): (1 - 2 / 3) + 0.5 * (0.5 - 0.75),
        ("c", 2): (1 - 2 / 3) + 0.0,
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_gigpo_episode_stats_steps_by_hand():
    episode = advantages("gigpo", gigpo_trajs(), gamma=0.5, omega=0.0, episode_stats="steps")
    # row scores: a 1, 1 ; b -.1, 0 ; c 1, 1, 1 -> mean 4.9/7 = .7,
    # unbiased var (5*.3^2 + .8^2 + .7^2)/6 = 1.58/6
    s = math.sqrt((5 * 0.3**2 + 0.8**2 + 0.7**2) / 6)
    assert episode[("a", 0)] == pytest.approx((1 - 0.7) / (s + EPS), rel=1e-12)
    assert episode[("b", 0)] == pytest.approx((-0.1 - 0.7) / (s + EPS), rel=1e-12)
    assert episode[("b", 1)] == pytest.approx((0 - 0.7) / (s + EPS), rel=1e-12)
    assert episode[("c", 2)] == pytest.approx((1 - 0.7) / (s + EPS), rel=1e-12)
    full = advantages("gigpo", gigpo_trajs(), gamma=0.5, episode_stats="steps")
    m_b, s_b = 0.75, math.sqrt(0.125)
    assert full[("a", 1)] == pytest.approx(episode[("a", 1)] + (1.0 - m_b) / (s_b + EPS), rel=1e-12)


T1 = "You arrive at cabinet 1. On the cabinet 1, you see a mug 1."
T2 = "You arrive at cabinet 1. On the cabinet 1, you see a mug 2."
T3 = "You are facing the fridge 1. The fridge 1 is closed."


def similarity_trajs() -> list[Trajectory]:
    return [
        traj("a", [(T1, "go", 0.0), (T3, "open", 1.0)]),
        traj("b", [(T2, "go", 0.0), (T3, "open", 0.0)]),
        traj("h", [(T1, "go", 1.0)], group="h"),  # same text in another task: never merged
    ]


def test_gigpo_similarity_anchors_group_near_identical_texts():
    # T1 and T2 differ in one of their 59 characters: ratio = 2*58/118 = 0.983 >= 0.95
    assert len(T1) == len(T2) == 59
    assert difflib.SequenceMatcher(None, T1, T2, autojunk=False).ratio() == pytest.approx(58 / 59)

    # step term = gigpo(omega=1) - gigpo(omega=0); returns with gamma .5: a .5, 1 ; b 0, 0 ; h 1
    def step_term(**opts):
        full = advantages("gigpo", similarity_trajs(), gamma=0.5, **opts)
        episode = advantages("gigpo", similarity_trajs(), gamma=0.5, omega=0.0, **opts)
        return {k: full[k] - episode[k] for k in full}

    exact = step_term()
    # T3 group: returns 1, 0 -> mean .5, unbiased std sqrt(.5^2 + .5^2) = sqrt(.5)
    assert exact[("a", 1)] == pytest.approx(0.5 / (math.sqrt(0.5) + EPS), rel=1e-9)
    assert exact[("a", 0)] == exact[("b", 0)] == exact[("h", 0)] == 0.0
    similar = step_term(anchors="similarity")
    # T1 ~ T2 group: returns .5, 0 -> mean .25, unbiased std sqrt(.25^2 + .25^2) = sqrt(.125)
    assert similar[("a", 0)] == pytest.approx(0.25 / (math.sqrt(0.125) + EPS), rel=1e-9)
    assert similar[("b", 0)] == pytest.approx(-0.25 / (math.sqrt(0.125) + EPS), rel=1e-9)
    assert similar[("a", 1)] == pytest.approx(exact[("a", 1)], rel=1e-12)
    assert similar[("h", 0)] == 0.0
    strict = step_term(anchors="similarity", similarity_threshold=0.99)  # 0.983 < 0.99: apart
    assert strict[("a", 0)] == strict[("b", 0)] == 0.0


# ----------------------------------------------------------------------------- HGPO by hand


def hgpo_trajs() -> list[Trajectory]:
    # returns with gamma .5: a .25, .5, 1 ; b 0, 0, 0 ; c .25, .5, 1
    return [
        traj("a", [("X", "u", 0.0), ("Y", "u", 0.0), ("Z", "u", 1.0)]),
        traj("b", [("X", "u", 0.0), ("Y", "u", 0.0), ("Z", "u", 0.0)]),
        traj("c", [("W", "u", 0.0), ("Y", "u", 0.0), ("Z", "u", 1.0)]),
    ]


def hgpo_levels() -> dict[tuple[str, int], dict[int, float]]:
    """A_k per row and level, population std, for hgpo_trajs (levels absent when singleton)."""
    # t=2, level 1 (Z) and level 2 (Y,Z): {a, b, c} returns 1, 0, 1: mean 2/3,
    # population std sqrt(((1/3)^2 + (2/3)^2 + (1/3)^2)/3) = sqrt(2/9)
    s_z = math.sqrt(((1 / 3) ** 2 + (2 / 3) ** 2 + (1 / 3) ** 2) / 3)
    z_hi, z_lo = (1 / 3) / (s_z + EPS), (-2 / 3) / (s_z + EPS)
    # level 3 (X,Y,Z): {a, b} returns 1, 0: mean .5, std .5 ; (W,Y,Z) = {c} alone
    xyz = 0.5 / (0.5 + EPS)
    # t=1, level 1 (Y): returns .5, 0, .5: mean 1/3, std sqrt(((1/6)^2 + (1/3)^2 + (1/6)^2)/3) = sqrt(1/18)
    s_y = math.sqrt(((1 / 6) ** 2 + (1 / 3) ** 2 + (1 / 6) ** 2) / 3)
    y_hi, y_lo = (1 / 6) / (s_y + EPS), (-1 / 3) / (s_y + EPS)
    # level 2 (X,Y): {a, b} returns .5, 0: mean .25, std .25 ; (W,Y) = {c} alone
    xy = 0.25 / (0.25 + EPS)
    # t=0, level 1 (X): {a, b} returns .25, 0: mean .125, std .125 ; W = {c} alone
    x = 0.125 / (0.125 + EPS)
    return {
        ("a", 2): {1: z_hi, 2: z_hi, 3: xyz},
        ("b", 2): {1: z_lo, 2: z_lo, 3: -xyz},
        ("c", 2): {1: z_hi, 2: z_hi},
        ("a", 1): {1: y_hi, 2: xy},
        ("b", 1): {1: y_lo, 2: -xy},
        ("c", 1): {1: y_hi},
        ("a", 0): {1: x},
        ("b", 0): {1: -x},
        ("c", 0): {},
    }


def weighted(levels: dict[int, float], alpha: float, extra: dict[int, float] | None = None) -> float:
    present = {**(extra or {}), **levels}
    if not present:
        return 0.0
    weights = {k: (k + 1) ** alpha for k in present}
    return sum(weights[k] * a for k, a in present.items()) / sum(weights.values())


@pytest.mark.parametrize("alpha", [1.0, 2.0, 0.0])
def test_hgpo_three_levels_by_hand(alpha):
    got = advantages("hgpo", hgpo_trajs(), gamma=0.5, alpha=alpha)
    levels = hgpo_levels()
    for key, per_level in levels.items():
        assert got[key] == pytest.approx(weighted(per_level, alpha), rel=1e-12, abs=1e-15), key
    # spelled out for alpha 1 at a's last row: weights 2, 3, 4
    if alpha == 1.0:
        a1, a3 = levels[("a", 2)][1], levels[("a", 2)][3]
        assert got[("a", 2)] == pytest.approx((2 * a1 + 3 * a1 + 4 * a3) / 9, rel=1e-12)
        assert got[("c", 2)] == pytest.approx(a1, rel=1e-12)  # only levels 1, 2: (2a + 3a)/5
        assert got[("c", 0)] == 0.0  # no level with a shared group


def test_hgpo_history_length_limits_levels():
    got = advantages("hgpo", hgpo_trajs(), gamma=0.5, history_length=1)
    a1 = hgpo_levels()[("a", 2)][1]
    assert got[("a", 2)] == pytest.approx((2 * a1 + 3 * a1) / 5, rel=1e-12)  # level 3 gone
    only_level1 = advantages("hgpo", hgpo_trajs(), gamma=0.5, history_length=0)
    assert only_level1[("a", 1)] == pytest.approx(hgpo_levels()[("a", 1)][1], rel=1e-12)


def test_hgpo_base_group_is_level_zero_with_weight_one():
    # GiGPO episode term: outcomes 1, 0, 1, unbiased std sqrt(1/3)
    s_ep = math.sqrt(((1 / 3) ** 2 + (2 / 3) ** 2 + (1 / 3) ** 2) / 2)
    episode = {"a": (1 / 3) / (s_ep + EPS), "b": (-2 / 3) / (s_ep + EPS), "c": (1 / 3) / (s_ep + EPS)}
    levels = hgpo_levels()
    for alpha in (1.0, 2.0):
        got = advantages("hgpo", hgpo_trajs(), gamma=0.5, alpha=alpha, base_group=True)
        for key, per_level in levels.items():
            assert got[key] == pytest.approx(weighted(per_level, alpha, {0: episode[key[0]]}), rel=1e-12), key
    got = advantages("hgpo", hgpo_trajs(), gamma=0.5, alpha=2.0, base_group=True)
    a1, a3 = levels[("a", 2)][1], levels[("a", 2)][3]
    assert got[("a", 2)] == pytest.approx((1 * episode["a"] + 4 * a1 + 9 * a1 + 16 * a3) / 30, rel=1e-12)
    assert got[("c", 0)] == pytest.approx(episode["c"], rel=1e-12)  # level 0 alone


def test_hgpo_zero_level_is_dropped():
    trajs = [
        traj("a", [("R", "u", 0.0), ("Q", "u", 1.0)]),  # returns .5, 1
        traj("b", [("P", "u", 0.0), ("Q", "u", 0.5)]),  # returns .25, .5
        traj("c", [("P", "u", 0.0), ("Q", "u", 0.0)]),  # returns 0, 0
    ]
    got = advantages("hgpo", trajs, gamma=0.5)
    # level 1 (Q): returns 1, .5, 0: mean .5, population std sqrt((.5^2 + 0 + .5^2)/3) = sqrt(1/6);
    # b sits exactly on the mean, so its level-1 advantage is 0 and the level is dropped
    s_q = math.sqrt((0.5**2 + 0.0 + 0.5**2) / 3)
    # level 2: (P,Q) = {b, c} returns .5, 0: mean .25, std .25 ; (R,Q) = {a} alone
    pq = 0.25 / (0.25 + EPS)
    assert got[("b", 1)] == pytest.approx(pq, rel=1e-12)  # not (2*0 + 3*pq)/5
    assert got[("a", 1)] == pytest.approx(0.5 / (s_q + EPS), rel=1e-12)
    assert got[("c", 1)] == pytest.approx((2 * (-0.5 / (s_q + EPS)) + 3 * -pq) / 5, rel=1e-12)
    # t=0: R = {a} alone -> 0 ; P = {b, c} returns .25, 0 -> +-.125/(.125 + eps)
    assert got[("a", 0)] == 0.0
    assert got[("b", 0)] == pytest.approx(0.125 / (0.125 + EPS), rel=1e-12)


def test_hgpo_mean_mode_by_hand():
    got = advantages("hgpo", hgpo_trajs(), gamma=0.5, mode="mean")
    # t=1 a: level 1 (Y) .5 - 1/3 ; level 2 (X,Y) .5 - .25 ; weights 2, 3
    assert got[("a", 1)] == pytest.approx((2 * (0.5 - 1 / 3) + 3 * (0.5 - 0.25)) / 5, rel=1e-12)


# ----------------------------------------------------------------------------- SALT by hand


def salt_trajs() -> list[Trajectory]:
    # b re-converges: its second step (S, go) is a's and c's first step, one turn later
    return [
        traj("a", [("S", "go", 0.0), ("T", "take", 1.0)]),
        traj("b", [("S", "look", 0.0), ("S", "Go ", 0.0)]),  # "Go " normalises to "go"
        traj("c", [("S", "go", 0.0), ("U", "put", 0.0)]),
    ]


def test_salt_prefix_vs_state_action_by_hand():
    # GRPO base: outcomes 1, 0, 0 -> mean 1/3, unbiased std sqrt(((2/3)^2 + 2*(1/3)^2)/2) = sqrt(1/3)
    s = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    A = {"a": (2 / 3) / (s + EPS), "b": (-1 / 3) / (s + EPS), "c": (-1 / 3) / (s + EPS)}
    prefix = advantages("salt", salt_trajs())
    # prefix tree: t=0 edge (S,go) holds a and c; every other edge holds one trajectory
    assert prefix[("a", 0)] == pytest.approx((A["a"] + A["c"]) / 2, rel=1e-12)
    assert prefix[("c", 0)] == pytest.approx((A["a"] + A["c"]) / 2, rel=1e-12)
    assert prefix[("b", 0)] == pytest.approx(A["b"], rel=1e-12)
    assert prefix[("b", 1)] == pytest.approx(A["b"], rel=1e-12)
    assert prefix[("a", 1)] == pytest.approx(A["a"], rel=1e-12)
    graph = advantages("salt", salt_trajs(), merge="state_action")
    # graph: (S,go) holds a, c and b (b at t=1): mean of all three = 0
    for key in [("a", 0), ("c", 0), ("b", 1)]:
        assert graph[key] == pytest.approx((A["a"] + A["b"] + A["c"]) / 3, abs=1e-12)
    assert graph[("b", 0)] == pytest.approx(A["b"], rel=1e-12)
    assert graph[("c", 1)] == pytest.approx(A["c"], rel=1e-12)


def test_salt_lam_mix_by_hand():
    s = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    A = {"a": (2 / 3) / (s + EPS), "c": (-1 / 3) / (s + EPS)}
    got = advantages("salt", salt_trajs(), lam=0.25)
    assert got[("a", 0)] == pytest.approx(0.25 * (A["a"] + A["c"]) / 2 + 0.75 * A["a"], rel=1e-12)
    assert got[("c", 1)] == pytest.approx(A["c"], rel=1e-12)  # unique edge: lam mixes A_c with itself


def test_salt_rloo_base_counts_a_trajectory_once_per_edge():
    trajs = [
        traj("a", [("S", "go", 0.0), ("T", "take", 1.0)]),
        traj("b", [("V", "look", 0.0)]),
        traj("c", [("S", "go", 0.0), ("U", "put", 0.0)]),
        traj("d", [("S", "go", 0.0), ("S", "go", 1.0)]),  # passes (S, go) twice
    ]
    # RLOO: a 1 - (0+0+1)/3 = 2/3 ; b 0 - 2/3 ; c 0 - 2/3 ; d 1 - 1/3 = 2/3
    A = {"a": 2 / 3, "b": -2 / 3, "c": -2 / 3, "d": 2 / 3}
    graph = advantages("salt", trajs, merge="state_action", base="rloo")
    once = (A["a"] + A["c"] + A["d"]) / 3  # 2/9, not (a + c + 2d)/4 = 1/3
    for key in [("a", 0), ("c", 0), ("d", 0), ("d", 1)]:
        assert graph[key] == pytest.approx(once, rel=1e-12)
    assert graph[("b", 0)] == pytest.approx(A["b"], rel=1e-12)
    prefix = advantages("salt", trajs, base="rloo")
    assert prefix[("a", 0)] == pytest.approx(once, rel=1e-12)
    assert prefix[("d", 1)] == pytest.approx(A["d"], rel=1e-12)  # (S,go)->(S,go) is d's own edge
    assert prefix[("c", 1)] == pytest.approx(A["c"], rel=1e-12)


def test_salt_invalid_penalty_stays_on_its_row():
    trajs = [
        traj("a", [("S", "go", 0.0, False), ("T", "take", 1.0)]),
        traj("c", [("S", "go", 0.0), ("U", "put", 0.0)]),
    ]
    got = advantages("salt", trajs, base="rloo", invalid_penalty=0.1)
    # RLOO row scores: a0 = 1 - .1 - 0, a1 = 1 - 0 ; c 0 - 1 = -1 ; trajectory means a .95, c -1
    # edge (S,go) = mean(.95, -1) = -.025 ; a0 keeps its deviation from a's mean (-.05)
    assert got[("a", 0)] == pytest.approx((0.95 - 1) / 2 - 0.05, rel=1e-12)
    assert got[("c", 0)] == pytest.approx((0.95 - 1) / 2, rel=1e-12)
    assert got[("a", 1)] == pytest.approx(0.95 + 0.05, rel=1e-12)


# ----------------------------------------------------------------------------- identities


SMALL_REWARDS = st.sampled_from([0.0, 0.25, 0.5, 1.0, -1.0, 2.0])
ANY_REWARDS = st.one_of(
    SMALL_REWARDS,
    st.floats(min_value=-1e100, max_value=1e100, allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1e-300, max_value=1e-300, allow_nan=False, allow_infinity=False),
)


@st.composite
def rollouts(
    draw,
    rewards=SMALL_REWARDS,
    max_groups=3,
    max_trajs=4,
    max_len=5,
    distinct_states=False,
    same_outcome=False,
):
    """Random groups of trajectories over a small state/action alphabet (so states repeat)."""
    out = []
    for g in range(draw(st.integers(1, max_groups))):
        final = draw(rewards)
        for i in range(draw(st.integers(1, max_trajs))):
            n = draw(st.integers(1, max_len))
            steps = []
            for t in range(n):
                state = f"{g}/{i}/{t}" if distinct_states else draw(st.sampled_from(["s0", "s1", "s2", "s3"]))
                reward = (final if t == n - 1 else 0.0) if same_outcome else draw(rewards)
                valid = True if same_outcome else draw(st.booleans())
                steps.append((state, draw(st.sampled_from(["go", "take", "put"])), reward, valid))
            out.append(traj(f"g{g}/t{i}", steps, group=f"g{g}"))
    return out


FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(
    rollouts(distinct_states=True),
    st.sampled_from(["mean_std", "mean"]),
    st.sampled_from(["trajectories", "steps"]),
    st.floats(0, 3),
)
def test_gigpo_with_distinct_states_is_grpo(trajs, mode, stats, omega):
    b = StepBatch.from_trajectories(trajs)
    grpo = estimate("grpo", b, mode=mode, invalid_penalty=0.1, episode_stats=stats).step
    gigpo = estimate("gigpo", b, mode=mode, invalid_penalty=0.1, episode_stats=stats, omega=omega).step
    np.testing.assert_array_equal(gigpo, grpo)  # every anchor group is a singleton: step term exactly 0


@FAST
@given(rollouts(), st.sampled_from(["mean_std", "mean"]), st.sampled_from(["trajectories", "steps"]))
def test_gigpo_with_omega_zero_is_grpo(trajs, mode, stats):
    b = StepBatch.from_trajectories(trajs)
    grpo = estimate("grpo", b, mode=mode, invalid_penalty=0.1, episode_stats=stats).step
    np.testing.assert_array_equal(estimate("gigpo", b, mode=mode, episode_stats=stats, omega=0.0).step, grpo)


@FAST
@given(rollouts(), st.sampled_from([0.5, 0.95, 1.0]))
def test_hgpo_level_one_only_is_gigpo_step_term(trajs, gamma):
    """HGPO with history_length=0 keeps level 1 only, which is GiGPO's anchor group: it must equal
    GiGPO's step term A^S (mean_std) computed by gigpo.step_advantage with population std (ddof=0)."""
    b = StepBatch.from_trajectories(trajs)
    a_s = step_advantage(b, layout(b), gamma=gamma, invalid_penalty=0.1, mode="mean_std", eps=EPS, ddof=0)
    hgpo = estimate("hgpo", b, gamma=gamma, history_length=0).step
    np.testing.assert_allclose(hgpo, a_s, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- properties

CONFIGS = [
    ("gigpo", {}),
    ("gigpo", {"mode": "mean", "episode_stats": "steps"}),
    ("gigpo", {"anchors": "similarity", "similarity_threshold": 0.5}),
    ("hgpo", {}),
    ("hgpo", {"base_group": True, "alpha": 2.0, "history_length": 3}),
    ("hgpo", {"mode": "mean"}),
    ("salt", {}),
    ("salt", {"merge": "state_action", "base": "rloo", "lam": 0.5}),
    ("salt", {"mode": "mean", "invalid_penalty": 0.1}),
]


def by_key(b: StepBatch, adv: np.ndarray) -> dict[tuple[str, int], float]:
    return {(tid, int(t)): float(a) for tid, t, a in zip(b.traj_id, b.turn, adv)}


@pytest.mark.parametrize("name,options", CONFIGS)
@FAST
@given(trajs=rollouts(), data=st.data())
def test_advantages_follow_ids_under_permutation(name, options, trajs, data):
    # dyadic rewards, gamma .5 and a dyadic penalty keep every sum exact, whatever the order
    gamma_opt = {"invalid_penalty": 0.25} if name == "salt" else {"gamma": 0.5, "invalid_penalty": 0.25}
    b = StepBatch.from_trajectories(trajs)
    reference = by_key(b, estimate(name, b, **{**options, **gamma_opt}).step)
    shuffled_trajs = data.draw(st.permutations(trajs))
    b2 = StepBatch.from_trajectories(shuffled_trajs)
    rows = np.array(data.draw(st.permutations(range(len(b2)))), dtype=np.int64)
    b3 = b2.take(rows)
    got = by_key(b3, estimate(name, b3, **{**options, **gamma_opt}).step)
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


@pytest.mark.parametrize("name,options", CONFIGS)
@FAST
@given(trajs=rollouts(rewards=ANY_REWARDS, max_trajs=1))
def test_singleton_groups_give_finite_output(name, options, trajs):
    adv = estimate(name, StepBatch.from_trajectories(trajs), **options).step
    assert np.all(np.isfinite(adv))


@pytest.mark.parametrize("name,options", CONFIGS)
@FAST
@given(trajs=rollouts(rewards=st.sampled_from([0.0, 1.0, 0.1, 0.3, 7.5, -2.0]), same_outcome=True))
def test_equal_outcomes_give_zero_episode_terms(name, options, trajs):
    """Every trajectory of a group has the same outcome and no invalid action: the episode-level
    (group-relative) signal is 0. GiGPO's episode term alone is omega=0; SALT's base is 0 so all
    its edges are 0; HGPO on all-zero rewards has nothing to tell apart at any level."""
    b = StepBatch.from_trajectories(trajs)
    if name == "gigpo":
        adv = estimate(name, b, **{**options, "omega": 0.0}).step
    elif name == "hgpo":
        zero = [
            traj(t.traj_id, [(s.state_key, s.action, 0.0) for s in t.steps], group=t.group_id) for t in trajs
        ]
        adv = estimate(name, StepBatch.from_trajectories(zero), **options).step
        np.testing.assert_array_equal(adv, 0.0)
    else:
        adv = estimate(name, b, **options).step
    np.testing.assert_allclose(adv, 0.0, atol=1e-8)


@pytest.mark.parametrize("name,options", CONFIGS)
@FAST
@given(trajs=rollouts(rewards=ANY_REWARDS, max_trajs=5, max_len=6))
def test_no_nan_or_inf_and_deterministic(name, options, trajs):
    """Rewards anywhere in +-1e100 (beyond that, squares overflow float64) and down to subnormals."""
    b = StepBatch.from_trajectories(trajs)
    first = estimate(name, b, **options).step
    assert first.dtype == np.float64 and np.all(np.isfinite(first))
    again = estimate(name, StepBatch.from_trajectories(trajs), **options).step
    np.testing.assert_array_equal(first, again)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["gigpo", "hgpo", "salt"])
def test_missing_state_key_is_named(name):
    trajs = [Trajectory("t", "g", f"g/{i}", [Step(obs="o", action="a", reward=float(i))]) for i in range(2)]
    b = StepBatch.from_trajectories(trajs)
    assert b.state_key is None
    with pytest.raises(MissingInputError, match="state_key"):
        estimate(name, b)


def test_similarity_anchors_need_state_text():
    b = dataclasses.replace(StepBatch.from_trajectories(gigpo_trajs()), state_text=None)
    with pytest.raises(MissingInputError, match="state_text"):
        estimate("gigpo", b, anchors="similarity")


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("gigpo", {"omgea": 1.0}, "omgea"),
        ("gigpo", {"anchors": "fuzzy"}, "anchors"),
        ("gigpo", {"mode": "median"}, "mode"),
        ("gigpo", {"episode_stats": "rows"}, "episode_stats"),
        ("gigpo", {"gamma": 1.5}, "gamma"),
        ("gigpo", {"similarity_threshold": 0.0}, "similarity_threshold"),
        ("hgpo", {"history_length": -1}, "history_length"),
        ("hgpo", {"history_length": 1.5}, "history_length"),
        ("hgpo", {"K": 2}, "K"),
        ("hgpo", {"alpha": float("nan")}, "alpha"),
        ("salt", {"merge": "tree"}, "merge"),
        ("salt", {"base": "ppo"}, "base"),
        ("salt", {"lam": 2.0}, "lam"),
    ],
)
def test_bad_options_are_named(name, options, match):
    with pytest.raises(ValueError, match=match):
        estimate(name, StepBatch.from_trajectories(gigpo_trajs()), **options)


# ----------------------------------------------------------------------------- benchmark helpers


@pytest.mark.parametrize("mode", ["mean_std", "mean"])
@pytest.mark.parametrize("stats", ["trajectories", "steps"])
def test_naive_gigpo_agrees_with_vectorised(mode, stats):
    trajs = synthetic_trajectories(4, n=4, max_steps=12, seed=1)
    b = StepBatch.from_trajectories(trajs)
    naive = naive_gigpo(trajs, mode=mode, episode_stats=stats)
    fast = by_key(b, estimate("gigpo", b, mode=mode, episode_stats=stats).step)
    assert naive.keys() == fast.keys()
    for key, value in naive.items():
        assert fast[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


def test_synthetic_batch_looks_like_alfworld():
    b = synthetic_batch(16, seed=3)
    summary = b.summary()
    assert summary["trajectories"] == 16 * 8 and summary["groups"] == 16
    assert 0.25 < summary["success_rate"] < 0.55
    assert 0.06 < summary["invalid_rate"] < 0.14
    assert b.turn.max() == 49
    assert np.unique(b.state_key).size < len(b) / 4  # anchor states repeat
    for column in ("turn_reward", "tool_call", "switch", "subgoal", "state_text"):
        assert getattr(b, column) is not None, column
