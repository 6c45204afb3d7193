"""SPO (persistent per-task Beta tracker, batch z-score): hand-worked values over two iterations, the
update modes, the KL-adaptive rho, edge cases, and a reference written after the authors' loop
(``spo_ray_trainer.py``: per-sample lists, a dict written back per prompt) over sequences of random
batches (rows shuffled). Max difference seen against the reference: 4.4e-16 (advantages), 0 (tracker)."""

import math
import statistics

import numpy as np
import pytest

from agentrl.credit import MissingInputError, estimate, estimator_info
from agentrl.eval.synthetic_rollouts import synthetic_trajectories
from agentrl.types import Step, StepBatch, Trajectory

EPS = 1e-8


def traj(task: str, i: int, outcome: float, n_steps: int = 2, invalid_at: int | None = None) -> Trajectory:
    steps = [Step(obs=f"o{t}", action="a", valid=t != invalid_at) for t in range(n_steps)]
    steps[-1].reward = outcome
    return Trajectory(
        task_id=task, group_id=f"{task}#{i}", traj_id=f"{task}/{i}", steps=steps, terminated=True
    )


def batch_of(*items: tuple[str, float]) -> StepBatch:
    """One trajectory per (task, outcome), each its own group (group_size 1)."""
    return StepBatch.from_trajectories([traj(task, i, r) for i, (task, r) in enumerate(items)])


def per_traj(b: StepBatch, adv: np.ndarray) -> list[float]:
    out: dict[str, float] = {}
    for tid, a, valid in zip(b.traj_id, adv, b.valid):
        if valid:
            assert out.setdefault(tid, a) == a, "valid rows of a trajectory share its advantage"
    return list(out.values())


def test_spo_by_hand_over_two_iterations():
    info = estimator_info("spo")
    assert info.stateful and "state" not in info.options
    state: dict = {}
    b1 = batch_of(("A", 1.0), ("B", 0.0), ("C", 1.0))
    got = per_traj(b1, estimate("spo", b1, state=state).step)
    # new tasks: alpha = beta = 0.5, p_hat = 0.5 -> A = r - 0.5 = [0.5, -0.5, 0.5], mean 1/6,
    # centred [1/3, -2/3, 1/3], unbiased var (1/9 + 4/9 + 1/9) / 2 = 1/3
    s = math.sqrt(1 / 3)
    assert got == pytest.approx([(1 / 3) / (s + EPS), (-2 / 3) / (s + EPS), (1 / 3) / (s + EPS)], rel=1e-12)
    # after use, rho 0.875: alpha = 0.4375 + r, beta = 0.4375 + (1 - r)
    assert state == {"tasks": {"A": [1.4375, 0.4375], "B": [0.4375, 1.4375], "C": [1.4375, 0.4375]}}
    b2 = batch_of(("A", 1.0), ("B", 1.0), ("C", 0.0))
    got = per_traj(b2, estimate("spo", b2, state=state).step)
    # p_hat: A, C = 1.4375 / 1.875 = 23/30, B = 7/30 -> A = [7/30, 23/30, -23/30], mean 7/90
    a = np.array([7 / 30, 23 / 30, -23 / 30])
    c = a - 7 / 90
    want = c / (math.sqrt(float(np.sum(c**2)) / 2) + EPS)
    assert got == pytest.approx(list(want), rel=1e-12)
    # alpha = 0.875 * alpha + r, beta = 0.875 * beta + (1 - r)
    assert state["tasks"]["A"] == pytest.approx([0.875 * 1.4375 + 1, 0.875 * 0.4375])
    assert state["tasks"]["B"] == pytest.approx([0.875 * 0.4375 + 1, 0.875 * 1.4375])
    assert state["tasks"]["C"] == pytest.approx([0.875 * 1.4375, 0.875 * 0.4375 + 1])


def test_without_a_state_every_call_starts_fresh():
    b = batch_of(("A", 1.0), ("B", 0.0))
    first = estimate("spo", b).step
    np.testing.assert_array_equal(first, estimate("spo", b).step)
    # a fresh tracker's baseline is 0.5 for every task: A = [0.5, -0.5], unbiased std sqrt(0.5)
    np.testing.assert_allclose(per_traj(b, first), [math.sqrt(0.5), -math.sqrt(0.5)], rtol=1e-7)


