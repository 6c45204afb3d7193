"""Stateful estimators: the registry trait, ``estimate``'s state handling, and the trainer keeping one
state per run across iterations, in every checkpoint and through a resume (exactly, as if the run had
not stopped); a missing or corrupt state file is a clear error."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import agentrl.trainers
from agentrl.config import ConfigError, load_config
from agentrl.credit import Advantages, estimate, estimator_info, register_estimator
from agentrl.distributed import Dist
from agentrl.envs.maze import MazeEnv
from agentrl.policies.tiny import build_tiny_model, env_corpus
from agentrl.trainers import train
from agentrl.trainers.checkpoint import ESTIMATOR_STATE, load_estimator_state, settle_estimator_state
from agentrl.trainers.metrics import read_metrics
from agentrl.types import Step, StepBatch, Trajectory
from tests.test_trainer import _comparable, tiny_run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    env = MazeEnv(size=2, n_doors=1, num_tasks=50)
    corpus = env_corpus(env, [f"maze-{i}" for i in range(10)], steps_per_task=6, seed=0)
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny"), corpus, vocab_size=384, layers=1, hidden=32, seed=0
    )


def register_counting_estimator(name: str = "test_stateful") -> None:
    """Advantage = outcome - the task's mean outcome in earlier calls (0.5 before any) + 0.1 * calls:
    every iteration's credit depends on everything the state saw before."""

    @register_estimator(name, stateful=True)
    def counting(batch, *, state, scale: float = 1.0):
        calls = state.get("calls", 0) + 1
        tasks = state.setdefault("tasks", {})
        baseline = np.array([tasks.get(t, [0.5, 0])[0] for t in batch.task_id])
        adv = scale * (batch.outcome - baseline) + 0.1 * calls
        first = np.unique(batch.traj_idx, return_index=True)[1]  # one row per trajectory
        task_of, outcome_of = batch.task_id[first], batch.outcome[first]
        for t in dict.fromkeys(task_of):
            mean, n = tasks.get(t, [0.0, 0])
            new = outcome_of[task_of == t]
            tasks[t] = [(mean * n + float(new.sum())) / (n + new.size), n + int(new.size)]
        state["calls"] = calls
        return Advantages(step=adv)


def small_batch(outcomes=(1.0, 0.0)) -> StepBatch:
    trajs = []
    for i, r in enumerate(outcomes):
        steps = [Step(obs="o", action="a"), Step(obs="o", action="a", reward=r)]
        trajs.append(Trajectory("T", "g", f"g/{i}", steps, terminated=True))
    return StepBatch.from_trajectories(trajs)


def test_the_stateful_trait_is_declared_at_registration():
    register_counting_estimator()
    info = estimator_info("test_stateful")
    assert info.stateful and "state" not in info.options and info.options == {"scale": 1.0}
    assert not estimator_info("grpo").stateful
    with pytest.raises(ValueError, match="'state' go together"):
        register_estimator("test_no_param", stateful=True)(lambda batch, *, scale=1.0: None)
    with pytest.raises(ValueError, match="'state' go together"):
        register_estimator("test_not_declared")(lambda batch, *, state=None: None)
    with pytest.raises(ValueError, match="turn_slots"):
        register_estimator("test_slots", stateful=True, schedule="turn_slots")
    with pytest.raises(ValueError, match="not stateful"):
        estimate("grpo", small_batch(), state={})
    # the state is the caller's, not a config option
    with pytest.raises(ValueError, match="unknown option"):
        load_config(None, ["algorithm.estimator=test_stateful", "algorithm.options={state: {}}"])


def test_estimate_updates_the_callers_state_only_when_the_call_succeeds():
    register_counting_estimator()
    b = small_batch()
    # no state: a fresh one per call, so one-off calls, benchmarks and fidelity are unchanged
    np.testing.assert_array_equal(estimate("test_stateful", b).step, estimate("test_stateful", b).step)
    state: dict = {}
    first = estimate("test_stateful", b, state=state).step
    assert state == {"calls": 1, "tasks": {"T": [0.5, 2]}}  # two trajectories, outcomes 1 and 0
    second = estimate("test_stateful", b, state=state).step
    np.testing.assert_allclose(second - first, 0.1)  # same baseline 0.5, one more call
    assert state["calls"] == 2

    @register_estimator("test_broken", stateful=True)
    def broken(batch, *, state):
        state["calls"] = 99
        return Advantages(step=np.full(len(batch), np.nan))

    kept = {"calls": 1}
    with pytest.raises(RuntimeError, match="NaN"):
        estimate("test_broken", b, state=kept)
    assert kept == {"calls": 1}  # the estimator worked on a copy


