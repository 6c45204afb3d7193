"""`agentrl sft` (the SFT warm start alone) and the experts behind it, one per env with an oracle.

Each expert test plays the expert through ``expert_demonstrations``, parses every response with
the rollout's parser, replays the parsed actions on a fresh env and checks they are accepted and
win; one test runs ``rollout`` with a policy that answers the demonstrations' responses, to check
the demonstrations' prompts are exactly the rollout's.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from agentrl.agents import ChatPrompt, StepPrompt, parse_response
from agentrl.cli import app
from agentrl.config import load_config
from agentrl.envs import make
from agentrl.policies import SamplingParams
from agentrl.policies.base import Generation
from agentrl.policies.hf import HFPolicy
from agentrl.rollout import rollout
from agentrl.trainers.experts import EXPERTS, get_expert
from agentrl.trainers.sft import Demonstration, expert_demonstrations, expert_env, render_response

runner = CliRunner(env={"COLUMNS": "400"})

TINY_SFT = {
    "seed": 0,
    "model": {
        "path": None,
        "device": "cpu",
        "torch_threads": 1,
        "gradient_checkpointing": True,  # 1 thread: faster on 2 busy cores
        "tiny": {"vocab_size": 320, "layers": 1, "hidden": 32, "heads": 2, "kv_heads": 1, "corpus_tasks": 6},
    },
    "env": {
        "name": "maze",
        "kwargs": {"size": 2, "n_doors": 1, "max_steps": 6, "num_tasks": 40},
        "num_envs": 1,
    },
    "rollout": {"history_k": 1, "system_prompt": "Reach the goal room."},
    "sft": {
        "enabled": False,
        "tasks": {"start": 0, "count": 8},
        "epochs": 1,
        "lr": 0.003,
        "batch_size": 4,
        "full_finetune": False,
    },
    "logging": {"tensorboard": False},
}


@pytest.fixture()
def tiny_config(tmp_path: Path) -> Iterator[Path]:
    """The config file; torch's thread count (which model.torch_threads sets) is restored afterwards."""
    threads = torch.get_num_threads()
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(TINY_SFT))
    yield path
    torch.set_num_threads(threads)


