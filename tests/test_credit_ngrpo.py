"""NGRPO (virtual maximum-reward sample in the group statistics): hand-worked values, edge cases, and a
loop-per-trajectory reference of the authors' formula on random batches (max |difference| seen: 7e-16)."""

import math
import statistics

import numpy as np
import pytest

from agentrl.credit import estimate, estimator_info
from agentrl.eval.synthetic_rollouts import synthetic_trajectories
from agentrl.types import StepBatch, Trajectory
from tests.credit_helpers import per_valid_traj as per_traj
from tests.credit_helpers import traj

EPS = 1e-6


def hand_batch() -> StepBatch:
    # A mixed (1, 0, 0, 1); B all fail (0, 0, 0); C all succeed (1, 1); D a singleton (0.5)
    trajs = [traj("A", i, r) for i, r in enumerate([1.0, 0.0, 0.0, 1.0])]
    trajs += [traj("B", i, 0.0, n_steps=1 + i) for i in range(3)]
    trajs += [traj("C", i, 1.0) for i in range(2)]
    trajs += [traj("D", 0, 0.5)]
    return StepBatch.from_trajectories(trajs)


def test_ngrpo_by_hand():
    got = per_traj(b := hand_batch(), estimate("ngrpo", b).step)
    # A with the virtual 1: (1, 0, 0, 1, 1), mean 3/5, deviations .4 .4 .4 -.6 -.6,
    # unbiased var (3*.16 + 2*.36)/4 = 0.3
    s_a = math.sqrt(0.3)
    assert got["A/0"] == pytest.approx(0.4 / (s_a + EPS), rel=1e-12)
    assert got["A/1"] == pytest.approx(-0.6 / (s_a + EPS), rel=1e-12)
    # B: (0, 0, 0, 1), mean 1/4, var (3*(1/16) + 9/16)/3 = 1/4, std 1/2 -> every failure gets -1/2
    for i in range(3):
        assert got[f"B/{i}"] == pytest.approx(-0.25 / (0.5 + EPS), rel=1e-12)
    # C: (1, 1, 1) has no spread: exactly 0, no eps residue
    assert got["C/0"] == 0.0 and got["C/1"] == 0.0
    # D alone, "virtual": (0.5, 1), mean .75, std sqrt(2 * .25^2) = .25*sqrt(2)
    assert got["D/0"] == pytest.approx(-0.25 / (0.25 * math.sqrt(2) + EPS), rel=1e-12)


def test_paper_worked_case_one_success_in_eight():
    # paper (arXiv 2509.18851): GRPO 2.47 / -0.35 -> NGRPO 1.76 / -0.50 for one success in 8
    b = StepBatch.from_trajectories([traj("g", i, 1.0 if i == 0 else 0.0) for i in range(8)])
    ng, gr = per_traj(b, estimate("ngrpo", b).step), per_traj(b, estimate("grpo", b).step)
    assert (round(ng["g/0"], 2), round(ng["g/1"], 2)) == (1.76, -0.5)
    assert (round(gr["g/0"], 2), round(gr["g/1"], 2)) == (2.47, -0.35)


def test_singleton_modes():
    b = hand_batch()
    zero = per_traj(b, estimate("ngrpo", b, singleton="zero").step)
    code = per_traj(b, estimate("ngrpo", b, singleton="code").step)
    assert zero["D/0"] == 0.0
    assert code["D/0"] == pytest.approx(0.5 / (1 + EPS), rel=1e-12)  # verl's fallback: mean 0, std 1
    default = per_traj(b, estimate("ngrpo", b).step)
    for key in default:  # the other groups do not depend on the singleton rule
        if not key.startswith("D/"):
            assert zero[key] == default[key] == code[key]


def test_more_virtual_samples_and_max_reward_scale():
    # two virtual 1s with B (0, 0, 0): (0, 0, 0, 1, 1), mean .4, var (3*.16 + 2*.36)/4 = .3
    b = hand_batch()
    got = per_traj(b, estimate("ngrpo", b, num_virtual=2).step)
    assert got["B/0"] == pytest.approx(-0.4 / (math.sqrt(0.3) + EPS), rel=1e-12)
    # ALFWorld's 0/10 scale with R_max 10 gives the 0/1 values (up to eps, which does not scale)
    ten = StepBatch.from_trajectories([traj("g", i, 10.0 * r) for i, r in enumerate([1.0, 0.0, 0.0])])
    one = StepBatch.from_trajectories([traj("g", i, r) for i, r in enumerate([1.0, 0.0, 0.0])])
    np.testing.assert_allclose(
        estimate("ngrpo", ten, max_reward=10.0).step, estimate("ngrpo", one).step, rtol=1e-5
    )


def test_without_virtual_samples_it_is_grpo():
    b = StepBatch.from_trajectories(synthetic_trajectories(6, n=5, max_steps=10, seed=2))
    np.testing.assert_allclose(estimate("ngrpo", b, num_virtual=0).step, estimate("grpo", b).step, atol=1e-12)


