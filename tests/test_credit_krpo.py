"""KRPO (a 1-D Kalman filter over the group's rewards in sampling order as the baseline): hand-worked
values, order dependence, edge cases, the persisted per-task filter, and a reference written after the
authors' ``KalmanFilter``/``group_advantages`` (a loop over each group's trajectories) on random and
synthetic batches. Max difference seen against the reference: 0 (the same operations in the same order)."""

import math

import numpy as np
import pytest

from agentrl.credit import estimate, estimator_info
from agentrl.eval.synthetic_rollouts import synthetic_trajectories
from agentrl.types import StepBatch, Trajectory
from tests.credit_helpers import batch_of, traj
from tests.credit_helpers import per_valid_traj as per_traj

Q, R, EPS = 1e-5, 1e-2, 1e-8


def test_krpo_by_hand():
    b = batch_of({"G": [1.0, 0.0, 1.0]})
    got = per_traj(b, estimate("krpo", b).step)
    # r=1: P- = 1 + Q = 1.00001, K = P-/(P- + R) = 0.990099, x = K = 0.990099, P = (1 - K) P- = 0.00990099
    p_pred = 1 + Q
    k = p_pred / (p_pred + R)
    x, p = k, (1 - k) * p_pred
    assert got["G/0"] == pytest.approx((1 - x) / (math.sqrt(p) + EPS), rel=1e-12)  # 0.0995
    # r=0: P- = 0.00991099, K = 0.497765, x = 0.990099 (1 - K) = 0.497263, P = 0.00497765
    p_pred = p + Q
    k = p_pred / (p_pred + R)
    x, p = x + k * (0 - x), (1 - k) * p_pred
    assert got["G/1"] == pytest.approx(-x / (math.sqrt(p) + EPS), rel=1e-12)  # -7.048
    assert got["G/1"] == pytest.approx(-7.048125460439465, rel=1e-12)
    # r=1: K = 0.332784, x = 0.664566, P = 0.00332784
    p_pred = p + Q
    k = p_pred / (p_pred + R)
    x, p = x + k * (1 - x), (1 - k) * p_pred
    assert got["G/2"] == pytest.approx((1 - x) / (math.sqrt(p) + EPS), rel=1e-12)  # 5.815
    assert got["G/2"] == pytest.approx(5.814688674569243, rel=1e-12)


def test_order_matters_and_groups_get_fresh_filters():
    a = per_traj(batch_of({"G": [1.0, 0.0]}), estimate("krpo", batch_of({"G": [1.0, 0.0]})).step)
    b = per_traj(batch_of({"G": [0.0, 1.0]}), estimate("krpo", batch_of({"G": [0.0, 1.0]})).step)
    assert a["G/0"] != -b["G/1"] and a["G/0"] > 0 > a["G/1"] and b["G/0"] == 0.0 < b["G/1"]
    # two groups with the same rewards get the same advantages (a fresh filter each), even of one task
    two = StepBatch.from_trajectories(
        [traj("g1", i, r, task="T") for i, r in enumerate([1.0, 0.0])]
        + [traj("g2", i, r, task="T") for i, r in enumerate([1.0, 0.0])]
    )
    got = per_traj(two, estimate("krpo", two).step)
    assert got["g1/0"] == got["g2/0"] == a["G/0"] and got["g1/1"] == got["g2/1"] == a["G/1"]


def test_edge_cases_singleton_equal_rewards_invalid_rows():
    one = per_traj(batch_of({"S": [1.0]}), estimate("krpo", batch_of({"S": [1.0]})).step)
    # a singleton is not 0: (1 - K) / sqrt(P_1) with K = 0.990099 (the code's behaviour)
    assert one["S/0"] == pytest.approx(0.09950271891968875, rel=1e-12)
    equal = per_traj(batch_of({"E": [1.0] * 4}), estimate("krpo", batch_of({"E": [1.0] * 4})).step)
    assert all(v > 0 for v in equal.values())  # the filter starts at x0 = 0, below the rewards
    zeros = estimate("krpo", batch_of({"Z": [0.0] * 3})).step
    np.testing.assert_array_equal(zeros, 0.0)  # rewards equal to x0: exactly 0
    b = StepBatch.from_trajectories([traj("G", 0, 1.0, n_steps=3, invalid_at=2), traj("G", 1, 0.0)])
    adv = estimate("krpo", b, invalid_penalty=0.3).step
    assert adv[0] == adv[1] and adv[2] == pytest.approx(adv[0] - 0.3) and adv[3] == adv[4] < 0
    for opts in ({"meas_var": 0.0}, {"eps": 0.0}, {"init_var": -1.0}, {"persist": "yes"}):
        with pytest.raises(ValueError):
            estimate("krpo", b, **opts)


def test_default_is_stateless_and_persist_carries_a_filter_per_task():
    info = estimator_info("krpo")
    assert info.stateful and info.options["persist"] is False
    b = batch_of({"A": [1.0, 0.0], "B": [0.0, 1.0]})
    state: dict = {}
    first = estimate("krpo", b, state=state).step
    assert state == {}  # the authors' fresh filter per group: nothing to keep
    np.testing.assert_array_equal(estimate("krpo", b, state=state).step, first)
    np.testing.assert_array_equal(estimate("krpo", b, state={}, persist=True).step, first)  # fresh = same
    kept: dict = {}
    estimate("krpo", b, state=kept, persist=True)
    x_a, p_a = kept["tasks"]["A"]
    # A's filter after [1, 0]: the values of the hand test above
    assert x_a == pytest.approx(0.49726259430608777, rel=1e-12) and p_a == pytest.approx(0.004977648294766136)
    second = per_traj(b, estimate("krpo", b, state=kept, persist=True).step)
    # the next iteration continues A's filter: P- = P + Q, K, x, P as in the third hand step
    p_pred = p_a + Q
    k = p_pred / (p_pred + R)
    x, p = x_a + k * (1 - x_a), (1 - k) * p_pred
    assert second["A/0"] == pytest.approx((1 - x) / (math.sqrt(p) + EPS), rel=1e-12)
    assert kept["tasks"]["B"][1] == pytest.approx(kept["tasks"]["A"][1])  # P does not depend on rewards
    with pytest.raises(ValueError, match="krpo state"):
        estimate("krpo", b, state={"tasks": {"A": [0.0, -1.0]}}, persist=True)


