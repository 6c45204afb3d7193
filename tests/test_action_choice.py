"""Picking among admissible actions (``rollout(action_choice="admissible")``, ``HFPolicy.choose``)."""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.agents import StepPrompt
from agentrl.envs import make
from agentrl.policies.base import SamplingParams
from agentrl.policies.choice import pick, score_candidates
from agentrl.policies.hf import HFPolicy, LoraSettings
from agentrl.policies.logprobs import pack_samples
from agentrl.rollout import rollout


@pytest.fixture(scope="module")
def policy(served_model_dir):
    torch.manual_seed(0)
    p = HFPolicy.from_pretrained(served_model_dir, lora=LoraSettings(r=2, alpha=4), device="cpu")
    for name, w in p.model.named_parameters():  # a non-zero adapter, so the merged sampling copy matters
        if "lora_B" in name:
            torch.nn.init.normal_(w, std=0.05)
    p.weights_changed()
    return p


def _full_scores(policy: HFPolicy, prompt: list[int], cand: list[int], temperature: float) -> list[float]:
    """Reference: score prompt + candidate as one sequence, alone."""
    batch = pack_samples([prompt], [cand], pad_token_id=policy.pad_token_id)
    with torch.no_grad():
        lp = policy.logprobs(
            batch.input_ids, batch.attention_mask, batch.response_mask, temperature=temperature
        )
    return lp.logprobs[0][batch.response_mask[0]].tolist()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_cached_scores_equal_scoring_each_sequence_alone(policy, temperature):
    tok = policy.tokenizer
    prompts = [
        policy.prompt_ids([{"role": "user", "content": t}]) for t in ("go north", "Exits: east, west. Task")
    ]
    cands = [
        [tok("<action>go north</action>")["input_ids"], tok("<action>go east</action>")["input_ids"]],
        [
            tok("<action>x</action>")["input_ids"],
            tok("a")["input_ids"],
            tok("<action>go west</action>")["input_ids"],
        ],
    ]
    # max_rows 2 splits the prompts into two groups (2 and 3 candidates; the second alone exceeds it)
    for max_rows in (2, 16):
        scores = score_candidates(
            policy.model,
            prompts,
            cands,
            pad_token_id=policy.pad_token_id,
            temperature=temperature,
            max_rows=max_rows,
        )
        for i, p in enumerate(prompts):
            for j, c in enumerate(cands[i]):
                ref = _full_scores(policy, p, c, temperature)
                got = scores.token_logprobs[i][j]
                assert len(got) == len(c)
                assert got == pytest.approx(ref, abs=1e-4)


def test_pick_follows_the_set_distribution_and_greedy_takes_the_best():
    seq = torch.tensor([math.log(0.2), math.log(0.05), math.log(0.15)], dtype=torch.float64)  # sums to 0.4
    assert pick(seq, 0.0, None) == (0, pytest.approx(math.log(0.5)))
    g = torch.Generator().manual_seed(0)
    counts = [0, 0, 0]
    for _ in range(4000):
        counts[pick(seq, 1.0, g)[0]] += 1
    # set probabilities 0.5, 0.125, 0.375; 4000 draws: sd of a share <= 0.008
    assert [c / 4000 for c in counts] == pytest.approx([0.5, 0.125, 0.375], abs=0.03)


def test_choose_returns_a_candidate_with_its_token_logprobs_and_is_seeded(policy):
    msgs = [[{"role": "user", "content": "Exits: north, south."}]] * 3
    cands = [["<action>go north</action>", "<action>go south</action>"]] * 3
    params = SamplingParams(temperature=1.0, seed=7)
    a = policy.choose(msgs, cands, params)
    assert [g.text for g in a] == [g.text for g in policy.choose(msgs, cands, params)]
    for g in a:
        assert g.text in cands[0] and g.finish_reason == "stop"
        assert g.response_ids == policy.tokenizer(g.text, add_special_tokens=False)["input_ids"]
        assert len(g.logprobs) == len(g.response_ids)
        assert g.info["choices"] == 2 and cands[0][g.info["choice"]] == g.text
        assert g.info["choice_logprob"] <= 0
        ref = _full_scores(policy, g.prompt_ids, g.response_ids, 1.0)
        assert g.logprobs == pytest.approx(ref, abs=1e-4)
    with pytest.raises(ValueError, match="non-empty"):
        policy.choose(msgs[:1], [["<action>a</action>", ""]], params)
    with pytest.raises(ValueError, match="one candidate list per prompt"):
        policy.choose(msgs, cands[:1], params)


