"""GRPO family and the estimate() entry point, with expected numbers worked out by hand."""

import math

import numpy as np
import pytest

from agentrl.credit import MissingInputError, available_estimators, estimate, estimator_info
from agentrl.types import Step, StepBatch, Trajectory
from tests.credit_helpers import per_traj, traj


def group_batch() -> StepBatch:
    # group A outcomes 1, 0, 0, 1 ; group B outcomes 3, 5, 10 ; group C a singleton (2)
    trajs = [traj("A", i, r) for i, r in enumerate([1.0, 0.0, 0.0, 1.0])]
    trajs += [traj("B", i, r, n_steps=1 + i) for i, r in enumerate([3.0, 5.0, 10.0])]
    trajs += [traj("C", 0, 2.0)]
    return StepBatch.from_trajectories(trajs)


def test_grpo_mean_std_by_hand():
    b = group_batch()
    got = per_traj(b, estimate("grpo", b).step)
    # A: mean 0.5, unbiased std sqrt(((.5^2)*4)/3) = sqrt(1/3)
    s_a = math.sqrt(1 / 3)
    assert got["A/0"] == pytest.approx(0.5 / (s_a + 1e-6))
    assert got["A/1"] == pytest.approx(-0.5 / (s_a + 1e-6))
    # B: mean 6, deviations -3, -1, 4 -> unbiased var (9 + 1 + 16)/2 = 13
    s_b = math.sqrt(13)
    assert got["B/0"] == pytest.approx(-3 / (s_b + 1e-6))
    assert got["B/2"] == pytest.approx(4 / (s_b + 1e-6))
    assert got["C/0"] == 0.0


def test_grpo_mean_and_median_by_hand():
    b = group_batch()
    mean = per_traj(b, estimate("grpo", b, mode="mean").step)
    assert (mean["B/0"], mean["B/1"], mean["B/2"]) == pytest.approx((-3.0, -1.0, 4.0))
    med = per_traj(b, estimate("grpo", b, mode="median").step)
    # A median of (0, 0, 1, 1) = 0.5 ; B median of (3, 5, 10) = 5
    assert (med["A/0"], med["A/1"]) == pytest.approx((0.5, -0.5))
    assert (med["B/0"], med["B/1"], med["B/2"]) == pytest.approx((-2.0, 0.0, 5.0))
    assert med["C/0"] == 0.0


def test_grpo_episode_stats_steps_weighs_long_trajectories():
    b = group_batch()
    got = per_traj(b, estimate("grpo", b, mode="mean", episode_stats="steps").step)
    # B rows: 3 (1 row), 5 (2 rows), 10 (3 rows) -> mean over rows (3 + 10 + 30)/6 = 43/6
    assert got["B/0"] == pytest.approx(3 - 43 / 6)
    assert got["B/2"] == pytest.approx(10 - 43 / 6)


def test_invalid_penalty_hits_only_the_invalid_row():
    trajs = [traj("A", 0, 1.0, n_steps=3, invalid_at=1), traj("A", 1, 0.0, n_steps=3)]
    b = StepBatch.from_trajectories(trajs)
    adv = estimate("grpo", b, mode="mean", invalid_penalty=0.1).step
    # mean outcome 0.5 over trajectories; the invalid row scores 1 - 0.1
    np.testing.assert_allclose(adv, [0.5, 0.4, 0.5, -0.5, -0.5, -0.5])


def test_rloo_by_hand():
    b = group_batch()
    got = per_traj(b, estimate("rloo", b).step)
    assert got["A/0"] == pytest.approx(1 - 1 / 3)
    assert got["A/1"] == pytest.approx(0 - 2 / 3)
    assert got["B/0"] == pytest.approx(3 - 7.5)
    assert got["B/2"] == pytest.approx(10 - 4.0)
    assert got["C/0"] == 0.0


def test_reinforce_pp_by_hand():
    b = group_batch()
    adv = estimate("reinforce_pp", b).step
    centred = {
        "A/0": 0.5,
        "A/1": -0.5,
        "A/2": -0.5,
        "A/3": 0.5,
        "B/0": -3.0,
        "B/1": -1.0,
        "B/2": 4.0,
        "C/0": 0.0,
    }
    rows = np.array([centred[t] for t in b.traj_id])
    expected = (rows - rows.mean()) / (rows.std() + 1e-8)
    np.testing.assert_allclose(adv, expected)
    assert adv.mean() == pytest.approx(0.0, abs=1e-12) and adv.std() == pytest.approx(1.0, abs=1e-6)


def test_permuted_rows_follow_ids():
    b = group_batch()
    base = dict(zip(zip(b.traj_id, b.turn), estimate("grpo", b).step))
    perm = np.random.default_rng(0).permutation(len(b))
    p = b.take(perm)
    got = estimate("grpo", p).step
    for tid, t, a in zip(p.traj_id, p.turn, got):
        assert a == pytest.approx(base[(tid, t)])


def test_estimate_errors_name_the_problem():
    b = group_batch()
    with pytest.raises(KeyError, match="unknown estimator 'nope'.*grpo"):
        estimate("nope", b)
    with pytest.raises(ValueError, match="unknown option.*'gama'.*allowed: .*episode_stats"):
        estimate("grpo", b, gama=0.9)
    with pytest.raises(ValueError, match="mode='zscore'.*'mean_std'"):
        estimate("grpo", b, mode="zscore")
    no_state = StepBatch.from_trajectories([Trajectory("t", "g", "g/0", [Step("o")])])
    needs_state = [n for n in available_estimators() if "state_key" in estimator_info(n).fields]
    for name in needs_state:
        with pytest.raises(MissingInputError, match="state_key"):
            estimate(name, no_state)


def test_registry_lists_the_baselines_and_custom_estimators_plug_in():
    assert {"grpo", "rloo", "reinforce_pp"} <= set(available_estimators())
    from agentrl.credit import Advantages, register_estimator

    @register_estimator("test_constant", summary="every row gets `value`")
    def constant(batch, *, value: float = 1.0):
        return Advantages(step=np.full(len(batch), value))

    b = group_batch()
    np.testing.assert_array_equal(estimate("test_constant", b, value=2.5).step, 2.5)
    assert estimator_info("test_constant").options == {"value": 1.0}
    assert estimator_info("test_constant").benchmark_lr_scale == 1.0
    with pytest.raises(ValueError, match="benchmark_lr_scale must be a positive number"):
        register_estimator("test_bad_rate", benchmark_lr_scale=0.0)(constant)
    assert estimator_info("test_constant").clip is None
    with pytest.raises(ValueError, match="clip must be two numbers"):
        register_estimator("test_bad_clip", clip=(0.2, -0.1))(constant)


def test_empty_batch():
    b = StepBatch.from_trajectories([])
    assert estimate("grpo", b).step.shape == (0,)