def test_group_size_one_and_equal_outcomes_still_get_credit_from_the_tracker():
    state: dict = {"tasks": {"easy": [9.0, 1.0], "hard": [1.0, 9.0]}}  # p_hat 0.9 and 0.1
    b = batch_of(("easy", 1.0), ("hard", 1.0))
    got = per_traj(b, estimate("spo", b, state=state).step)
    # A = [0.1, 0.9]: the hard task's success is the surprise; mean 0.5, centred -+0.4, unbiased var 0.32
    assert got == pytest.approx([-0.4 / (math.sqrt(0.32) + EPS), 0.4 / (math.sqrt(0.32) + EPS)], rel=1e-12)
    assert np.all(estimate("grpo", b).step == 0.0)  # GRPO has nothing to compare within a group of one


def test_update_modes_with_several_trajectories_of_a_task():
    b = StepBatch.from_trajectories([traj("A", i, r) for i, r in enumerate([1.0, 1.0, 0.0])])
    last: dict = {}
    estimate("spo", b, state=last)
    # the code's write-back: only the last trajectory's update survives (r = 0)
    assert last["tasks"]["A"] == [0.4375, 1.4375]
    both: dict = {}
    estimate("spo", b, state=both, update="sum")
    # every trajectory counts: alpha = 0.4375 + 2, beta = 0.4375 + 1
    assert both["tasks"]["A"] == [2.4375, 1.4375]
    with pytest.raises(ValueError, match="update"):
        estimate("spo", b, update="mean")


def test_kl_adaptive_rho_needs_the_drift_input():
    b = batch_of(("A", 1.0), ("B", 0.0), ("C", 1.0))
    state: dict = {"tasks": {"A": [1.0, 1.0]}}
    with pytest.raises(MissingInputError, match="drift"):
        estimate("spo", b, state=state, rho_mode="kl")
    assert state == {"tasks": {"A": [1.0, 1.0]}}  # a failed call leaves the tracker as it was
    # rows: A (2 rows) D = 0 -> 2^0 = 1, clipped to 0.96; B D = 0.01 -> 2^(-1/6) = 0.8909; C D = 0.06 -> 0.5 -> 0.875
    drift = np.repeat([0.0, 0.01, 0.06], 2)
    estimate("spo", b, state=state, rho_mode="kl", drift=drift)
    assert state["tasks"]["A"] == pytest.approx([0.96 * 1.0 + 1, 0.96 * 1.0])
    assert state["tasks"]["B"] == pytest.approx([2 ** (-1 / 6) * 0.5, 2 ** (-1 / 6) * 0.5 + 1])
    assert state["tasks"]["C"] == pytest.approx([0.875 * 0.5 + 1, 0.875 * 0.5])
    with pytest.raises(ValueError, match="drift"):
        estimate("spo", b, rho_mode="kl", drift=-drift - 1)
    # the advantages do not depend on rho (it acts after use)
    np.testing.assert_array_equal(
        estimate("spo", b, rho_mode="kl", drift=drift).step, estimate("spo", b).step
    )


def test_rewards_are_mapped_to_zero_one_and_clipped():
    b = batch_of(("A", 10.0), ("B", 0.0), ("C", -3.0))
    state: dict = {}
    estimate("spo", b, state=state, max_reward=10.0)
    # 10 -> 1, 0 -> 0, -3 -> clipped to 0 (the authors' script maps negative scores to 0)
    assert state["tasks"] == {"A": [1.4375, 0.4375], "B": [0.4375, 1.4375], "C": [0.4375, 1.4375]}
    with pytest.raises(ValueError, match="max_reward"):
        estimate("spo", b, max_reward=0.0)


def test_edge_cases_single_trajectory_invalid_rows_truncation():
    one = batch_of(("A", 1.0))
    np.testing.assert_array_equal(estimate("spo", one).step, 0.0)  # std of one is 0: no NaN
    same = batch_of(("A", 1.0), ("B", 1.0))
    np.testing.assert_array_equal(estimate("spo", same).step, 0.0)  # equal advantages, fresh tasks
    # the invalid-action penalty lands on the invalid row only; a truncated trajectory is its outcome
    trajs = [traj("A", 0, 1.0, n_steps=3, invalid_at=1), traj("B", 1, 0.0)]
    trajs[1].truncated, trajs[1].terminated = True, False
    b = StepBatch.from_trajectories(trajs)
    adv = estimate("spo", b, invalid_penalty=0.25).step
    assert adv[0] == adv[2] and adv[1] == pytest.approx(adv[0] - 0.25) and adv[0] > 0 > adv[3] == adv[4]


