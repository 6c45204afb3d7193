"""MatchTIR's dual-level advantage: hand-computed values, options, edge cases, and a per-trajectory
reference written after the public re-implementation's loops (``compute_grpo_mathtir_outcome_advantage``).

Reference comparison: on random batches with tied rewards (12 seeds x 16 option sets, rows shuffled)
and on synthetic ALFWorld-like batches the estimator matches the reference to max |diff| < 1e-9
(measured 8.9e-16).
"""

import itertools
import math
from collections import defaultdict

import numpy as np
import pytest

from agentrl.credit import MissingInputError, estimate, estimator_info
from agentrl.eval.fidelity import credit_fidelity
from agentrl.eval.synthetic_rollouts import synthetic_trajectories
from agentrl.types import Step, StepBatch, Trajectory

EPS = 1e-6


def traj(tid, turn_rewards, *, group="G", outcome=0.0, truncated=False, invalid_at=None):
    steps = [
        Step(obs=f"o{t}", action="a", valid=t != invalid_at, turn_reward=r)
        for t, r in enumerate(turn_rewards)
    ]
    return Trajectory(
        group, group, tid, steps, terminated=not truncated, truncated=truncated, outcome=outcome
    )


def by_row(batch, arr):
    return {(tid, int(t)): float(a) for tid, t, a in zip(batch.traj_id, batch.turn, arr)}


def hand_batch():
    # x: turn rewards (1, 0, 1) ; y: (0, 1)
    return StepBatch.from_trajectories([traj("x", [1.0, 0.0, 1.0]), traj("y", [0.0, 1.0])])


def test_matchtir_by_hand():
    b = hand_batch()
    got = by_row(b, estimate("matchtir", b).step)
    # A^g: sums (2, 1), mean 1.5, unbiased std sqrt(0.25 + 0.25) = sqrt(0.5) -> +-0.5/(sqrt(.5) + eps)
    ag = 0.5 / (math.sqrt(0.5) + EPS)
    # returns, gamma 0.9: x: G2 = 1, G1 = 0 + .9*1 = .9, G0 = 1 + .9*.9 = 1.81 ; y: G1 = 1, G0 = .9
    # turn 0 {1.81, .9}: mean 1.355, std .455*sqrt(2) ; turn 1 {.9, 1}: mean .95, std .05*sqrt(2)
    t0 = 0.455 / (0.455 * math.sqrt(2) + EPS)
    t1 = 0.05 / (0.05 * math.sqrt(2) + EPS)
    # turn 2 has x alone: the code's fallback (mean 0, std 1) keeps G2 = 1 -> 1/(1 + eps)
    assert got[("x", 0)] == pytest.approx((ag + t0) / 2, abs=1e-12)
    assert got[("x", 1)] == pytest.approx((ag - t1) / 2, abs=1e-12)
    assert got[("x", 2)] == pytest.approx((ag + 1 / (1 + EPS)) / 2, abs=1e-12)
    assert got[("y", 0)] == pytest.approx((-ag - t0) / 2, abs=1e-12)
    assert got[("y", 1)] == pytest.approx((-ag + t1) / 2, abs=1e-12)
    zero = by_row(b, estimate("matchtir", b, singleton="zero").step)
    assert zero[("x", 2)] == pytest.approx(ag / 2, abs=1e-12) and zero[("x", 0)] == got[("x", 0)]


def test_matchtir_gamma_and_mean_mode():
    b = hand_batch()
    got = by_row(b, estimate("matchtir", b, gamma=0.0, mode="mean").step)
    # gamma 0: G = r ; mode "mean" drops the std in A^g only: A^g = +-0.5
    # turn 0 {1, 0}: +-1/(sqrt(.5) + eps) ; turn 1 {0, 1}: -+1/(...) ; turn 2: x alone, G = 1 -> 1/(1 + eps)
    z = 0.5 / (math.sqrt(0.5) + EPS)
    assert got[("x", 0)] == pytest.approx((0.5 + z) / 2)
    assert got[("x", 1)] == pytest.approx((0.5 - z) / 2)
    assert got[("x", 2)] == pytest.approx((0.5 + 1 / (1 + EPS)) / 2)
    assert got[("y", 0)] == pytest.approx((-0.5 - z) / 2)
    assert got[("y", 1)] == pytest.approx((-0.5 + z) / 2)


