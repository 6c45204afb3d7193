"""The trainer on the real tiny transformer + peft LoRA: every estimator trains, SeeUPO's schedule,
HiPER routing, reference log-probs, accumulation, faults that must not stop training."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import agentrl
import agentrl.trainers
from agentrl.agents import StepPrompt
from agentrl.credit import (
    Advantages,
    ValueHeadSpec,
    available_estimators,
    estimate,
    estimator_info,
    register_estimator,
)
from agentrl.credit.seeupo import turn_slots
from agentrl.envs import register_env
from agentrl.envs.maze import MazeEnv
from agentrl.policies import SamplingParams
from agentrl.policies.hf import HFPolicy, LoraSettings
from agentrl.rollout import rollout
from agentrl.trainers import train
from agentrl.trainers.learner import Learner, UpdateSettings
from agentrl.trainers.losses import LOSSES, register_loss
from agentrl.trainers.metrics import read_metrics
from agentrl.trainers.samples import build_samples, steps_in_row_order, token_advantages
from agentrl.trainers.schedule import register_schedule, standard_update, turn_slot_update
from agentrl.trainers.values import gather_features
from agentrl.types import Step, StepBatch, read_trajectories


@pytest.fixture(scope="module")
def model_dir(small_maze_model_dir):
    return small_maze_model_dir


def tiny_run(model_dir, **extra) -> list[str]:
    """Overrides for a seconds-long run on a 2x2 maze with the prebuilt tiny model."""
    base = {
        "model.path": str(model_dir),
        "model.device": "cpu",
        "lora.r": 4,
        "lora.alpha": 8,
        "env.kwargs": "{size: 2, n_doors: 1, max_steps: 4, num_tasks: 50}",
        "env.train_tasks.count": 20,
        "env.num_envs": 4,
        "rollout.groups": 2,
        "rollout.group_size": 2,
        "rollout.max_turns": 2,
        "rollout.max_new_tokens": 6,
        "rollout.history_k": 1,
        "optim.iterations": 2,
        "optim.lr": 0.01,
        "logging.tensorboard": "false",
        "algorithm.minibatch_size": 4,
        "algorithm.micro_batch_size": 2,
        "algorithm.kl_coef": 0.01,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


ESTIMATOR_EXTRAS = {
    "hiper": {"rollout.response_format": "hiper"},
    # SPO-chain reads chain rollouts; a boundary every 2 turns of 2-turn episodes adds no continuation,
    # so the group keeps its 4 episodes (tests/test_tree_rollout.py trains with continuations)
    "spo_chain": {
        "rollout.branching.enabled": "true",
        "rollout.branching.at": "chain",
        "rollout.branching.interval": 2,
    },
    "mt_grpo": {"algorithm.options": "{variant: k_turn}"},
    # HDPO counts tool turns, which the maze has none of: the calculator tool env instead
    "hdpo": {
        "env.name": "tools",
        "env.kwargs": "{suite: calculator, num_tasks: 20}",
        "rollout.response_format": "tool_call",
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("estimator", available_estimators())
def test_every_estimator_trains_two_iterations_on_the_maze(model_dir, tmp_path, estimator):
    run = train(
        None,
        tmp_path / "run",
        tiny_run(model_dir, **{"algorithm.estimator": estimator}, **ESTIMATOR_EXTRAS.get(estimator, {})),
    )
    records = read_metrics(run / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [0, 1]
    for r in records:
        assert r["episodes"] == 4 and r["rows"] >= 4
        assert all(
            math.isfinite(r[k]) for k in ("loss", "kl", "entropy", "grad_norm", "adv_std", "tokens_per_s")
        )
        assert r["trained_tokens"] > 0
        if estimator_info(estimator).value_heads:  # gae, mt_ppo, hiper, spa_rl (its progress head too)
            assert math.isfinite(r["value_loss"])
        if estimator == "seeupo":
            assert r["seeupo_slots"] >= 1
    if records[0]["adv_zero_frac"] < 1:  # some credit, so the adapter moved away from the reference
        assert records[1]["kl"] > 0
    assert (run / "checkpoints" / "iter-000002" / "adapter" / "adapter_config.json").exists()
    cfg = (run / "config.yaml").read_text()
    assert f"estimator: {estimator}" in cfg and json.loads((run / "run.json").read_text())["seed"] == 0


def _comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("time_") and k != "tokens_per_s"}


def kill_during(out: Path, overrides: list[str], records: int) -> list[dict]:
    """Train in a subprocess and kill it with -9 once ``metrics.jsonl`` holds ``records`` records;
    returns the records it left (a crash mid-run, for the exact-resume tests)."""
    import signal
    import subprocess
    import sys
    import time

    code = f"from agentrl.trainers import train; train(None, {str(out)!r}, {overrides!r})"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(read_metrics(metrics)) >= records:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return read_metrics(metrics) if metrics.exists() else []


class FlakyMaze(MazeEnv):
    """A real maze whose engine crashes on every 5th step call (counted per process)."""

    calls = 0

    def step(self, action):
        FlakyMaze.calls += 1
        if FlakyMaze.calls % 5 == 0:
            raise RuntimeError("engine crashed")
        return super().step(action)


def test_malformed_output_and_a_crashing_env_do_not_stop_training(model_dir, tmp_path):
    register_env("test-flaky-maze", FlakyMaze)
    overrides = tiny_run(
        model_dir,
        **{
            "env.name": "test-flaky-maze",
            "rollout.groups": 3,
            "rollout.max_turns": 3,
            "model.gradient_checkpointing": "true",
            "logging.save_trajectories": "true",
        },
    )
    run = train(None, tmp_path / "run", overrides)
    records = read_metrics(run / "metrics.jsonl")
    saved = read_trajectories(run / "trajectories" / "iter-000001.jsonl")
    assert len(saved) == 6 and all(s.response_ids is not None for t in saved for s in t.steps)
    assert len(records) == 2
    assert sum(r["errors"] for r in records) >= 1  # crashed episodes were recorded, not fatal
    assert all(r["invalid_rate"] > 0 for r in records)  # the untrained model writes malformed text
    assert all(math.isfinite(r["loss"]) for r in records)


@pytest.fixture(scope="module")
def maze_batch(model_dir):
    """A real rollout of the tiny policy: 2 groups x 3 episodes of up to 3 turns."""
    policy = HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu")
    envs = [MazeEnv(size=2, n_doors=1, num_tasks=50) for _ in range(6)]
    groups = rollout(
        policy,
        envs,
        ["maze-1", "maze-2"],
        3,
        max_turns=3,
        params=SamplingParams(max_new_tokens=6, seed=5),
        builder=StepPrompt(history_k=1),
    )
    return policy, groups


def test_reference_is_the_adapter_off_and_accumulation_matches_one_batch(maze_batch):
    policy, groups = maze_batch
    steps = steps_in_row_order(groups)
    samples = build_samples(steps)
    settings = UpdateSettings(minibatch_size=len(samples), micro_batch_size=len(samples), kl_coef=0.1)
    learner = Learner(policy, settings, lr=1e-2)
    with torch.no_grad():
        saved = [p.detach().clone() for p in learner.params]
    try:
        scores = learner.score(samples, reference=True)
        for a, b, s in zip(scores.logp, scores.ref_logp, steps):
            assert torch.equal(a, b)  # fresh LoRA (B = 0): the policy is the reference
            assert a.tolist() == pytest.approx(
                s.response_logprobs, abs=1e-5
            )  # = the sampling log-probs at T=1
        adv = np.linspace(-1, 1, len(samples))
        token_adv = [np.full(len(r), a, np.float32) for r, a in zip(samples.response_ids, adv)]
        token_mask = [np.ones(len(r), bool) for r in samples.response_ids]
        grads = {}
        for micro in (len(samples), 3):
            learner.settings = UpdateSettings(
                minibatch_size=len(samples), micro_batch_size=micro, kl_coef=0.1
            )
            step, learner.optimizer.step = (
                learner.optimizer.step,
                lambda: None,
            )  # keep the gradient, skip the step
            stats = learner.update(samples, scores, token_adv, token_mask, rng=np.random.default_rng(0))
            learner.optimizer.step = step
            grads[micro] = (torch.cat([p.grad.flatten() for p in learner.params]).clone(), stats["loss"])
        assert torch.allclose(grads[3][0], grads[len(samples)][0], atol=1e-6, rtol=1e-4)
        assert grads[3][1] == pytest.approx(grads[len(samples)][1], abs=1e-6)
        learner.update(samples, scores, token_adv, token_mask, rng=np.random.default_rng(0))
        after = learner.score(samples, reference=True)
        assert any(not torch.equal(a, b) for a, b in zip(after.logp, after.ref_logp))
        # the reference never moves (up to float summation order)
        assert max(float((a - b).abs().max()) for a, b in zip(after.ref_logp, scores.ref_logp)) < 1e-5
    finally:
        with torch.no_grad():
            for p, s in zip(learner.params, saved):
                p.copy_(s)


def test_seeupo_updates_turn_slots_in_reverse_with_corrections_by_hand(maze_batch):
    policy, groups = maze_batch
    groups = copy.deepcopy(groups)
    for g in groups:  # an untrained model fails everywhere: give the episodes different outcomes by hand
        for t, outcome in zip(g, (1.0, 0.0, 0.5)):
            t.outcome = outcome
    batch = StepBatch.from_trajectories(groups)
    samples = build_samples(steps_in_row_order(groups))
    learner = Learner(policy, UpdateSettings(loss="gspo", minibatch_size=64, micro_batch_size=8), lr=5e-2)
    with torch.no_grad():
        saved = [p.detach().clone() for p in learner.params]
    seen = []
    real_update, real_score = learner.update, learner.score

    def recording_update(samples_, scores, token_adv, token_mask, **kw):
        seen.append(
            {
                "rows": scores.rows.copy(),
                "adv": [float(a[0]) if len(a) else 0.0 for a in token_adv],
                "old": scores.logp,
            }
        )
        return real_update(samples_, scores, token_adv, token_mask, **kw)

    def recording_score(samples_, rows=None, **kw):
        out = real_score(samples_, rows, **kw)
        if (
            seen
            and rows is not None
            and np.array_equal(np.asarray(rows), seen[-1]["rows"])
            and "new" not in seen[-1]
        ):
            seen[-1]["new"] = out.logp
        return out

    learner.update, learner.score = recording_update, recording_score
    try:
        result = turn_slot_update(learner, batch, samples, "seeupo", {}, rng=np.random.default_rng(0))
    finally:
        with torch.no_grad():
            for p, s in zip(learner.params, saved):
                p.copy_(s)
    slots = turn_slots(batch, "reverse")
    assert [int(batch.turn[s["rows"][0]]) for s in seen] == sorted({int(t) for t in batch.turn}, reverse=True)
    assert [s["rows"].tolist() for s in seen] == [rows.tolist() for _, rows in slots]
    base = estimate("seeupo", batch).step  # A with M = 1
    M = {}
    for s in seen:
        ids = batch.traj_id[s["rows"]]
        expected = [base[r] * M.get(tid, 1.0) for r, tid in zip(s["rows"], ids)]
        assert s["adv"] == pytest.approx(expected, abs=1e-6)
        for tid, new, old in zip(ids, s["new"], s["old"]):
            x = float((new - old).mean()) if new.numel() else 0.0
            rho = min(max(math.exp(min(max(x, -10), 10)), 0.8), 1.2)
            M[tid] = min(max(M.get(tid, 1.0) * rho, 0.8), 1.2)
    assert any(m != 1.0 for m in M.values())  # the corrections really moved
    assert result.advantages.step.shape == (len(batch),)
    slot_means = [float(np.mean(s["adv"])) for s in seen]
    assert result.stats["seeupo_slot_adv_mean_min"] == pytest.approx(min(slot_means), abs=1e-6)
    assert result.stats["seeupo_slot_adv_mean_max"] == pytest.approx(max(slot_means), abs=1e-6)
    assert result.stats["seeupo_slot_rows_min"] == min(len(s["rows"]) for s in seen)


def test_hiper_parts_get_their_own_advantages(maze_batch):
    policy, _ = maze_batch
    tok = policy.tokenizer
    text = "<switch>SWITCH</switch><subgoal>find the key</subgoal><action>go north</action>"
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    bad_ids = tok("<action>go", add_special_tokens=False)["input_ids"]
    steps = [
        Step(obs="a", response=text, prompt_ids=[1, 2], response_ids=ids),
        Step(obs="b", response=text, prompt_ids=[3], response_ids=ids),
        Step(obs="c", response="<action>go", prompt_ids=[4], response_ids=bad_ids),
    ]
    hiper = estimator_info("hiper")
    samples = build_samples(
        steps, tokenizer=tok, parts=True, response_format="hiper", value_heads=hiper.value_heads
    )
    adv = Advantages(
        step=np.array([0.5, 0.25, -0.7]),
        spans={
            "action": np.array([0.5, 0.25, -0.7]),
            "subgoal": np.array([-1.0, 9.0, 9.0]),
            "switch": np.array([2.0, 3.0, 4.0]),
        },
        masks={"subgoal": np.array([True, False, False])},
    )
    token_adv, token_mask = token_advantages(samples, adv, spans=hiper.spans)
    pieces = [tok.decode([i]) for i in ids]
    switch_end = pieces.index("</switch>") + 1
    subgoal_end = pieces.index("</subgoal>") + 1
    action_end = pieces.index("</action>") + 1
    expected0 = (
        [2.0] * switch_end + [-1.0] * (subgoal_end - switch_end) + [0.5] * (action_end - subgoal_end) + [0.0]
    )
    assert token_adv[0].tolist() == pytest.approx(expected0)
    assert token_mask[0].tolist() == [True] * action_end + [False]  # the end-of-turn token is not trained
    # row 1 is not a segment start: its subgoal tokens are not trained
    assert token_mask[1].tolist() == [True] * switch_end + [False] * (subgoal_end - switch_end) + [True] * (
        action_end - subgoal_end
    ) + [False]
    assert token_adv[1][:switch_end].tolist() == [3.0] * switch_end
    # a malformed response has no parts: every token takes the action advantage
    assert token_adv[2].tolist() == pytest.approx([-0.7] * len(bad_ids)) and token_mask[2].all()
    assert samples.value_offset["low"].tolist() == [subgoal_end - 1, subgoal_end - 1, -1]
    assert samples.value_offset["high"].tolist() == [-1, -1, -1]


def test_per_token_advantages_reach_the_loss_on_their_tokens(maze_batch):
    """An estimator registered per_token (by test code) gets the rollout's token ids through the batch
    and its token advantages reach the loss as given, position by position; a wrong length fails."""
    policy, groups = maze_batch
    batch = StepBatch.from_trajectories(groups)
    samples = build_samples(steps_in_row_order(groups))

    @register_estimator("test_tokens", fields=("response_ids",), per_token=True)
    def tokens(b):
        # row r, token t: 1000 * (r + 1) + t + 1, nonzero and distinct, so the loss input shows which
        # token of which row it got
        token = [1000.0 * (r + 1) + np.arange(len(ids)) + 1 for r, ids in enumerate(b.response_ids)]
        return Advantages(step=np.zeros(len(b)), token=token)

    seen = []

    @register_loss("test_recording")
    def recording(x):
        seen.append((x.adv.detach().cpu().clone(), x.mask.detach().cpu().clone()))
        return LOSSES.get("ppo_token_mean")(x)

    n = len(samples)
    learner = Learner(
        policy, UpdateSettings(loss="test_recording", minibatch_size=n, micro_batch_size=n), lr=0.0
    )
    result = standard_update(learner, batch, samples, "test_tokens", {}, rng=np.random.default_rng(0))
    assert len(seen) == 1 and result.stats["trained_tokens"] == sum(len(r) for r in samples.response_ids)
    adv_BT, mask_BT = seen[0]
    got = sorted(adv_BT[b][mask_BT[b] > 0].tolist() for b in range(adv_BT.shape[0]))
    want = sorted(
        [1000.0 * (r + 1) + t + 1 for t in range(len(ids))] for r, ids in enumerate(samples.response_ids)
    )
    assert got == want
    assert torch.equal(adv_BT != 0, mask_BT > 0)  # nothing outside the response tokens
    # response tokens sit at the end of each left-padded row
    for b in range(adv_BT.shape[0]):
        k = int(mask_BT[b].sum())
        assert bool(mask_BT[b, adv_BT.shape[1] - k :].all())

    short = Advantages(step=np.zeros(n), token=[np.zeros(max(len(r) - 1, 0)) for r in samples.response_ids])
    with pytest.raises(ValueError, match="per-token advantages for a response of"):
        token_advantages(samples, short)
    with pytest.raises(ValueError, match="both per token and per span"):
        token_advantages(samples, estimate("test_tokens", batch), spans=("action",))


def test_advantage_channels_reach_a_channel_loss_with_their_weights(maze_batch):
    """An estimator that declares channels (by test code): under a channel loss each channel's per-row
    advantage reaches the loss on every response token of its row, with the weight its option gives;
    under a one-advantage loss no channel is passed."""
    policy, groups = maze_batch
    batch = StepBatch.from_trajectories(groups)
    samples = build_samples(steps_in_row_order(groups))
    n = len(samples)

    @register_estimator("test_channels", channels={"one": 1.0, "two": "two_weight"})
    def channels(b, *, two_weight: float = 0.5):
        one, two = 10.0 * (np.arange(len(b)) + 1), -(np.arange(len(b)) + 1.0)
        return Advantages(step=one + two_weight * two, extras={"one": one, "two": two})

    seen = []

    @register_loss("test_recording_channels", channels=True)
    def recording(x):
        seen.append([(w, a.detach().cpu().clone()) for w, a in x.channels] + [x.mask.detach().cpu().clone()])
        return LOSSES.get("ppo_channels")(x)

    learner = Learner(
        policy, UpdateSettings(loss="test_recording_channels", minibatch_size=n, micro_batch_size=n), lr=0.0
    )
    result = standard_update(
        learner, batch, samples, "test_channels", {"two_weight": 0.25}, rng=np.random.default_rng(0)
    )
    assert len(seen) == 1 and math.isfinite(result.stats["loss"])
    (w_one, one_BT), (w_two, two_BT), mask_BT = seen[0]
    assert (w_one, w_two) == (1.0, 0.25)
    got = sorted((one_BT[b][mask_BT[b] > 0].tolist(), two_BT[b][mask_BT[b] > 0].tolist()) for b in range(n))
    want = sorted(
        ([10.0 * (r + 1)] * len(ids), [-(r + 1.0)] * len(ids)) for r, ids in enumerate(samples.response_ids)
    )
    assert got == want
    assert torch.equal(one_BT != 0, mask_BT > 0) and torch.equal(two_BT != 0, mask_BT > 0)

    plain = []

    @register_loss("test_recording_plain")
    def recording_plain(x):
        plain.append(len(x.channels))
        return LOSSES.get("ppo_token_mean")(x)

    learner = Learner(
        policy, UpdateSettings(loss="test_recording_plain", minibatch_size=n, micro_batch_size=n), lr=0.0
    )
    standard_update(learner, batch, samples, "test_channels", {}, rng=np.random.default_rng(0))
    assert plain == [0]
    # a channel loss with an estimator that declares none fails by name
    learner = Learner(
        policy, UpdateSettings(loss="ppo_channels", minibatch_size=n, micro_batch_size=n), lr=0.0
    )
    with pytest.raises(ValueError, match="needs the estimator's channels"):
        standard_update(learner, batch, samples, "grpo", {}, rng=np.random.default_rng(0))


def test_ktae_token_credit_varies_within_a_response_and_trains(maze_batch):
    policy, groups = maze_batch
    groups = copy.deepcopy(groups)
    for g in groups:  # an untrained model fails everywhere: give the episodes different outcomes by hand
        for t, outcome in zip(g, (1.0, 0.0, 0.5)):
            t.outcome = outcome
    batch = StepBatch.from_trajectories(groups)
    samples = build_samples(steps_in_row_order(groups))
    adv = estimate("ktae", batch)
    token_adv, token_mask = token_advantages(samples, adv)
    assert all(np.array_equal(a, t.astype(np.float32)) for a, t in zip(token_adv, adv.token))
    assert all(m.all() for m in token_mask)
    assert any(len(set(a.tolist())) > 1 for a in token_adv)  # not one value broadcast over the response
    n = len(samples)
    learner = Learner(policy, UpdateSettings(minibatch_size=n, micro_batch_size=n), lr=0.0)
    result = standard_update(learner, batch, samples, "ktae", {}, rng=np.random.default_rng(0))
    assert math.isfinite(result.stats["loss"]) and result.advantages.token is not None


def test_ucas_gets_the_token_statistics_of_the_scoring_pass_and_trains(maze_batch):
    policy, groups = maze_batch
    groups = copy.deepcopy(groups)
    for g in groups:
        for t, outcome in zip(g, (1.0, 0.0, 0.5)):
            t.outcome = outcome
    batch = StepBatch.from_trajectories(groups)
    samples = build_samples(steps_in_row_order(groups))
    n = len(samples)
    learner = Learner(policy, UpdateSettings(minibatch_size=n, micro_batch_size=n), lr=0.0)
    plain = learner.score(samples)
    assert plain.token_stats == {}  # nothing computed unless asked
    scores = learner.score(samples, token_stats=("self_certainty", "chosen_logit"))
    for name in ("self_certainty", "chosen_logit"):
        assert [len(t) for t in scores.token_stats[name]] == [len(r) for r in samples.response_ids]
    assert all(torch.equal(a, b) for a, b in zip(scores.logp, plain.logp))
    seen = {}

    @register_estimator(
        "test_sees_token_stats",
        fields=("response_ids",),
        inputs=("token_stats",),
        per_token=True,
        token_stats=("self_certainty", "chosen_logit"),
    )
    def spy(b, *, token_stats=None):
        seen.update(token_stats)
        return estimate("ucas", b, token_stats=token_stats)

    result = standard_update(
        learner, batch, samples, "test_sees_token_stats", {}, rng=np.random.default_rng(0)
    )
    for name in ("self_certainty", "chosen_logit"):
        assert all(np.allclose(a, t.numpy()) for a, t in zip(seen[name], scores.token_stats[name]))
    assert math.isfinite(result.stats["loss"]) and result.advantages.token is not None
    result = standard_update(learner, batch, samples, "ucas", {}, rng=np.random.default_rng(0))
    assert any(len(set(a.tolist())) > 1 for a in result.advantages.token if len(a) > 1)


def test_spa_rl_fits_its_progress_head_on_trajectory_sums(maze_batch):
    policy, groups = maze_batch
    groups = copy.deepcopy(groups)
    for g in groups:
        for t, outcome in zip(g, (1.0, 0.0, 0.5)):
            t.outcome = outcome
    batch = StepBatch.from_trajectories(groups)
    info = estimator_info("spa_rl")
    samples = build_samples(steps_in_row_order(groups), value_heads=info.value_heads)
    assert samples.value_offset["progress"].tolist() == [len(r) - 1 for r in samples.response_ids]
    n = len(samples)
    learner = Learner(
        policy,
        UpdateSettings(minibatch_size=n, micro_batch_size=n),
        lr=0.0,
        critic_lr=0.1,
        value_heads=info.value_heads,
    )
    assert learner.value_head is not None and learner.value_head.heads == ("value", "progress")
    result = standard_update(learner, batch, samples, "spa_rl", {}, rng=np.random.default_rng(0))
    assert math.isfinite(result.stats["value_loss"]) and result.stats["value_loss"] > 0
    # both heads started at zero; each moved (the progress head from sum-over-trajectory errors)
    assert (learner.value_head.linear.weight.detach().abs().sum(dim=1) > 0).all()
    # a second update lowers the progress head's trajectory-sum error
    scores = learner.score(samples, features=True)
    c = learner.values(scores)["progress"]
    before = np.mean((np.bincount(batch.traj_idx, weights=c) - [t.outcome for g in groups for t in g]) ** 2)
    for _ in range(20):
        standard_update(learner, batch, samples, "spa_rl", {}, rng=np.random.default_rng(0))
    c = learner.values(learner.score(samples, features=True))["progress"]
    after = np.mean((np.bincount(batch.traj_idx, weights=c) - [t.outcome for g in groups for t in g]) ** 2)
    assert after < before


def test_an_estimator_registered_by_test_code_trains_with_its_own_critic_and_schedule(model_dir, tmp_path):
    """The trainer learns everything from the registration: a value head, a schedule, a default loss."""
    calls = []

    @register_schedule("test_counted")
    def counted(learner, batch, samples, estimator, options, *, rng, seed, order):
        calls.append((estimator, len(batch)))
        return standard_update(learner, batch, samples, estimator, options, rng=rng)

    @register_estimator(
        "test_critic",
        inputs=("values",),
        row_inputs=("values",),
        schedule="test_counted",
        loss="gspo",
        value_heads={"baseline": ValueHeadSpec(target="returns")},
    )
    def critic(batch, *, values=None, scale: float = 1.0):
        returns = batch.outcome.astype(np.float64)
        return Advantages(step=scale * (returns - values), extras={"returns": returns})

    run = train(
        None,
        tmp_path / "run",
        tiny_run(model_dir, **{"algorithm.estimator": "test_critic", "algorithm.options": "{scale: 2.0}"}),
    )
    metrics = read_metrics(run / "metrics.jsonl")
    assert [m["iteration"] for m in metrics] == [0, 1]
    assert [c[0] for c in calls] == ["test_critic", "test_critic"]
    assert all(math.isfinite(m["value_loss"]) for m in metrics)  # the head was fitted
    sources = Path(agentrl.trainers.__file__).parent.rglob("*.py")
    assert not any("test_critic" in p.read_text() for p in sources)


def test_value_features_are_read_at_their_positions():
    hidden = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)
    response_mask = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 1]], dtype=torch.bool)
    feats = gather_features(hidden, response_mask, {"first": [-1, -1], "third": [2, 0]})
    assert feats["first"][:, 0].tolist() == [1.0, 8.0]  # last prompt token: positions 1 and 3
    assert feats["third"][:, 0].tolist() == [4.0, 9.0]


def test_tiny_path_sft_then_rl_writes_before_and_after(tmp_path):
    from transformers import AutoTokenizer

    overrides = [
        "model.device=cpu",
        "model.tiny.vocab_size=384",
        "model.tiny.layers=1",
        "model.tiny.hidden=32",
        "model.tiny.corpus_tasks=10",
        "model.tiny.whole_words=[KEEP]",
        "env.kwargs={size: 2, n_doors: 1, max_steps: 4, num_tasks: 60}",
        "env.train_tasks.count=40",
        "env.num_envs=4",
        "rollout.groups=2",
        "rollout.group_size=2",
        "rollout.max_turns=3",
        "rollout.max_new_tokens=8",
        "rollout.history_k=1",
        "optim.iterations=1",
        "logging.tensorboard=false",
        "algorithm.estimator=gigpo",
        "sft.enabled=true",
        "sft.tasks.count=30",
        "sft.epochs=2",
        "sft.batch_size=16",
        "eval.enabled=true",
        "eval.tasks.start=50",
        "eval.tasks.count=6",
    ]
    lines: list[str] = []
    run = train(None, tmp_path / "run", overrides, progress=lines.append)
    summary = json.loads((run / "summary.json").read_text())
    for key in ("before", "after"):
        assert set(summary[key]) >= {"success_rate", "ci_low", "ci_high", "episodes"}
        assert summary[key]["episodes"] == 6
        assert summary[key]["ci_low"] <= summary[key]["success_rate"] <= summary[key]["ci_high"]
        episodes = read_trajectories(run / "eval" / f"{key}.jsonl")
        assert len(episodes) == 6 and np.mean([t.success for t in episodes]) == summary[key]["success_rate"]
    text = "\n".join(lines)
    assert "building the tiny model" in text and "sft epoch 2/2" in text and "iteration 1/1: success" in text
    steps = re.search(r"sft step 1/(\d+): loss", text)  # about every tenth of the run, not at its end
    assert steps is not None and f"sft step {steps.group(1)}/{steps.group(1)}" not in text
    assert f"after RL:  success {100 * summary['after']['success_rate']:.1f}%" in text and text.endswith(
        str(run)
    )
    sft = json.loads((run / "sft-model" / "sft_stats.json").read_text())
    assert sft["sft_loss_last"] < sft["sft_loss_first"] and sft["sft_samples"] >= 30
    assert (run / "tiny-model" / "tokenizer.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(run / "tiny-model")
    assert tokenizer.tokenize("<switch>KEEP</switch>") == ["<switch>", "KEEP", "</switch>"]


@pytest.mark.slow
def test_run_killed_mid_iteration_resumes_exactly(model_dir, tmp_path):

    from agentrl.config import ConfigError

    overrides = tiny_run(
        model_dir, **{"optim.iterations": 3, "algorithm.estimator": "gae", "rollout.max_turns": 3}
    )
    full = read_metrics(train(None, tmp_path / "full", overrides) / "metrics.jsonl")
    killed = tmp_path / "killed"
    assert len(kill_during(killed, overrides, 2)) < 3
    resumed = read_metrics(train(None, killed, overrides) / "metrics.jsonl")
    assert [r["iteration"] for r in resumed] == [0, 1, 2]
    assert [_comparable(r) for r in resumed] == [_comparable(r) for r in full]
    # an in-process stop after a checkpoint, and a resume with another config is refused
    stopped = train(None, tmp_path / "stopped", overrides, stop_after=1)
    assert [r["iteration"] for r in read_metrics(stopped / "metrics.jsonl")] == [0]
    assert (stopped / "checkpoints" / "iter-000001" / "trainer.pt").exists()
    with pytest.raises(ConfigError, match="different config"):
        train(None, stopped, [*overrides, "optim.lr=0.5"])
    # a run saved before a setting existed (here eval.seed), at its default, still resumes
    saved = yaml.safe_load((stopped / "config.yaml").read_text())
    del saved["eval"]["seed"]
    (stopped / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    finished = read_metrics(train(None, stopped, overrides) / "metrics.jsonl")
    assert [r["iteration"] for r in finished] == [0, 1, 2]


def test_training_through_a_served_policy_syncs_the_adapter(model_dir, tmp_path):
    """rollout.server.url: rollouts are sampled by a real ``agentrl serve`` on 127.0.0.1; before every
    rollout and at the end the trainer's adapter is loaded there, so the served adapter is the trained one."""
    from agentrl.policies.openai import OpenAIPolicy
    from agentrl.policies.server import PolicyServer

    with PolicyServer(model_dir, served_model_name="tiny", device="cpu", batch_wait_s=0.01) as server:
        run = train(None, tmp_path / "run", tiny_run(model_dir, **{"rollout.server.url": server.url + "/v1"}))
        records = read_metrics(run / "metrics.jsonl")
        assert [r["iteration"] for r in records] == [0, 1] and all(r["tokens_generated"] > 0 for r in records)
        client = OpenAIPolicy(server.url, "agentrl-policy")
        assert "agentrl-policy" in client.models()
        trained = HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu")
        trained.load_adapter(run / "served-adapter")
        base = HFPolicy.from_pretrained(model_dir, device="cpu")
        prompt = [
            {
                "role": "user",
                "content": MazeEnv(size=2, n_doors=1, num_tasks=50).reset(options={"task_id": "maze-3"})[0],
            }
        ]
        params = SamplingParams(temperature=0, max_new_tokens=6)
        served = client.generate([prompt], params)[0]
        assert served.response_ids == trained.generate([prompt], params)[0].response_ids
        assert served.logprobs == pytest.approx(trained.generate([prompt], params)[0].logprobs, abs=1e-4)
        assert not np.allclose(served.logprobs, base.generate([prompt], params)[0].logprobs, atol=1e-4)


