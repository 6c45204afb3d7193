"""``rollout.overlap``: iteration k+1's rollout on an ``agentrl serve`` process while iteration k
updates; old log-probs under the adapter that sampled; staleness in the metrics; exact resume after
a kill; the on-policy default unchanged."""

from __future__ import annotations

import pytest
import torch

from agentrl.policies.hf import HFPolicy, LoraSettings
from agentrl.trainers import train
from agentrl.trainers.learner import Learner, UpdateSettings
from agentrl.trainers.metrics import read_metrics
from agentrl.trainers.samples import TokenSamples
from tests.test_server_pool import serve_processes
from tests.test_trainer import _comparable, kill_during, tiny_run


def test_old_logprobs_are_scored_under_the_behaviour_adapter(small_maze_model_dir):
    policy = HFPolicy.from_pretrained(small_maze_model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu")
    learner = Learner(policy, UpdateSettings(micro_batch_size=2), lr=0.01)
    samples = TokenSamples([[5, 6, 7], [8, 9]], [[10, 11, 12], [13, 14]])
    with torch.no_grad():
        for p in learner.params:
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    sampled = learner.snapshot()
    before = learner.score(samples).logp
    with torch.no_grad():
        for p in learner.params:
            p.add_(0.2)  # the update that happened while the next rollout ran
    current = learner.snapshot()
    assert not torch.allclose(learner.score(samples).logp[0], before[0])
    learner.behaviour = sampled
    stale = learner.score(samples).logp
    assert all(torch.equal(a, b) for a, b in zip(stale, before))
    assert all(torch.equal(p, c) for p, c in zip(learner.params, current))  # put back exactly


@pytest.mark.slow
def test_overlapped_training_records_staleness_and_resumes_exactly_after_a_kill(
    small_maze_model_dir, tmp_path
):
    with serve_processes(small_maze_model_dir, 1) as procs:
        extra = {"rollout.server.url": procs[0][0] + "/v1", "optim.iterations": 3, "rollout.max_turns": 3}
        on_policy = read_metrics(
            train(None, tmp_path / "on", tiny_run(small_maze_model_dir, **extra)) / "metrics.jsonl"
        )
        overrides = tiny_run(small_maze_model_dir, **extra, **{"rollout.overlap": "true"})
        full = read_metrics(train(None, tmp_path / "full", overrides) / "metrics.jsonl")
        assert [r["staleness"] for r in full] == [0, 1, 1]
        assert "staleness" not in on_policy[0] and "time_rollout_wait" not in on_policy[0]
        # iteration 0 samples and updates with the starting adapter either way; later ones differ
        assert {k: v for k, v in _comparable(full[0]).items() if k != "staleness"} == _comparable(
            on_policy[0]
        )
        # batch 1 was sampled by the starting adapter (zero LoRA B: the reference itself), and its old
        # log-probs are scored under that adapter, not the updated one: no KL from the reference
        assert full[1]["kl"] == 0.0
        if full[0]["adv_zero_frac"] < 1:  # the first update moved the adapter
            assert on_policy[1]["kl"] > 0

        killed = tmp_path / "killed"
        kill_during(killed, overrides, 1)
        resumed = read_metrics(train(None, killed, overrides) / "metrics.jsonl")
        assert [_comparable(r) for r in resumed] == [_comparable(r) for r in full]