def _choice_rollout(policy):
    envs = [make("maze", size=3, num_tasks=8) for _ in range(2)]
    return rollout(
        policy,
        envs,
        ["maze-0", "maze-1"],
        3,
        max_turns=6,
        params=SamplingParams(temperature=1.0, max_new_tokens=8, seed=3),
        builder=StepPrompt(history_k=0),
        action_choice="admissible",
    )


def test_rollout_with_admissible_choice_takes_only_admissible_actions(policy):
    steps = [s for g in _choice_rollout(policy) for t in g for s in t.steps]
    assert steps and all(s.valid for s in steps)
    for s in steps:
        assert "choice" in s.info and 0 <= s.info["choice"] < s.info["choices"]
        assert s.response == f"<action>{s.action}</action>"
        assert len(s.response_logprobs) == len(s.response_ids)
    # the same seed gives the same episodes
    assert [s.action for g in _choice_rollout(policy) for t in g for s in t.steps] == [
        s.action for s in steps
    ]


def test_action_choice_refuses_what_it_cannot_do(policy):
    env = make("maze", size=2, num_tasks=2)
    params = SamplingParams(max_new_tokens=8)
    with pytest.raises(ValueError, match="action_choice must be one of"):
        rollout(policy, [env], ["maze-0"], 1, max_turns=2, params=params, action_choice="pick")
    with pytest.raises(ValueError, match="response format"):
        rollout(
            policy,
            [env],
            ["maze-0"],
            1,
            max_turns=2,
            params=SamplingParams(max_new_tokens=32),
            builder=StepPrompt(response_format="hiper"),
            action_choice="admissible",
        )

    class WritesOnly:
        def generate(self, prompts, params):
            return policy.generate(prompts, params)

        def prompt_ids(self, messages):
            return policy.prompt_ids(messages)

    with pytest.raises(ValueError, match="has no choose"):
        rollout(WritesOnly(), [env], ["maze-0"], 1, max_turns=2, params=params, action_choice="admissible")


def test_training_and_its_evaluation_pick_admissible_actions(small_maze_model_dir, tmp_path):
    """Two iterations with action_choice admissible: every trained and evaluated step is a valid
    admissible action, and the run's evaluation spec carries the setting (agentrl eval reuses it)."""
    import json

    from agentrl.config import load_config
    from agentrl.trainers import train
    from tests.test_trainer import tiny_run

    overrides = tiny_run(
        small_maze_model_dir,
        **{
            "rollout.action_choice": "admissible",
            "eval.enabled": "true",
            "eval.tasks.start": 40,
            "eval.tasks.count": 4,
            "logging.save_trajectories": "true",
        },
    )
    out = train(None, tmp_path / "run", overrides)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["invalid_rate"] == 0 for r in records)
    steps = [
        s
        for f in sorted((out / "trajectories").glob("iter-*.jsonl"))
        for line in f.read_text().splitlines()
        for s in json.loads(line)["steps"]
    ]
    assert steps and all("choice" in s["info"] for s in steps)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["after"]["invalid_rate"] == 0
    assert load_config(out / "config.yaml", []).eval_spec().action_choice == "admissible"


def test_action_choice_config_is_checked():
    from agentrl.config import load_config

    with pytest.raises(ValueError, match="action_choice"):
        load_config(None, ["rollout.action_choice=pick"])
    with pytest.raises(ValueError, match="response format"):
        load_config(
            None,
            [
                "rollout.action_choice=admissible",
                "rollout.response_format=hiper",
                "algorithm.estimator=hiper",
            ],
        )
    with pytest.raises(ValueError, match="in-process hf policy"):
        load_config(None, ["rollout.action_choice=admissible", "rollout.server.url=http://127.0.0.1:9/v1"])
    assert load_config(None, ["rollout.action_choice=admissible"]).eval_spec().action_choice == "admissible"


def test_prompts_can_leave_the_admissible_actions_out():
    from agentrl.agents import PromptSettings
    from agentrl.config import load_config

    env = make("maze", size=2, num_tasks=2)
    obs, info = env.reset(seed=0, options={"task_id": "maze-0"})
    actions = info["admissible_actions"]
    for show in (True, False):
        step = PromptSettings(kind="step", show_admissible=show).builder()
        chat = PromptSettings(kind="chat", show_admissible=show).builder()
        for messages in (step.build("", obs, [], actions), chat.build("", [obs], [], actions)):
            assert ("Admissible actions" in str(messages)) is show
    cfg = load_config(None, ["rollout.show_admissible=false"])
    assert cfg.eval_spec().prompt.show_admissible is False