def test_malformed_state_and_options_are_refused():
    b = batch_of(("A", 1.0))
    for bad in (
        {"tasks": []},
        {"tasks": {"A": [1.0]}},
        {"tasks": {"A": [0.0, 0.0]}},
        {"tasks": {"A": [1, -1]}},
    ):
        with pytest.raises(ValueError, match="spo state"):
            estimate("spo", b, state=bad)
    for opts in ({"rho": 1.5}, {"rho_min": 0.99}, {"rho_mode": "adaptive"}, {"eps": 0.0}, {"drift_half": 0}):
        with pytest.raises(ValueError):
            estimate("spo", b, **opts)
    with pytest.raises(TypeError, match="dict"):
        estimate("spo", b, state=[1, 2])


# ---------------------------------------------------------------- reference after the authors' loop
def reference_spo(
    trajs: list[Trajectory],
    alpha: dict,
    beta: dict,
    *,
    rho: float = 0.875,
    drift: dict | None = None,
    update: str = "last",
) -> dict[str, float]:
    """``spo_ray_trainer.py`` over a list of samples (trajectories in batch order): per-sample alpha/beta
    lists from the dicts, r - p_hat, z-score with the unbiased std, then alpha = rho * alpha + r per
    sample written back per prompt (last write wins). ``update="sum"``: the sum over the prompt's samples.
    KL mode: rho = clip(2^(-D/0.06), 0.875, 0.96) with D per prompt."""
    prompts = [t.task_id for t in trajs]
    r = [min(max(t.outcome, 0.0), 1.0) for t in trajs]
    a_list = [alpha.get(p, 0.5) for p in prompts]
    b_list = [beta.get(p, 0.5) for p in prompts]
    adv = [ri - a / (a + b) for ri, a, b in zip(r, a_list, b_list)]
    mean = sum(adv) / len(adv)
    std = statistics.stdev(adv) if len(adv) > 1 else 0.0
    out = {t.traj_id: (x - mean) / (std + EPS) for t, x in zip(trajs, adv)}
    rhos = [rho if drift is None else min(max(2.0 ** (-drift[p] / 0.06), 0.875), 0.96) for p in prompts]
    if update == "last":
        for i, p in enumerate(prompts):
            alpha[p] = rhos[i] * a_list[i] + r[i]
            beta[p] = rhos[i] * b_list[i] + (1 - r[i])
    else:
        for p in dict.fromkeys(prompts):
            idx = [i for i, q in enumerate(prompts) if q == p]
            alpha[p] = rhos[idx[-1]] * a_list[idx[0]] + sum(r[i] for i in idx)
            beta[p] = rhos[idx[-1]] * b_list[idx[0]] + sum(1 - r[i] for i in idx)
    return out


def random_batch(rng: np.random.Generator, it: int) -> list[Trajectory]:
    trajs = []
    for g in range(int(rng.integers(1, 6))):
        task = f"t{int(rng.integers(0, 6))}"
        for i in range(int(rng.integers(1, 4))):
            outcome = float(rng.choice([0.0, 1.0, 0.5, 2.0, -1.0]))
            t = traj(task, i, outcome, n_steps=int(rng.integers(1, 4)))
            t.group_id, t.traj_id = f"it{it}g{g}", f"it{it}g{g}/{i}"
            trajs.append(t)
    return trajs


@pytest.mark.parametrize("mode", ["last", "sum", "kl"])
def test_matches_a_loop_reference_over_iterations(mode):
    rng = np.random.default_rng({"last": 0, "sum": 1, "kl": 2}[mode])
    state: dict = {}
    alpha: dict = {}
    beta: dict = {}
    worst = worst_state = 0.0
    for it in range(30):
        trajs = random_batch(rng, it)
        b = StepBatch.from_trajectories(trajs)
        perm = rng.permutation(len(b))  # rows in any order: the tracker follows task ids
        shuffled = b.take(perm)
        kw: dict = {"update": "sum" if mode == "sum" else "last"}
        drift = None
        if mode == "kl":
            drift = {t.task_id: float(rng.choice([0.0, 0.003, 0.02, 0.2])) for t in trajs}
            kw.update(rho_mode="kl", drift=np.array([drift[t] for t in shuffled.task_id]))
        got = estimate("spo", shuffled, state=state, **kw).step
        want = reference_spo(trajs, alpha, beta, drift=drift, update=kw["update"])
        for tid, valid, a in zip(shuffled.traj_id, shuffled.valid, got):
            if valid:
                worst = max(worst, abs(a - want[tid]))
        want_state = {p: [alpha[p], beta[p]] for p in alpha}
        assert state["tasks"].keys() == want_state.keys()
        for p, ab in want_state.items():
            worst_state = max(worst_state, *(abs(x - y) for x, y in zip(state["tasks"][p], ab)))
    assert worst < 1e-12 and worst_state < 1e-12, (worst, worst_state)


