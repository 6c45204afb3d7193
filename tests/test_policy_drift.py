"""The policy drift the trainer supplies to estimators that declare ``policy_drift`` (SPO's KL-adaptive
rho): 0 on first visits, the hand-computed token mean of |log pi_then - log pi_now| on a stored
response after an update, stored responses through save/load and a resume, and the training runs."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from agentrl.agents import StepPrompt
from agentrl.credit import Advantages, ValueHeadSpec, estimator_info, register_estimator
from agentrl.envs.maze import MazeEnv
from agentrl.policies import SamplingParams
from agentrl.policies.hf import HFPolicy, LoraSettings
from agentrl.rollout import rollout
from agentrl.trainers import train
from agentrl.trainers.drift import DRIFT_FILE, PolicyDrift
from agentrl.trainers.learner import Learner, UpdateSettings
from agentrl.trainers.metrics import read_metrics
from agentrl.trainers.samples import TokenSamples, build_samples, steps_in_row_order
from agentrl.types import StepBatch
from tests.test_trainer import _comparable, tiny_run


@pytest.fixture(scope="module")
def model_dir(small_maze_model_dir):
    return small_maze_model_dir


def maze_rollout(policy, tasks: list[str], group_size: int, seed: int):
    envs = [MazeEnv(size=2, n_doors=1, num_tasks=50) for _ in range(len(tasks) * group_size)]
    groups = rollout(
        policy,
        envs,
        tasks,
        group_size,
        max_turns=3,
        params=SamplingParams(max_new_tokens=6, seed=seed),
        builder=StepPrompt(history_k=1),
        id_prefix=f"s{seed}-",
    )
    return StepBatch.from_trajectories(groups), build_samples(steps_in_row_order(groups))


def test_drift_is_zero_on_first_visits_and_the_token_mean_of_the_log_prob_change_after_an_update(
    model_dir, tmp_path
):
    policy = HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu")
    learner = Learner(policy, UpdateSettings(minibatch_size=64, micro_batch_size=3), lr=5e-2)
    drift = PolicyDrift()
    batch, samples = maze_rollout(policy, ["maze-1", "maze-2"], 2, seed=5)
    d, stats = drift.measure(learner, batch, samples)
    np.testing.assert_array_equal(d, np.zeros(len(batch)))
    assert stats["drift_mean"] == 0.0 and stats["drift_first_visit_frac"] == 1.0
    # each task keeps its last trajectory: every turn's token ids and their log-probs now
    assert sorted(drift.responses) == ["maze-1", "maze-2"]
    for task, stored in drift.responses.items():
        traj = max(i for i, t in zip(batch.traj_idx, batch.task_names[batch.group_idx]) if t == task)
        rows = np.flatnonzero(batch.traj_idx == traj)
        assert stored.prompt_ids == [samples.prompt_ids[r] for r in rows]
        assert stored.response_ids == [samples.response_ids[r] for r in rows]
        direct = learner.score(samples, rows).logp
        for a, b in zip(stored.logp, direct):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)

    # an update moves the policy
    scores = learner.score(samples)
    token_adv = [
        np.full(len(r), a, np.float32) for r, a in zip(samples.response_ids, np.linspace(-1, 1, len(samples)))
    ]
    token_mask = [np.ones(len(r), bool) for r in samples.response_ids]
    learner.update(samples, scores, token_adv, token_mask, rng=np.random.default_rng(0))

    then = copy.deepcopy(drift.responses["maze-1"])
    now = learner.score(TokenSamples(then.prompt_ids, then.response_ids)).logp
    by_hand = float(
        np.mean(
            np.abs(
                np.concatenate([t.double().numpy() for t in then.logp])
                - np.concatenate([t.double().numpy() for t in now])
            )
        )
    )
    assert by_hand > 1e-4  # the update changed the stored response's log-probs

    batch2, samples2 = maze_rollout(policy, ["maze-3", "maze-1"], 1, seed=6)
    old_adapter = learner.snapshot()
    other, maze_2 = copy.deepcopy(drift), copy.deepcopy(drift.responses["maze-2"])
    d2, stats2 = drift.measure(learner, batch2, samples2)
    row_task = batch2.task_names[batch2.group_idx]
    assert np.all(d2[row_task == "maze-3"] == 0.0)  # first visit
    assert d2[row_task == "maze-1"] == pytest.approx(by_hand, rel=0, abs=1e-7)
    assert stats2["drift_first_visit_frac"] == 0.5 and stats2["drift_mean"] == pytest.approx(
        by_hand / 2, abs=1e-7
    )
    # maze-1's new trajectory replaced its stored response; maze-2 (not in the batch) kept its own
    assert drift.responses["maze-1"].response_ids == [
        samples2.response_ids[r] for r in np.flatnonzero(row_task == "maze-1")
    ]
    kept = drift.responses["maze-2"]
    assert kept.response_ids == maze_2.response_ids
    assert all(torch.equal(a, b) for a, b in zip(kept.logp, maze_2.logp))
    # an overlapped rollout's older behaviour adapter is not what drift is measured with
    with torch.no_grad():
        for p in old_adapter:
            p.mul_(0.5)
    learner.behaviour = old_adapter
    d3, _ = other.measure(learner, batch2, samples2)
    assert learner.behaviour is old_adapter
    learner.behaviour = None
    np.testing.assert_array_equal(d3, d2)

    # the stored responses through a checkpoint file, exactly
    drift.save(tmp_path / DRIFT_FILE)
    loaded = PolicyDrift.load(tmp_path)
    assert loaded.responses.keys() == drift.responses.keys()
    for task, s in drift.responses.items():
        got = loaded.responses[task]
        assert got.prompt_ids == s.prompt_ids and got.response_ids == s.response_ids
        assert all(torch.equal(a, b) for a, b in zip(got.logp, s.logp))


def test_a_missing_or_corrupt_drift_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=f"has no {DRIFT_FILE}"):
        PolicyDrift.load(tmp_path)
    (tmp_path / DRIFT_FILE).write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="corrupt"):
        PolicyDrift.load(tmp_path)
    bad = {
        "tasks": {
            "a": {
                "prompt_ids": [torch.tensor([1])],
                "response_ids": [torch.tensor([2, 3])],
                "logp": [torch.zeros(1)],
            }
        }
    }
    torch.save(bad, tmp_path / DRIFT_FILE)
    with pytest.raises(ValueError, match="do not match"):
        PolicyDrift.load(tmp_path)


def test_the_trait_is_declared_with_its_inputs():
    spo = estimator_info("spo")
    assert (
        spo.wants_drift({"rho_mode": "kl"})
        and not spo.wants_drift({})
        and not spo.wants_drift({"rho_mode": "constant"})
    )
    assert not estimator_info("grpo").wants_drift({"rho_mode": "kl"})

    def fn(batch, *, state, drift=None):
        return Advantages(step=np.zeros(len(batch)))

    with pytest.raises(ValueError, match="stateful=True"):
        register_estimator("test_drift_stateless", row_inputs=("drift",), policy_drift=lambda o: True)(
            lambda batch, *, drift=None: Advantages(step=np.zeros(len(batch)))
        )
    with pytest.raises(ValueError, match="row_inputs"):
        register_estimator("test_drift_no_input", stateful=True, policy_drift=lambda o: True)(fn)
    with pytest.raises(ValueError, match="critic values"):
        register_estimator(
            "test_drift_critic",
            stateful=True,
            inputs=("values",),
            row_inputs=("drift", "values"),
            value_heads={"v": ValueHeadSpec(target="ret")},
            policy_drift=lambda o: True,
        )(fn)


def spo_run(model_dir, **extra):
    return tiny_run(
        model_dir,
        **{
            "algorithm.estimator": "spo",
            "algorithm.options": "{rho_mode: kl}",
            "rollout.groups": 4,
            "rollout.group_size": 1,
            "env.train_tasks.count": 3,  # 4 draws from 3 tasks: the second iteration revisits tasks
            **extra,
        },
    )


def drift_contents(ckpt) -> dict:
    saved = torch.load(ckpt / DRIFT_FILE, weights_only=True)
    return {
        task: [[t.tolist() for t in s[k]] for k in ("prompt_ids", "response_ids", "logp")]
        for task, s in saved["tasks"].items()
    }


def test_spo_with_kl_adaptive_rho_trains_and_resumes_exactly(model_dir, tmp_path):
    overrides = spo_run(model_dir)
    full = train(None, tmp_path / "full", overrides)
    records = read_metrics(full / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [0, 1]
    assert all(np.isfinite(r["loss"]) and r["episodes"] == 4 for r in records)
    assert records[0]["drift_mean"] == 0.0 and records[0]["drift_first_visit_frac"] == 1.0
    assert records[1]["drift_first_visit_frac"] < 1.0 and records[1]["drift_mean"] > 0.0
    # after the first iteration every task was a first visit: D = 0, rho = 2^0 clipped to rho_max 0.96
    first = json.loads((full / "checkpoints" / "iter-000001" / "estimator_state.json").read_text())
    assert first["tasks"] and all(
        a + b == pytest.approx(0.96 * 1.0 + 1.0) for a, b in first["tasks"].values()
    )
    assert set(drift_contents(full / "checkpoints" / "iter-000001")) == set(first["tasks"])

    stopped = tmp_path / "stopped"
    train(None, stopped, overrides, stop_after=1)
    ckpt = stopped / "checkpoints" / "iter-000001"
    broken = tmp_path / "broken"
    shutil.copytree(stopped, broken)
    (broken / "checkpoints" / "iter-000001" / DRIFT_FILE).unlink()
    with pytest.raises(ValueError, match=f"has no {DRIFT_FILE}"):
        train(None, broken, overrides)
    assert drift_contents(ckpt) == drift_contents(full / "checkpoints" / "iter-000001")
    resumed = read_metrics(train(None, stopped, overrides) / "metrics.jsonl")
    assert [_comparable(r) for r in resumed] == [_comparable(r) for r in records]
    last = "checkpoints/iter-000002"
    for name in ("estimator_state.json", "adapter/adapter_model.safetensors"):
        assert (stopped / last / name).read_bytes() == (full / last / name).read_bytes(), name
    assert drift_contents(stopped / last) == drift_contents(full / last)


def test_constant_rho_measures_no_drift(model_dir, tmp_path):
    run = train(None, tmp_path / "run", spo_run(model_dir, **{"algorithm.options": "{rho_mode: constant}"}))
    assert not any("drift" in k for r in read_metrics(run / "metrics.jsonl") for k in r)
    assert not (run / "checkpoints" / "iter-000002" / DRIFT_FILE).exists()


def test_an_estimator_whose_advantages_read_the_drift_is_refused(model_dir, tmp_path):
    """The trait promises that drift changes only the state: the trainer checks the after-update call."""

    @register_estimator(
        "test_drift_in_advantages", stateful=True, row_inputs=("drift",), policy_drift=lambda o: True
    )
    def fn(batch, *, state, drift=None):
        return Advantages(step=np.linspace(-1.0, 1.0, len(batch)) + 10.0 * drift)

    overrides = spo_run(
        model_dir, **{"algorithm.estimator": "test_drift_in_advantages", "algorithm.options": "{}"}
    )
    with pytest.raises(RuntimeError, match="drift changes only its state"):
        train(None, tmp_path / "run", overrides)