def test_a_server_url_must_be_http():
    from agentrl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="rollout.server.url"):
        load_config(None, ["rollout.server.url=localhost:8000"])


def test_evaluation_envs_take_their_own_kwargs(model_dir, tmp_path):
    """eval.env_kwargs is merged over env.kwargs for the held-out envs only (here: more maze tasks)."""
    from agentrl.config import ConfigError

    extra = {
        "eval.enabled": "true",
        "eval.tasks.start": 60,
        "eval.tasks.count": 3,
        "eval.env_kwargs": "{num_tasks: 80}",
        "optim.iterations": 1,
    }
    run = train(None, tmp_path / "run", tiny_run(model_dir, **extra))
    episodes = read_trajectories(run / "eval" / "before.jsonl")
    assert sorted(t.task_id for t in episodes) == ["maze-60", "maze-61", "maze-62"]
    with pytest.raises(ConfigError, match="eval.tasks asks for tasks 60..62 but env 'maze' has 50"):
        train(None, tmp_path / "bad", tiny_run(model_dir, **{**extra, "eval.env_kwargs": "{}"}))


def test_extra_held_out_sets_are_evaluated_before_and_after(model_dir, tmp_path):
    """eval.also: each extra set gets its own before/after reports and episodes, next to the first
    set's (which keeps its place in summary.json); a bad set name is refused."""
    from agentrl.config import ConfigError

    overrides = tiny_run(
        model_dir,
        **{
            "optim.iterations": 1,
            "eval.enabled": "true",
            "eval.tasks.start": 40,
            "eval.tasks.count": 4,
            "eval.also": "{short: {max_steps: 1}}",
        },
    )
    lines: list[str] = []
    run = train(None, tmp_path / "run", overrides, progress=lines.append)
    summary = json.loads((run / "summary.json").read_text())
    short = summary["also"]["short"]
    for key in ("before", "after"):
        episodes = read_trajectories(run / "eval" / f"{key}-short.jsonl")
        assert len(episodes) == 4 and all(len(t) == 1 for t in episodes)  # max_steps 1 there
        assert np.mean([t.success for t in episodes]) == short[key]["success_rate"]
        assert summary[key]["episodes"] == 4 and len(read_trajectories(run / "eval" / f"{key}.jsonl")) == 4
    assert short["improvement"] == short["after"]["success_rate"] - short["before"]["success_rate"]
    assert json.loads((run / "eval_before-short.json").read_text()) == short["before"]
    assert any(line.startswith("after RL (short):") for line in lines)
    with pytest.raises(ConfigError, match="file names"):
        train(None, tmp_path / "bad", [*overrides, "eval.also={'a/b': {}}"])


def test_run_versions_read_without_importing_peft():
    """run.json's versions come from package metadata for modules not imported yet: reading peft's
    version must not import peft (and transformers' models with it), seconds of every run's start."""
    import subprocess
    import sys

    code = (
        "import json, sys; from agentrl.trainers.loop import _versions; v = _versions(); "
        "print(json.dumps([v, 'peft' in sys.modules]))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    ).stdout
    versions, imported = json.loads(out.strip().splitlines()[-1])
    import peft
    import transformers

    assert not imported
    assert versions["peft"] == peft.__version__ and versions["transformers"] == transformers.__version__
    assert versions["torch"] == str(torch.__version__) and versions["agentrl"] == agentrl.__version__