def test_matchtir_outcome_weight_and_invalid_penalty():
    b = StepBatch.from_trajectories(
        [traj("x", [0.0, 0.0], outcome=1.0, invalid_at=0), traj("y", [0.0, 0.0], outcome=0.0)]
    )
    # all turn rewards 0: every statistic is constant -> 0 ; the outcome is ignored by default
    np.testing.assert_array_equal(estimate("matchtir", b).step, 0.0)
    got = by_row(b, estimate("matchtir", b, outcome_weight=1.0, gamma=0.5, invalid_penalty=0.25).step)
    # x: r = (0, 1), sum 1, G = (.5, 1) ; y: r = (0, 0), sum 0, G = (0, 0)
    z = 0.5 / (math.sqrt(0.5) + EPS)  # a pair (a, 0) z-scores to +-a/2 / (a/sqrt(2) + eps)
    z_half = 0.25 / (0.5 * math.sqrt(0.5) + EPS)
    assert got[("x", 0)] == pytest.approx((z + z_half) / 2 - 0.25)  # x's first row is invalid
    assert got[("x", 1)] == pytest.approx((z + z) / 2)
    assert got[("y", 0)] == pytest.approx((-z - z_half) / 2)


def test_matchtir_edge_cases():
    # one trajectory in its group: the code keeps raw values (sum/(1+eps), G/(1+eps)); "zero" gives 0
    alone = StepBatch.from_trajectories([traj("x", [1.0, 0.5])])
    got = estimate("matchtir", alone).step
    # sum 1.5 ; G = (1 + .9*.5, .5) = (1.45, .5)
    np.testing.assert_allclose(got, [(1.5 + 1.45) / 2 / (1 + EPS), (1.5 + 0.5) / 2 / (1 + EPS)])
    np.testing.assert_array_equal(estimate("matchtir", alone, singleton="zero").step, 0.0)
    # equal trajectories: every term is 0 exactly, truncated or not
    same = StepBatch.from_trajectories(
        [traj("x", [0.3, 0.7]), traj("y", [0.3, 0.7], truncated=True), traj("z", [0.3, 0.7])]
    )
    np.testing.assert_array_equal(estimate("matchtir", same).step, 0.0)
    # groups do not mix: a second group with other rewards leaves the first unchanged
    b = hand_batch()
    two = StepBatch.from_trajectories(
        [
            traj("x", [1.0, 0.0, 1.0]),
            traj("y", [0.0, 1.0]),
            traj("u", [5.0], group="H"),
            traj("v", [2.0, 2.0], group="H"),
        ]
    )
    want = by_row(b, estimate("matchtir", b).step)
    got = by_row(two, estimate("matchtir", two).step)
    assert all(got[k] == pytest.approx(v, abs=1e-12) for k, v in want.items())


def test_matchtir_needs_turn_rewards_and_validates_options():
    b = StepBatch.from_trajectories([Trajectory("t", "g", "x", [Step(obs="o", action="a")])])
    with pytest.raises(MissingInputError, match="turn_reward"):
        estimate("matchtir", b)
    h = hand_batch()
    for bad in (
        {"gamma": 1.5},
        {"mode": "median"},
        {"singleton": "one"},
        {"eps": -1.0},
        {"outcome_weight": math.nan},
    ):
        with pytest.raises(ValueError):
            estimate("matchtir", h, **bad)
    info = estimator_info("matchtir")
    assert info.fields == ("turn_reward",) and info.options["gamma"] == 0.9 and info.options["eps"] == EPS


# ----------------------------------------------------------------------------- reference