@pytest.mark.slow  # ~10 s: most of it builds the tiny model (tokenizer training, Qwen2 init)
def test_sft_command_writes_the_run_dir_and_a_loadable_model(tiny_config: Path, tmp_path: Path) -> None:
    """A LoRA warm start (merged into sft-model) with gradient checkpointing, from a config with sft.enabled: false."""
    out = tmp_path / "run"
    result = runner.invoke(app, ["sft", str(tiny_config), "--out", str(out), "sft.lr=0.005"])
    assert result.exit_code == 0, result.output
    model_dir = out / "sft-model"
    assert f"sft model: {model_dir}" in result.stdout
    assert "sft.enabled: false; running the warm start anyway" in result.stderr
    assert "expert steps from 8 tasks (8 won by the expert)" in result.stderr
    assert "sft epoch 1/1: loss " in result.stderr
    cfg = load_config(out / "config.yaml")
    assert cfg.sft.lr == 0.005 and cfg.out_dir == str(out) and cfg.env.name == "maze"
    assert json.loads((out / "run.json").read_text())["seed"] == 0
    lines = [json.loads(x) for x in (out / "sft_metrics.jsonl").read_text().splitlines()]
    assert [x["sft_epoch"] for x in lines] == [0.0] and lines[0]["sft_loss"] > 0
    stats = json.loads((model_dir / "sft_stats.json").read_text())
    assert stats["sft_samples"] >= 8 and stats["sft_steps"] == -(-stats["sft_samples"] // 4)
    assert stats["sft_loss_last"] < stats["sft_loss_first"]
    assert not (model_dir / "adapter_config.json").exists()  # merged: a plain model directory
    twice = runner.invoke(
        app, ["sft", str(tiny_config), "--out", str(tmp_path / "twice"), "sft.episodes_per_task=2"]
    )
    assert twice.exit_code == 0, twice.output
    assert "from 8 tasks (8 won by the expert, 2 expert episodes each)" in twice.stderr
    again = json.loads((tmp_path / "twice" / "sft-model" / "sft_stats.json").read_text())
    assert again["sft_samples"] == 2 * stats["sft_samples"]  # the maze's expert: one plan per task
    from safetensors.torch import load_file

    base, tuned = (
        load_file(out / "tiny-model" / "model.safetensors"),
        load_file(model_dir / "model.safetensors"),
    )
    assert set(base) == set(tuned) and any(not torch.equal(base[k], tuned[k]) for k in base)
    policy = HFPolicy.from_pretrained(model_dir, device="cpu")
    env = make("maze", size=2, n_doors=1, max_steps=6, num_tasks=40)
    obs, info = env.reset(seed=0, options={"task_id": "maze-0"})
    messages = StepPrompt(history_k=1, system_prompt="Reach the goal room.").build(
        "", obs, [], info["admissible_actions"]
    )
    gen = policy.generate([messages], SamplingParams(temperature=0, max_new_tokens=6))[0]
    assert len(gen.response_ids) >= 1 and len(gen.logprobs) == len(gen.response_ids)
    # the same command again reuses the model; another config for that run dir is refused
    again = runner.invoke(app, ["sft", str(tiny_config), "--out", str(out), "sft.lr=0.005"])
    assert again.exit_code == 0 and "exists; reusing it" in again.stderr
    other = runner.invoke(app, ["sft", str(tiny_config), "--out", str(out), "sft.lr=0.01"])
    assert other.exit_code == 2 and "error:" in other.stderr and "sections differ: sft" in other.stderr


def test_sft_command_refuses_a_bad_override_or_an_env_without_expert(
    tiny_config: Path, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["sft", str(tiny_config), "--out", str(tmp_path / "r1"), "sft.epochz=2"])
    assert result.exit_code == 2 and "error: unknown key 'sft.epochz'" in result.stderr
    assert not (tmp_path / "r1").exists()
    no_expert = runner.invoke(
        app, ["sft", str(tiny_config), "--out", str(tmp_path / "r2"), "env.name=remote"]
    )
    assert (
        no_expert.exit_code == 2
        and "error: env 'remote' has no expert for SFT demonstrations" in no_expert.stderr
    )
    assert not (tmp_path / "r2").exists()
    with pytest.raises(
        ValueError, match="env 'remote' has no expert.*alfworld, bfcl, maze, search, tools, webshop"
    ):
        get_expert("remote")
    missing = runner.invoke(app, ["sft", str(tmp_path / "nope.yaml")])
    assert missing.exit_code != 0 and "does not exist" in missing.output


# ----------------------------------------------------------------------------- experts


def replay_demos(
    env_name: str, env_kwargs: dict, demos: list[Demonstration], fmt: str, seed: int = 0
) -> dict[str, float]:
    """Parse every response and play the parsed actions on a fresh env; returns each task's return.

    Fails when a response does not parse, the env rejects an action, or an episode's demos stop early.
    """
    env = make(env_name, **env_kwargs)
    by_task: dict[str, list[Demonstration]] = defaultdict(list)
    for d in demos:
        by_task[d.task_id].append(d)
    returns = {}
    for n, (task_id, steps) in enumerate(by_task.items()):
        assert [d.turn for d in steps] == list(range(len(steps)))
        env.reset(seed=seed + n, options={"task_id": task_id})
        total, done = 0.0, False
        for d in steps:
            assert not done, f"{task_id}: demos go on after the episode ended"
            parsed = parse_response(d.response, fmt)
            assert parsed.valid, (d.response, parsed.reason)
            _, reward, terminated, truncated, info = env.step(parsed.action)
            assert info["valid"], (task_id, d.turn, parsed.action)
            total, done = total + reward, terminated or truncated
        assert done and info["success"] and all(d.success for d in steps)
        returns[task_id] = total
    env.close()
    return returns


def test_maze_expert_actions_are_admissible_and_win() -> None:
    kwargs = {"size": 3, "n_doors": 2, "num_tasks": 20}
    tasks = [f"maze-{i}" for i in range(10)]
    for fmt in ("think_action", "hiper"):
        demos = expert_demonstrations(
            "maze", make("maze", **kwargs), tasks, StepPrompt(history_k=2, response_format=fmt)
        )
        assert replay_demos("maze", kwargs, demos, fmt) == dict.fromkeys(tasks, 1.0)
        for d in demos:
            assert f"[{parse_response(d.response, fmt).action}]" in d.messages[-1]["content"]
    assert (
        demos[0].response
        == "<switch>SWITCH</switch><subgoal>reach the goal</subgoal><action>"
        + parse_response(demos[0].response, "hiper").action
        + "</action>"
    )
    assert "Current subgoal: None" in demos[0].messages[1]["content"]
    assert "Current subgoal: reach the goal" in demos[1].messages[1]["content"]


def test_webshop_oracle_demos_buy_the_goal() -> None:
    kwargs = {"split": "train"}
    env = expert_env("webshop", kwargs)
    tasks = list(env.task_ids())[:5]
    demos = expert_demonstrations("webshop", env, tasks, StepPrompt(history_k=2), seed=0)
    assert replay_demos("webshop", kwargs, demos, "think_action") == dict.fromkeys(tasks, 1.0)
    assert (
        demos[0].response.startswith("<action>search[")
        and demos[-1].response == "<action>click[buy now]</action>"
    )


def test_search_oracle_demos_think_then_search_and_answer() -> None:
    kwargs = {"split": "train", "num_docs": 2000, "num_train": 50, "num_test": 10}
    env = expert_env("search", kwargs)
    tasks = list(env.task_ids())[:6]
    for fmt in ("think_action", "tool_call"):
        demos = expert_demonstrations(
            "search", env, tasks, StepPrompt(history_k=2, response_format=fmt), seed=0
        )
        assert replay_demos("search", kwargs, demos, fmt) == dict.fromkeys(tasks, 1.0)
    think = expert_demonstrations("search", env, tasks[:1], StepPrompt(response_format="think_action"))
    assert (
        think[0].response.startswith("<think>I need to find out: ")
        and "<action><search>" in think[0].response
    )
    assert parse_response(think[-1].response, "think_action").action.startswith("<answer>")


def test_tools_expert_demos_are_tool_calls_that_solve_the_task() -> None:
    kwargs = {"suite": "all", "split": "train", "num_tasks": 3}
    env = expert_env("tools", kwargs)
    tasks = list(env.task_ids())
    demos = expert_demonstrations(
        "tools", env, tasks, StepPrompt(history_k=2, response_format="tool_call"), seed=0
    )
    assert replay_demos("tools", kwargs, demos, "tool_call") == dict.fromkeys(tasks, 1.0)
    calls = [parse_response(d.response, "tool_call") for d in demos]
    assert sum(bool(c.tool_calls) for c in calls) >= len(tasks)  # every task calls a tool before answering
    first = next(c for c in calls if c.tool_calls)
    assert first.text.startswith("<tool_call>{") and first.action.startswith('[{"arguments": ')
    # the history shows the parsed (canonical JSON) action, as rollout does
    second = next(d for d in demos if d.turn == 1)
    assert '[Action 1] [{"arguments": ' in second.messages[1]["content"]


def test_bfcl_ground_truth_demos_pass_every_turn() -> None:
    kwargs = {"category": "multi_turn_base"}
    env = expert_env("bfcl", kwargs)
    tasks = list(env.task_ids())[:3]
    demos = expert_demonstrations(
        "bfcl", env, tasks, StepPrompt(history_k=2, response_format="tool_call"), seed=0
    )
    assert replay_demos("bfcl", kwargs, demos, "tool_call") == dict.fromkeys(tasks, 1.0)
    assert any(parse_response(d.response, "tool_call").tool_calls for d in demos)


@pytest.mark.slow  # generating and validating one game takes most of it
def test_alfworld_handcoded_expert_demos_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentrl.envs.alfworld import generate_games

    monkeypatch.setenv("AGENTRL_CACHE", str(tmp_path / "cache"))
    generate_games(
        tmp_path / "games",
        per_type=1,
        splits=["train"],
        progress=False,
        task_types=["pick_and_place_simple"],
        workers=1,
    )
    kwargs = {"split": "train", "data_dir": str(tmp_path / "games")}
    plain = make("alfworld", **kwargs)
    assert expert_env("alfworld", kwargs, plain) is not plain  # the expert needs expert=True
    with pytest.raises(ValueError, match="expert=True"):
        expert_demonstrations("alfworld", plain, plain.task_ids()[:1], StepPrompt())
    env = expert_env("alfworld", kwargs)
    assert expert_env("alfworld", {**kwargs, "expert": True}, env) is env
    tasks = env.task_ids()
    demos = expert_demonstrations(
        "alfworld", env, tasks, StepPrompt(history_k=2, response_format="hiper"), seed=0
    )
    assert replay_demos("alfworld", kwargs, demos, "hiper") == dict.fromkeys(tasks, 1.0)
    assert (
        demos[0].response
        == "<switch>SWITCH</switch><subgoal>complete the task</subgoal><action>look</action>"
    )
    for d in demos:
        assert f"[{parse_response(d.response, 'hiper').action}]" in d.messages[-1]["content"]


# ----------------------------------------------------------------------------- prompts equal rollout's


class DemoPolicy:
    """Answers each prompt with the demonstration made for that exact prompt (a KeyError otherwise)."""

    def __init__(self, demos: list[Demonstration]) -> None:
        self.answers = {json.dumps(d.messages, sort_keys=True): d.response for d in demos}
        self.seen = 0

    def generate(self, prompts, params):
        self.seen += len(prompts)
        return [
            Generation([0], [1], [0.0], self.answers[json.dumps(p, sort_keys=True)], "stop") for p in prompts
        ]

    def prompt_ids(self, messages):
        return [0]


@pytest.mark.parametrize(
    ("env_name", "kwargs", "builder"),
    [
        (
            "tools",
            {"suite": "store", "split": "train", "num_tasks": 3},
            StepPrompt(history_k=2, response_format="tool_call"),
        ),
        ("maze", {"size": 3, "num_tasks": 10}, StepPrompt(history_k=1, response_format="hiper")),
        ("maze", {"size": 3, "num_tasks": 10}, StepPrompt(history_k=2)),
        ("maze", {"size": 3, "num_tasks": 10}, ChatPrompt(response_format="hiper")),
        ("search", {"split": "train", "num_docs": 2000, "num_train": 50, "num_test": 10}, ChatPrompt()),
        (
            "tools",
            {"suite": "calculator", "split": "train", "num_tasks": 3},
            ChatPrompt(response_format="tool_call"),
        ),
        ("bfcl", {"category": "multi_turn_miss_func"}, StepPrompt(history_k=2, response_format="tool_call")),
    ],
)
def test_demonstration_prompts_are_the_rollout_prompts(env_name: str, kwargs: dict, builder) -> None:
    env = expert_env(env_name, kwargs)
    tasks = list(env.task_ids())[:3]
    demos = expert_demonstrations(env_name, env, tasks, builder, seed=0)
    if env_name in (
        "tools",
        "bfcl",
    ):  # tool envs: every prompt lists the schemas the env gave at reset (or since)
        assert all('\nAvailable tools:\n{"function": ' in d.messages[0]["content"] for d in demos)
    if env_name == "bfcl":  # functions withheld at reset are listed from the turn that adds them
        listed = {d.messages[0]["content"].count('\n{"function": ') for d in demos if d.task_id == tasks[0]}
        assert len(listed) == 2
    policy = DemoPolicy(demos)
    groups = rollout(
        policy,
        [make(env_name, **kwargs)],
        tasks,
        1,
        max_turns=50,
        params=SamplingParams(),
        builder=builder,
        seeds=[0, 1, 2],
    )
    trajs = [t for g in groups for t in g]
    assert all(t.success and "error" not in t.info for t in trajs)
    assert policy.seen == len(demos) == sum(len(t.steps) for t in trajs)


def test_render_response_formats() -> None:
    assert render_response("go north", "think_action", 0) == "<action>go north</action>"
    assert render_response("x", "think_action", 3, think="why") == "<think>why</think><action>x</action>"
    assert (
        render_response("go", "hiper", 1, "find key")
        == "<switch>KEEP</switch><subgoal>find key</subgoal><action>go</action>"
    )
    assert (
        render_response('<tool_call>{"name": "f"}</tool_call>', "tool_call", 0)
        == '<tool_call>{"name": "f"}</tool_call>'
    )
    with pytest.raises(ValueError, match="no expert rendering for response format 'xml'"):
        render_response("go", "xml", 0)
    assert set(EXPERTS.names()) == {
        "maze",
        "alfworld",
        "webshop",
        "webshop-browser",
        "search",
        "tools",
        "bfcl",
    }


def test_lr_schedules_warm_up_then_hold_or_decay() -> None:
    from agentrl.trainers.sft import lr_factor

    constant, cosine = lr_factor("constant", 100, 0.1), lr_factor("cosine", 100, 0.1)
    assert [round(constant(s), 4) for s in (0, 4, 10, 99)] == [round(1 / 11, 4), round(5 / 11, 4), 1.0, 1.0]
    assert (
        cosine(10) == 1.0
        and cosine(55) == pytest.approx(0.5)
        and cosine(99) == pytest.approx(0.0003, abs=1e-3)
    )
    assert all(cosine(s) >= cosine(s + 1) for s in range(10, 99))  # decays monotonically after the warm-up
    assert lr_factor("constant", 10)(0) == 1.0  # no warm-up by default
    with pytest.raises(ValueError, match="unknown lr schedule 'linear'; allowed: constant, cosine"):
        lr_factor("linear", 10)


def test_sft_with_a_cosine_schedule_ends_at_a_zero_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Callable[..., Path]
) -> None:
    """The optimiser's steps follow the schedule: warm-up below the peak, the peak, almost 0 at the end."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentrl.trainers.sft import sft_train

    kwargs = {"size": 2, "n_doors": 1, "max_steps": 6, "num_tasks": 40}
    builder = StepPrompt(history_k=1, system_prompt="Reach the goal room.")
    demos = expert_demonstrations(
        "maze", expert_env("maze", kwargs), [f"maze-{i}" for i in range(4)], builder, seed=0
    )
    model_dir = tiny_model(
        maze=kwargs, tasks=2, steps_per_task=10, vocab_size=320, layers=1, hidden=32, heads=2, kv_heads=1
    )
    model, tokenizer = (
        AutoModelForCausalLM.from_pretrained(model_dir),
        AutoTokenizer.from_pretrained(model_dir),
    )
    rates: list[float] = []
    step = torch.optim.AdamW.step

    def recording_step(self: torch.optim.AdamW, *args: object, **kw: object) -> object:
        rates.append(self.param_groups[0]["lr"])
        return step(self, *args, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    sft_train(
        model,
        tokenizer,
        demos,
        epochs=2,
        lr=0.01,
        batch_size=4,
        seed=0,
        lr_schedule="cosine",
        warmup_ratio=0.25,
    )
    assert len(rates) == 2 * -(-len(demos) // 4)
    assert rates[0] < 0.01 and max(rates) == pytest.approx(0.01) and rates[-1] < 0.001


def _optimizer_grads(
    train: Callable[[], dict[str, float]],
) -> tuple[list[list[torch.Tensor]], dict[str, float]]:
    """The gradients each AdamW step sees (after clipping) while ``train`` runs, and its stats."""
    grads: list[list[torch.Tensor]] = []
    step = torch.optim.AdamW.step

    def recording_step(self: torch.optim.AdamW, *args: object, **kw: object) -> object:
        grads.append([q.grad.clone() for q in self.param_groups[0]["params"]])
        return step(self, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", recording_step)
        return grads, train()


def test_prompt_loss_weight_adds_the_prompt_tokens_to_the_loss(tiny_model: Callable[..., Path]) -> None:
    """The first step's gradient is that of the weighted mean NLL computed by hand from the logits:
    response tokens weigh 1, prompt tokens w (not a row's first, which nothing predicts); the
    logged loss stays the response tokens' mean."""
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentrl.agents import render_chat
    from agentrl.trainers.sft import Demonstration, sft_train

    kwargs = {"size": 2, "n_doors": 1, "max_steps": 6, "num_tasks": 40}
    model_dir = tiny_model(
        maze=kwargs, tasks=2, steps_per_task=10, vocab_size=320, layers=1, hidden=32, heads=2, kv_heads=1
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    demos = [
        Demonstration(
            [{"role": "user", "content": "You are in the hall. Exits: north."}], "<action>go north</action>"
        ),
        Demonstration([{"role": "user", "content": "You see: red key."}], "<action>take red key</action>"),
    ]
    w = 0.3
    hand_model = copy.deepcopy(model)
    weighted, total_weight, resp_nll, n_resp = torch.zeros(()), 0.0, 0.0, 0
    for d in demos:
        p = tokenizer(
            render_chat(tokenizer, d.messages, add_generation_prompt=True), add_special_tokens=False
        )["input_ids"]
        r = tokenizer(d.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([p + r])
        nll_T = -hand_model(ids).logits[0, :-1].log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]
        weight_T = torch.tensor([w] * (len(p) - 1) + [1.0] * len(r))
        weighted = weighted + (nll_T * weight_T).sum()
        total_weight += float(weight_T.sum())
        resp_nll += float(nll_T[len(p) - 1 :].detach().sum())
        n_resp += len(r)
    (weighted / total_weight).backward()
    params = [p for p in hand_model.parameters() if p.requires_grad]
    norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
    grads, stats = _optimizer_grads(
        lambda: sft_train(
            model, tokenizer, demos, epochs=1, lr=1e-3, batch_size=2, seed=0, prompt_loss_weight=w
        )
    )
    assert norm > 0 and len(grads) == 1
    for mine, hand in zip(grads[0], params):
        torch.testing.assert_close(mine, hand.grad, rtol=1e-4, atol=1e-6)
    assert stats["sft_loss_first"] == pytest.approx(resp_nll / n_resp, rel=1e-5)
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="prompt_loss_weight must be a finite number >= 0"):
            sft_train(
                model, tokenizer, demos, epochs=1, lr=1e-3, batch_size=2, seed=0, prompt_loss_weight=bad
            )


def test_choice_weight_adds_the_experts_cross_entropy_among_the_admissible_actions(
    tiny_model: Callable[..., Path],
) -> None:
    """The first step's gradient is that of token NLL / n_tokens + c * choice CE / n_choice computed
    by hand, each prompt + candidate scored as a sequence of its own: the expert's answer against
    the other admissible ones (summed log-probs, no end-of-turn token), as the choosing policy scores
    them. A demonstration whose response is not a candidate keeps the token loss alone."""
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentrl.agents import render_chat
    from agentrl.trainers.sft import Demonstration, sft_train

    kwargs = {"size": 2, "n_doors": 1, "max_steps": 6, "num_tasks": 40}
    model_dir = tiny_model(
        maze=kwargs, tasks=2, steps_per_task=10, vocab_size=320, layers=1, hidden=32, heads=2, kv_heads=1
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    go = ["<action>go north</action>", "<action>go south</action>", "<action>take red key</action>"]
    demos = [
        Demonstration([{"role": "user", "content": "Exits: north, south."}], go[0], candidates=go),
        Demonstration([{"role": "user", "content": "You see: red key."}], go[2], candidates=go[1:]),
        Demonstration(
            [{"role": "user", "content": "A wall."}],
            "<think>hm</think><action>go north</action>",
            candidates=go,
        ),
    ]
    c = 0.7
    hand_model = copy.deepcopy(model)

    def seq_logprobs(p: list[int], r: list[int]) -> torch.Tensor:
        ids = torch.tensor([p + r])
        return (
            hand_model(ids).logits[0, len(p) - 1 : -1].log_softmax(-1).gather(1, ids[0, len(p) :, None])[:, 0]
        )

    nll, ce, n_tokens, n_choice, token_nll = torch.zeros(()), torch.zeros(()), 0, 0, 0.0
    eos = tokenizer.eos_token_id
    for d in demos:
        p = tokenizer(
            render_chat(tokenizer, d.messages, add_generation_prompt=True), add_special_tokens=False
        )["input_ids"]
        r = tokenizer(d.response, add_special_tokens=False)["input_ids"]
        lp = seq_logprobs(p, r + [eos])
        nll = nll - lp.sum()
        token_nll += float(-lp.detach().sum())
        n_tokens += len(r) + 1
        if d.response in d.candidates:
            seq = torch.stack(
                [
                    seq_logprobs(p, tokenizer(x, add_special_tokens=False)["input_ids"]).sum()
                    for x in d.candidates
                ]
            )
            ce = ce - seq.log_softmax(0)[d.candidates.index(d.response)]
            n_choice += 1
    assert n_choice == 2
    (nll / n_tokens + c * ce / n_choice).backward()
    params = [p for p in hand_model.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    grads, stats = _optimizer_grads(
        lambda: sft_train(model, tokenizer, demos, epochs=1, lr=1e-3, batch_size=3, seed=0, choice_weight=c)
    )
    assert len(grads) == 1
    for mine, hand in zip(grads[0], params):
        torch.testing.assert_close(mine, hand.grad, rtol=1e-4, atol=1e-6)
    assert stats["sft_loss_first"] == pytest.approx(token_nll / n_tokens, rel=1e-5)
    assert stats["sft_choice_loss_first"] == pytest.approx(float(ce.detach()) / n_choice, rel=1e-5)
    with pytest.raises(ValueError, match="choice_weight must be a finite number >= 0"):
        sft_train(model, tokenizer, demos, epochs=1, lr=1e-3, batch_size=3, seed=0, choice_weight=-1.0)
    with pytest.raises(ValueError, match="cannot both be > 0"):
        sft_train(
            model,
            tokenizer,
            demos,
            epochs=1,
            lr=1e-3,
            batch_size=3,
            seed=0,
            choice_weight=c,
            prompt_loss_weight=1,
        )


def test_webshop_demonstrations_carry_the_admissible_actions_rendered_as_rollout_renders_them() -> None:
    """The candidates of each expert step are what rollout.action_choice: admissible scores there,
    with the expert's own response among them (the instruction search included)."""
    from agentrl.agents import get_format
    from agentrl.agents.formats import ExpertAnswer

    env = make("webshop", split="train", max_steps=10)
    builder = StepPrompt(history_k=0, response_format="think_action")
    demos = expert_demonstrations("webshop", env, env.task_ids()[:3], builder, seed=0)
    render = get_format("think_action").render
    _obs, info = env.reset(seed=0, options={"task_id": env.task_ids()[0]})
    first = demos[0]
    assert first.candidates == [render(ExpertAnswer(action=a, turn=0)) for a in info["admissible_actions"]]
    assert all(d.response in d.candidates for d in demos)
    assert max(len(d.candidates) for d in demos) > 5  # a product page lists every option