def test_settled_state_is_what_a_checkpoint_gives_back_and_ranks_must_agree(tmp_path):
    assert settle_estimator_state({"a": (1, 2.5), "b": {"c": None}}) == {"a": [1, 2.5], "b": {"c": None}}
    with pytest.raises(ValueError, match="must be JSON"):
        settle_estimator_state({"a": math.nan})
    with pytest.raises(ValueError, match="must be JSON"):
        settle_estimator_state({"a": np.zeros(2)})

    class TwoRanks(Dist):
        def gather(self, mine):
            return [*mine, self.other]  # type: ignore[attr-defined]

    same, other = TwoRanks(rank=0, world=2), TwoRanks(rank=0, world=2)
    object.__setattr__(same, "other", json.dumps({"x": 1.0}, allow_nan=False))
    object.__setattr__(other, "other", json.dumps({"x": 1.5}))
    assert settle_estimator_state({"x": 1.0}, same) == {"x": 1.0}
    with pytest.raises(RuntimeError, match=r"rank\(s\) \[1\]"):
        settle_estimator_state({"x": 1.0}, other)


def test_a_missing_or_corrupt_state_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=f"has no {ESTIMATOR_STATE}.*'spo' keeps state"):
        load_estimator_state(tmp_path, "spo")
    for text, why in (('{"tasks": {"A": [1.0', "corrupt"), ("[1, 2]", "JSON object"), ('{"x": NaN}', "NaN")):
        (tmp_path / ESTIMATOR_STATE).write_text(text)
        with pytest.raises(ValueError, match=why):
            load_estimator_state(tmp_path, "spo")
    (tmp_path / ESTIMATOR_STATE).write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="corrupt"):
        load_estimator_state(tmp_path, "spo")
    (tmp_path / ESTIMATOR_STATE).write_text('{"tasks": {}}')
    assert load_estimator_state(tmp_path, "spo") == {"tasks": {}}


def adapter_weights(ckpt: Path) -> bytes:
    return (ckpt / "adapter" / "adapter_model.safetensors").read_bytes()


def test_a_stateful_estimator_from_test_code_trains_and_resumes_exactly(model_dir, tmp_path):
    """The trainer learns everything from the registration; a run stopped after its first checkpoint and
    started again gives the uninterrupted run's advantages, weights and state."""
    register_counting_estimator()
    overrides = tiny_run(
        model_dir, **{"algorithm.estimator": "test_stateful", "algorithm.options": "{scale: 2.0}"}
    )
    full = train(None, tmp_path / "full", overrides)
    records = read_metrics(full / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [0, 1]
    state_1 = json.loads((full / "checkpoints" / "iter-000001" / ESTIMATOR_STATE).read_text())
    state_2 = json.loads((full / "checkpoints" / "iter-000002" / ESTIMATOR_STATE).read_text())
    assert state_1["calls"] == 1 and state_2["calls"] == 2  # one call per iteration, kept across them
    assert sum(n for _, n in state_2["tasks"].values()) == 8  # 2 iterations x 2 groups x 2 episodes
    sources = Path(agentrl.trainers.__file__).parent.rglob("*.py")
    assert not any("test_stateful" in p.read_text() for p in sources)

    stopped = tmp_path / "stopped"
    train(None, stopped, overrides, stop_after=1)
    assert [r["iteration"] for r in read_metrics(stopped / "metrics.jsonl")] == [0]
    ckpt = stopped / "checkpoints" / "iter-000001"
    assert json.loads((ckpt / ESTIMATOR_STATE).read_text()) == state_1
    # the same checkpoint without its state file, or with a damaged one, is refused on resume
    damages = (
        (lambda p: p.unlink(), "has no estimator_state.json"),
        (lambda p: p.write_text("{"), "corrupt"),
    )
    for k, (damage, match) in enumerate(damages):
        broken = tmp_path / f"broken-{k}"
        shutil.copytree(stopped, broken)
        damage(broken / "checkpoints" / "iter-000001" / ESTIMATOR_STATE)
        with pytest.raises(ValueError, match=match):
            train(None, broken, overrides)
    # a resume from an emptied state would not reproduce the run: the state matters
    emptied = tmp_path / "emptied"
    shutil.copytree(stopped, emptied)
    (emptied / "checkpoints" / "iter-000001" / ESTIMATOR_STATE).write_text("{}")
    wrong = read_metrics(train(None, emptied, overrides) / "metrics.jsonl")
    assert _comparable(wrong[1]) != _comparable(records[1])

    resumed = read_metrics(train(None, stopped, overrides) / "metrics.jsonl")
    assert [_comparable(r) for r in resumed] == [_comparable(r) for r in records]
    last = "checkpoints/iter-000002"
    assert adapter_weights(stopped / last) == adapter_weights(full / last)
    assert (stopped / last / ESTIMATOR_STATE).read_text() == (full / last / ESTIMATOR_STATE).read_text()
    with pytest.raises(ConfigError, match="different config"):
        train(None, stopped, [*overrides, "algorithm.options={scale: 3.0}"])