def reference_matchtir(trajs, *, gamma, eps, mode, singleton, outcome_weight, invalid_penalty):
    """The re-implementation's loops on per-trajectory lists of turn rewards."""
    rewards = {}
    for t in trajs:
        r = [s.turn_reward for s in t.steps]
        r[-1] += outcome_weight * t.outcome
        rewards[t.traj_id] = (t.group_id, r)

    def stats(values):
        if len(values) == 1:
            return (0.0, 1.0) if singleton == "code" else None
        return float(np.mean(values)), float(np.std(values, ddof=1))

    score = {tid: sum(r) for tid, (_, r) in rewards.items()}
    by_group = defaultdict(list)
    for tid, (g, _) in rewards.items():
        by_group[g].append(score[tid])
    group_adv = {}
    for tid, (g, _) in rewards.items():
        st = stats(by_group[g])
        if st is None:
            group_adv[tid] = 0.0
        else:
            group_adv[tid] = (
                (score[tid] - st[0]) / (st[1] + eps) if mode == "mean_std" else score[tid] - st[0]
            )
    disc = {}
    for tid, (_, r) in rewards.items():
        acc, out = 0.0, [0.0] * len(r)
        for j in reversed(range(len(r))):
            acc = r[j] + gamma * acc
            out[j] = acc
        disc[tid] = out
    by_key = defaultdict(list)
    for tid, (g, _) in rewards.items():
        for j, v in enumerate(disc[tid]):
            by_key[(g, j)].append(v)
    out = {}
    for t in trajs:
        g = t.group_id
        for j, s in enumerate(t.steps):
            st = stats(by_key[(g, j)])
            turn = 0.0 if st is None else (disc[t.traj_id][j] - st[0]) / (st[1] + eps)
            out[(t.traj_id, j)] = (group_adv[t.traj_id] + turn) / 2 - invalid_penalty * (not s.valid)
    return out


OPTION_SETS = [
    dict(zip(("mode", "singleton", "outcome_weight", "invalid_penalty"), v))
    for v in itertools.product(("mean_std", "mean"), ("code", "zero"), (0.0, 0.5), (0.0, 0.1))
]


def random_trajectories(rng):
    trajs = []
    for g in range(int(rng.integers(1, 4))):
        for i in range(int(rng.integers(1, 6))):
            n = int(rng.integers(1, 6))
            steps = [
                Step(
                    obs=f"o{k}",
                    action="a",
                    valid=bool(rng.random() > 0.2),
                    turn_reward=float(rng.choice([0.0, 0.25, 0.5, 1.0])),
                )
                for k in range(n)
            ]
            trunc = bool(rng.random() < 0.3)
            outcome = float(rng.choice([0.0, 1.0]))
            trajs.append(traj_from(f"g{g}", f"g{g}/{i}", steps, trunc, outcome))
    return trajs


def traj_from(group, tid, steps, trunc, outcome):
    return Trajectory(group, group, tid, steps, terminated=not trunc, truncated=trunc, outcome=outcome)


def worst_difference(trajs, rng, gamma):
    batch = StepBatch.from_trajectories(trajs)
    shuffled = batch.take(rng.permutation(len(batch)))
    worst = 0.0
    for options in OPTION_SETS:
        got = by_row(shuffled, estimate("matchtir", shuffled, gamma=gamma, **options).step)
        want = reference_matchtir(trajs, gamma=gamma, eps=EPS, **options)
        assert got.keys() == want.keys()
        worst = max(worst, max(abs(got[k] - want[k]) for k in want))
    return worst


@pytest.mark.parametrize("seed", range(12))
def test_matchtir_matches_the_reference_on_random_batches(seed):
    rng = np.random.default_rng(seed)
    assert worst_difference(random_trajectories(rng), rng, float(rng.choice([0.9, 1.0, 0.5]))) < 1e-9


def test_matchtir_matches_the_reference_on_synthetic_batches():
    rng = np.random.default_rng(0)
    trajs = synthetic_trajectories(3, n=4, max_steps=12, seed=2)
    assert worst_difference(trajs, rng, 0.9) < 1e-9


def test_matchtir_fidelity_on_the_maze_targets_outcome_plus_turn():
    rows = credit_fidelity(tasks=6, group_sizes=(8,), resamples=4, estimators=["matchtir"], seed=0)
    (row,) = rows
    assert row.target == "outcome+turn" and row.rows > 100 and row.note == "outcome_weight=1.0"
    # the bench (16 tasks, 20 resamples) measured corr 0.25, sign 0.61 at N=8: half of each row's credit
    # is the trajectory-level z-score, which cannot tell a good turn from a bad one in the same episode
    assert row.corr > 0.1 and row.sign > 0.5