# ---------------------------------------------------------------- reference after the authors' code
class KalmanFilter:
    def __init__(self, x: float = 0.0, p: float = 1.0, q: float = Q, r: float = R):
        self.x, self.p, self.q, self.r = x, p, q, r

    def update(self, z: float) -> tuple[float, float]:
        p_pred = self.p + self.q
        k = p_pred / (p_pred + self.r)
        self.x = self.x + k * (z - self.x)
        self.p = (1 - k) * p_pred
        return self.x, self.p


def reference_krpo(trajs: list[Trajectory], filters: dict | None = None) -> dict[str, float]:
    """``group_advantages`` per group (a fresh filter each), trajectories in sampling order; with
    ``filters`` (task -> KalmanFilter) one filter per task carried over calls (persist)."""
    out = {}
    fresh: dict[str, KalmanFilter] = {}
    for t in trajs:
        if filters is None:
            kf = fresh.setdefault(t.group_id, KalmanFilter())
        else:
            kf = filters.setdefault(t.task_id, KalmanFilter())
        x, p = kf.update(t.outcome)
        out[t.traj_id] = (t.outcome - x) / (math.sqrt(p) + EPS)
    return out


def random_batch(rng: np.random.Generator, it: int) -> list[Trajectory]:
    trajs = []
    for g in range(int(rng.integers(1, 6))):
        task = f"t{int(rng.integers(0, 4))}"
        for i in range(int(rng.integers(1, 7))):
            outcome = float(rng.choice([0.0, 0.01, 0.5, 1.0, 10.0, -1.0]))
            trajs.append(traj(f"it{it}g{g}", i, outcome, n_steps=int(rng.integers(1, 4)), task=task))
    return trajs


def close(got: dict, want: dict) -> float:
    return max(abs(got[k] - want[k]) / max(1.0, abs(want[k])) for k in want)


@pytest.mark.parametrize("persist", [False, True])
def test_matches_a_loop_reference(persist):
    rng = np.random.default_rng(int(persist))
    state: dict = {}
    filters: dict | None = {} if persist else None
    worst = 0.0
    for it in range(25):
        trajs = random_batch(rng, it)
        b = StepBatch.from_trajectories(trajs)
        shuffled = b.take(rng.permutation(len(b)))  # rows in any order: sampling order is traj_idx
        got = per_traj(shuffled, estimate("krpo", shuffled, state=state, persist=persist).step)
        worst = max(worst, close(got, reference_krpo(trajs, filters)))
    assert worst < 1e-13, worst
    if persist:
        assert filters is not None
        assert state["tasks"].keys() == filters.keys()
        for task, f in filters.items():
            assert state["tasks"][task] == pytest.approx([f.x, f.p], rel=1e-13)


def test_reference_on_a_large_synthetic_batch():
    trajs = synthetic_trajectories(64, seed=5)
    b = StepBatch.from_trajectories(trajs)
    got = per_traj(b, estimate("krpo", b, invalid_penalty=0.0).step)
    assert close(got, reference_krpo(trajs)) < 1e-13


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from agentrl.envs.maze import MazeEnv
    from agentrl.policies.tiny import build_tiny_model, env_corpus

    env = MazeEnv(size=2, n_doors=1, num_tasks=50)
    corpus = env_corpus(env, [f"maze-{i}" for i in range(10)], steps_per_task=6, seed=0)
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny"), corpus, vocab_size=384, layers=1, hidden=32, seed=0
    )


@pytest.mark.slow
def test_persisted_filters_are_trained_and_checkpointed(model_dir, tmp_path):
    import json

    from agentrl.trainers import train
    from agentrl.trainers.metrics import read_metrics
    from tests.test_trainer import tiny_run

    overrides = tiny_run(model_dir, **{"algorithm.estimator": "krpo", "algorithm.options": "{persist: true}"})
    run = train(None, tmp_path / "run", overrides)
    assert [r["iteration"] for r in read_metrics(run / "metrics.jsonl")] == [0, 1]
    one = json.loads((run / "checkpoints" / "iter-000001" / "estimator_state.json").read_text())["tasks"]
    two = json.loads((run / "checkpoints" / "iter-000002" / "estimator_state.json").read_text())["tasks"]
    # 2 groups of 2 per iteration; P depends only on how many rewards a filter has seen: 2 after one
    # visit (P = 0.00497765, the hand test's second step), less after two
    assert all(p == pytest.approx(0.004977648294766136) for _, p in one.values())
    assert set(one) <= set(two) and all(two[t][1] <= one[t][1] for t in one)
    default = train(None, tmp_path / "default", tiny_run(model_dir, **{"algorithm.estimator": "krpo"}))
    assert json.loads((default / "checkpoints" / "iter-000002" / "estimator_state.json").read_text()) == {}