def test_reference_on_a_large_synthetic_batch():
    trajs = synthetic_trajectories(64, seed=3)
    b = StepBatch.from_trajectories(trajs)
    state: dict = {}
    alpha: dict = {}
    beta: dict = {}
    for _ in range(3):
        got = per_traj(b, estimate("spo", b, state=state, invalid_penalty=0.0).step)
        want = reference_spo(trajs, alpha, beta)
        np.testing.assert_allclose(got, [want[t.traj_id] for t in trajs], rtol=0, atol=1e-12)
    assert state["tasks"] == {p: [alpha[p], beta[p]] for p in alpha}


# ---------------------------------------------------------------- training: one rollout per task, resumed
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
def test_spo_with_group_size_one_killed_mid_run_resumes_exactly(model_dir, tmp_path):
    """A run killed (SIGKILL) after a checkpoint continues with the tracker it had: the resumed run's
    metrics, adapter weights and tracker equal the uninterrupted run's."""
    import json

    from agentrl.trainers import train
    from agentrl.trainers.metrics import read_metrics
    from tests.test_trainer import _comparable, kill_during, tiny_run

    overrides = tiny_run(
        model_dir,
        **{
            "optim.iterations": 3,
            "algorithm.estimator": "spo",
            "rollout.groups": 4,
            "rollout.group_size": 1,
            "env.train_tasks.count": 3,  # 4 draws from 3 tasks: the tracker sees tasks again
        },
    )
    full_dir = train(None, tmp_path / "full", overrides)
    full = read_metrics(full_dir / "metrics.jsonl")
    assert all(r["episodes"] == 4 for r in full)
    killed = tmp_path / "killed"
    assert len(kill_during(killed, overrides, 2)) < 3
    resumed = read_metrics(train(None, killed, overrides) / "metrics.jsonl")
    assert [_comparable(r) for r in resumed] == [_comparable(r) for r in full]
    last = "checkpoints/iter-000003"
    for name in ("estimator_state.json", "adapter/adapter_model.safetensors"):
        assert (killed / last / name).read_bytes() == (full_dir / last / name).read_bytes(), name
    tracker = json.loads((full_dir / last / "estimator_state.json").read_text())["tasks"]
    # 12 episodes over at most 3 tasks, one update kept per task and iteration: alpha + beta grows
    # from 1 towards 1 / (1 - 0.875) = 8 with each visit (0.875 (a + b) + 1)
    assert 1 <= len(tracker) <= 3 and all(1.0 < a + b < 8.0 for a, b in tracker.values())


def test_prioritised_sampling_weights_follow_the_tracker():
    """w = sqrt(p_hat (1 - p_hat)) + 0.05: 0.55 for a task never seen (p_hat 0.5); a task solved
    19 times in 20 (alpha 9.5, beta 0.5 -> p_hat 0.95): sqrt(0.0475) + 0.05 = 0.26794."""
    from types import SimpleNamespace

    from agentrl.credit import estimator_info
    from agentrl.trainers.loop import Trainer

    weigh = estimator_info("spo").task_weights
    state = {"tasks": {"a": [9.5, 0.5], "b": [0.5, 0.5]}}
    w = weigh(state, ["a", "b", "new"], {})
    np.testing.assert_allclose(w, [np.sqrt(0.95 * 0.05) + 0.05, 0.55, 0.55], rtol=1e-12)
    assert state == {"tasks": {"a": [9.5, 0.5], "b": [0.5, 0.5]}}  # read, never written
    assert weigh(state, ["a"], {"sampling": "uniform"}) is None
    with pytest.raises(ValueError, match="sampling"):
        weigh(state, ["a"], {"sampling": "thompson"})
    with pytest.raises(ValueError, match="expected \\[alpha, beta\\]"):
        weigh({"tasks": {"a": [1.0]}}, ["a"], {})

    def probabilities(estimator, options, estimator_state):
        trainer = SimpleNamespace(
            cfg=SimpleNamespace(algorithm=SimpleNamespace(estimator=estimator, options=options)),
            estimator_state=estimator_state,
            train_tasks=["a", "b", "new"],
        )
        return Trainer._task_probabilities(trainer)

    p = probabilities("spo", {}, state)
    np.testing.assert_allclose(p, w / w.sum())
    assert probabilities("spo", {"sampling": "uniform"}, state) is None
    assert probabilities("grpo", {}, None) is None  # no sampler: the trainer's uniform draw, as before


def test_a_task_sampler_needs_a_stateful_estimator():
    from agentrl.credit import register_estimator

    with pytest.raises(ValueError, match="declare stateful=True"):
        register_estimator("test_sampler", task_weights=lambda state, ids, options: None)