def test_all_failing_group_is_pushed_down_and_truncation_counts_as_failure():
    trajs = [traj("g", 0, 0.0, terminated=False, truncated=True), traj("g", 1, 0.0), traj("g", 2, 0.0)]
    b = StepBatch.from_trajectories(trajs)
    adv = estimate("ngrpo", b).step
    assert np.all(adv < 0) and np.allclose(adv, adv[0])  # the truncated one is just another failure
    assert np.all(estimate("grpo", b).step == 0.0)  # what NGRPO fixes


def test_invalid_penalty_hits_only_the_invalid_row():
    b = StepBatch.from_trajectories(
        [traj("g", 0, 1.0, n_steps=3, invalid_at=1), traj("g", 1, 0.0, n_steps=3)]
    )
    adv = estimate("ngrpo", b, invalid_penalty=0.25).step
    # with the virtual 1: (1, 0, 1), mean 2/3, deviations 1/3, -2/3, 1/3, unbiased var (1/9 + 4/9 + 1/9)/2 = 1/3
    s = math.sqrt(1 / 3)
    up, down = (1 / 3) / (s + EPS), (-2 / 3) / (s + EPS)
    np.testing.assert_allclose(adv, [up, up - 0.25, up, down, down, down], rtol=1e-12)


def test_needs_no_optional_column_and_names_bad_options():
    info = estimator_info("ngrpo")
    assert info.fields == () and info.inputs == () and not info.value_heads
    b = hand_batch()
    assert b.state_key is None and b.turn_reward is None  # runs on the bare columns
    for options, match in [
        ({"singleton": "drop"}, "singleton"),
        ({"num_virtual": -1}, "num_virtual"),
        ({"num_virtual": 1.5}, "num_virtual"),
        ({"max_reward": float("inf")}, "max_reward"),
        ({"eps": 0.0}, "eps"),
        ({"invalid_penalty": float("nan")}, "invalid_penalty"),
    ]:
        with pytest.raises(ValueError, match=match):
            estimate("ngrpo", b, **options)
    with pytest.raises(ValueError, match="unknown option.*'mode'"):
        estimate("ngrpo", b, mode="mean")


# ----------------------------------------------------------------------------- reference


def reference_ngrpo(
    trajs: list[Trajectory],
    *,
    max_reward=1.0,
    num_virtual=1,
    eps=EPS,
    invalid_penalty=0.1,
    singleton="virtual",
) -> dict[tuple[str, int], float]:
    """compute_ngrpo_outcome_advantage written out per trajectory: group stats over outcomes plus
    num_virtual copies of max_reward (statistics.stdev = unbiased), then the row penalty."""
    groups: dict[str, list[float]] = {}
    for t in trajs:
        groups.setdefault(t.group_id, []).append(t.outcome)
    out = {}
    for t in trajs:
        scores = groups[t.group_id]
        if len(scores) == 1 and singleton != "virtual":
            a = 0.0 if singleton == "zero" else t.outcome / (1 + eps)
        else:
            aug = scores + [max_reward] * num_virtual
            mean = statistics.fmean(aug)
            std = statistics.stdev(aug) if len(aug) > 1 else 0.0
            a = (t.outcome - mean) / (std + eps)
        for k, s in enumerate(t.steps):
            out[(t.traj_id, k)] = a - (0.0 if s.valid else invalid_penalty)
    return out


def random_trajectories(seed: int) -> list[Trajectory]:
    """Synthetic ALFWorld-like groups, some cut to a single trajectory, half with continuous outcomes."""
    rng = np.random.default_rng(seed)
    trajs = synthetic_trajectories(8, n=6, max_steps=8, seed=seed)
    keep = [t for t in trajs if not (t.group_id.endswith(("1", "5")) and not t.traj_id.endswith("/0"))]
    for t in keep:
        if seed % 2:
            t.outcome = float(rng.choice([0.0, 1.0, rng.random(), 3 * rng.random()]))
    return keep


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"singleton": "zero"},
        {"singleton": "code"},
        {"num_virtual": 3, "max_reward": 2.0, "invalid_penalty": 0.3},
    ],
)
def test_matches_reference_on_random_batches(seed, options):
    trajs = random_trajectories(seed)
    assert any(sum(u.group_id == t.group_id for u in trajs) == 1 for t in trajs)  # singletons present
    b = StepBatch.from_trajectories(trajs)
    b = b.take(np.random.default_rng(seed).permutation(len(b)))
    want = reference_ngrpo(trajs, **options)
    got = estimate("ngrpo", b, **options).step
    diff = max(abs(a - want[(tid, int(t))]) for tid, t, a in zip(b.traj_id, b.turn, got))
    assert diff < 1e-12, diff
