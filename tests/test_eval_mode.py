"""Evaluation-only mode: scripted and model policies, report.json numbers, errors."""

import json
import math

import pytest
from typer.testing import CliRunner

from agentrl.cli import app
from agentrl.eval.evaluate import EvalConfig, evaluate
from agentrl.evaluation import EvalSpec
from agentrl.types import read_trajectories

runner = CliRunner(env={"COLUMNS": "400"})
Z = 1.959963984540054


def wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return centre - half, centre + half


def test_random_policy_report_matches_its_episodes(tmp_path):
    result = runner.invoke(
        app,
        [
            "eval",
            "--env",
            "maze",
            "--policy",
            "random",
            "--episodes",
            "25",
            "--seeds",
            "2",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    episodes = read_trajectories(tmp_path / "eval" / "episodes.jsonl")
    assert report["episodes"] == len(episodes) == 50
    wins = sum(t.success for t in episodes)
    assert report["success_rate"] == wins / 50
    low, high = wilson_by_hand(wins, 50)
    assert (report["ci_low"], report["ci_high"]) == pytest.approx((low, high))
    assert set(report["per_seed"]) == {"0", "1"}
    assert report["per_seed"]["0"] == sum(t.success for t in episodes[:25]) / 25
    assert report["turns_mean"] == pytest.approx(sum(len(t) for t in episodes) / 50)
    assert report["invalid_rate"] == 0.0 and report["per_type"]["maze"]["episodes"] == 50
    assert (tmp_path / "report.md").exists() and (tmp_path / "report.html").exists()
    assert "success" in result.output and "95% CI" in result.output


def test_expert_policy_solves_every_maze_even_with_slips(tmp_path):
    report = evaluate(
        EvalConfig(
            env="maze", policy="expert", spec=EvalSpec(task_count=20, seeds=2), env_kwargs={"slip": 0.2}
        ),
        tmp_path,
    )
    assert report["success_rate"] == 1.0 and report["ci_high"] == 1.0 and report["ci_low"] < 1.0


def test_same_config_same_report(tmp_path):
    cfg = EvalConfig(env="maze", policy="random", spec=EvalSpec(task_count=10, seeds=1))
    a = evaluate(cfg, tmp_path / "a")
    b = evaluate(cfg, tmp_path / "b")
    a.pop("seconds"), b.pop("seconds")
    assert a == b


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--env", "maze", "--policy", "nope"],
            "policy must be hf:PATH, vllm:PATH, openai:URL, random or expert",
        ),
        (["--env", "maze", "--policy", "openai:127.0.0.1:8000"], "needs an http(s) URL"),
        (["--env", "webshop", "--policy", "expert"], "has no step-wise expert"),
        (["--env", "nope", "--policy", "random"], "unknown env 'nope'"),
        (["--env", "maze", "--policy", "random", "--episodes", "0"], "must be >= 1"),
        (["--policy", "random"], "--env is needed"),
        (
            ["--env", "maze", "--policy", "hf:/nowhere", "--prompt", "tree"],
            "prompt kind must be 'step' or 'chat'",
        ),
    ],
)
def test_bad_input_fails_clearly(tmp_path, args, message):
    result = runner.invoke(app, ["eval", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output


def test_hf_policy_on_a_tiny_model(tmp_path, tiny_model):
    """A real (tiny, random-init) transformer plays the maze through the rollout path."""
    path = tiny_model(tasks=5, steps_per_task=10, formats=True, vocab_size=300)
    cfg = EvalConfig(
        env="maze",
        policy=f"hf:{path}",
        spec=EvalSpec(task_count=3, seeds=1, max_turns=2, max_new_tokens=8),
        num_envs=2,
    )
    report = evaluate(cfg, tmp_path / "run")
    episodes = read_trajectories(tmp_path / "run" / "eval" / "episodes.jsonl")
    assert report["episodes"] == 3 == len(episodes)
    assert all(1 <= len(t) <= 2 for t in episodes)
    assert all(s.response_ids for t in episodes for s in t.steps)
    assert 0.0 <= report["invalid_rate"] <= 1.0


def test_openai_policy_against_a_real_server_equals_the_hf_policy(tmp_path, tiny_model):
    """``--policy openai:URL`` through ``agentrl serve`` on 127.0.0.1 plays the same greedy episodes as hf:PATH."""
    from agentrl.policies.server import PolicyServer

    path = tiny_model(tasks=5, steps_per_task=10, formats=True, vocab_size=300)
    common = {
        "env": "maze",
        "spec": EvalSpec(task_count=3, seeds=1, max_turns=2, max_new_tokens=8),
        "num_envs": 2,
    }
    local = evaluate(EvalConfig(policy=f"hf:{path}", **common), tmp_path / "hf")
    with PolicyServer(path, served_model_name="tiny", device="cpu", batch_wait_s=0.01) as server:
        remote = evaluate(EvalConfig(policy=f"openai:{server.url}/v1", **common), tmp_path / "openai")
    by_id = {
        t.traj_id: [s.response for s in t.steps]
        for t in read_trajectories(tmp_path / "hf" / "eval" / "episodes.jsonl")
    }
    got = {
        t.traj_id: [s.response for s in t.steps]
        for t in read_trajectories(tmp_path / "openai" / "eval" / "episodes.jsonl")
    }
    assert got == by_id and len(got) == 3
    assert remote["success_rate"] == local["success_rate"] and remote["episodes"] == 3


def test_the_system_prompt_reaches_the_model(tmp_path, tiny_model):
    """``--system-prompt``: evaluation prompts can match training's ``rollout.system_prompt``."""
    path = tiny_model(tasks=5, steps_per_task=10, formats=True, vocab_size=300)
    result = runner.invoke(
        app,
        [
            "eval",
            "--env",
            "maze",
            "--policy",
            f"hf:{path}",
            "--episodes",
            "2",
            "--max-turns",
            "1",
            "--max-new-tokens",
            "4",
            "--system-prompt",
            "Reach the goal room.",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 0, result.output
    episodes = read_trajectories(tmp_path / "run" / "eval" / "episodes.jsonl")
    assert all(t.steps[0].prompt[0]["content"].startswith("Reach the goal room.") for t in episodes)


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """A short run trained and evaluated with chat prompts and a system prompt: a tiny model after
    SFT on 30 expert plans of a 2x2 maze without doors (test_bench_learning's recipe), sampled
    evaluation. Returns the run directory."""
    from agentrl.trainers import train

    overrides = {
        "seed": 0,
        "model.device": "cpu",
        "model.tiny": "{vocab_size: 320, layers: 1, hidden: 32, heads: 2, kv_heads: 1, corpus_tasks: 5}",
        "lora.r": 4,
        "lora.alpha": 8,
        "env.kwargs": "{size: 2, n_doors: 0, max_steps: 3, num_tasks: 60}",
        "env.train_tasks.count": 20,
        "env.num_envs": 3,
        "rollout.groups": 2,
        "rollout.group_size": 2,
        "rollout.max_turns": 3,
        "rollout.max_new_tokens": 6,
        "rollout.prompt": "chat",
        "rollout.system_prompt": "Go.",
        "sft.enabled": "true",
        "sft.tasks.count": 30,
        "sft.epochs": 6,
        "sft.lr": 0.01,
        "sft.batch_size": 8,
        "optim.iterations": 2,
        "optim.lr": 0.001,
        "logging.tensorboard": "false",
        "algorithm.minibatch_size": 8,
        "algorithm.micro_batch_size": 8,
        "eval.enabled": "true",
        "eval.tasks.start": 40,
        "eval.tasks.count": 8,
        "eval.episodes_per_task": 2,
        "eval.temperature": 1.0,
    }
    return train(None, tmp_path_factory.mktemp("chat") / "run", [f"{k}={v}" for k, v in overrides.items()])


def _played(path):
    return [
        (t.task_id, [s.response for s in t.steps], [s.prompt for s in t.steps], t.success)
        for t in read_trajectories(path)
    ]


def test_a_training_checkpoint_is_evaluated_as_the_run_evaluated_it(chat_run, tmp_path):
    """hf:RUN plays the run's held-out tasks with its seeds, chat prompts and system prompt: the
    same episodes (sampled at temperature 1, prompts included) and figures as the run's final
    evaluation, while the step prompts agentrl eval used to build play other episodes."""
    result = runner.invoke(app, ["eval", "--policy", f"hf:{chat_run}", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert f"with the settings of the training run {chat_run}" in result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    after = json.loads((chat_run / "summary.json").read_text())["after"]
    assert report["episodes"] == after["episodes"] == 16
    for key in ("success_rate", "ci_low", "ci_high", "reward_mean", "turns_mean", "invalid_rate", "per_type"):
        assert report[key] == after[key], key
    assert _played(tmp_path / "run" / "eval" / "episodes.jsonl") == _played(chat_run / "eval" / "after.jsonl")
    prompt = {
        "kind": "chat",
        "history_k": 2,
        "response_format": "think_action",
        "system_prompt": "Go.",
        "show_admissible": True,
    }
    assert report["settings"] == after["settings"] and report["settings"]["prompt"] == prompt
    adapter = chat_run / "checkpoints" / "iter-000002" / "adapter"
    assert report["run"] == str(chat_run) and report["adapter"] == str(adapter)
    assert report["policy"] == f"hf:{chat_run / 'sft-model'}"

    # the checkpoint's adapter directory, or the base model with --adapter, are the same run
    for n, args in enumerate(
        (
            ["--policy", f"hf:{adapter}"],
            ["--policy", f"hf:{chat_run / 'sft-model'}", "--adapter", str(adapter)],
        )
    ):
        result = runner.invoke(app, ["eval", *args, "--out", str(tmp_path / str(n))])
        assert result.exit_code == 0, result.output
        assert _played(tmp_path / str(n) / "eval" / "episodes.jsonl") == _played(
            chat_run / "eval" / "after.jsonl"
        )

    # step prompts (what agentrl eval built whatever the run used) make this policy play otherwise
    result = runner.invoke(
        app, ["eval", "--policy", f"hf:{chat_run}", "--prompt", "step", "--out", str(tmp_path / "s")]
    )
    assert result.exit_code == 0, result.output
    step = [
        (task, responses) for task, responses, _, _ in _played(tmp_path / "s" / "eval" / "episodes.jsonl")
    ]
    assert step != [(task, responses) for task, responses, _, _ in _played(chat_run / "eval" / "after.jsonl")]


def test_options_given_override_the_run_settings(chat_run, tmp_path):
    result = runner.invoke(
        app,
        [
            "eval",
            "--policy",
            f"hf:{chat_run}",
            "--prompt",
            "step",
            "--history-k",
            "1",
            "--episodes",
            "3",
            "--temperature",
            "0",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["prompt"] == {
        "kind": "step",
        "history_k": 1,
        "response_format": "think_action",
        "system_prompt": "Go.",
        "show_admissible": True,
    }
    assert report["episodes"] == 6 and report["settings"]["temperature"] == 0.0  # 3 tasks x 2 episodes
    episodes = read_trajectories(tmp_path / "eval" / "episodes.jsonl")
    assert sorted({t.task_id for t in episodes}) == ["maze-40", "maze-41", "maze-42"]
    assert all(len(s.prompt) == 2 for t in episodes for s in t.steps)  # step prompts: system + user
    assert all(s.prompt[0]["content"].startswith("Go.") for t in episodes for s in t.steps)


def _fake_run(root, *overrides):
    """A run directory as the trainer lays it out (config.yaml, checkpoints/iter-N/{adapter, state.json}), no weights."""
    from agentrl.config import dump_config, load_config

    root.mkdir(parents=True)
    (root / "config.yaml").write_text(dump_config(load_config(None, list(overrides))))
    for it in (1, 3):
        ckpt = root / "checkpoints" / f"iter-{it:06d}"
        (ckpt / "adapter").mkdir(parents=True)
        (ckpt / "state.json").write_text(json.dumps({"iteration": it}))
    return root


def test_eval_config_reads_a_run_and_lets_options_win(tmp_path):
    from agentrl.agents import PromptSettings
    from agentrl.config import dump_config, load_config
    from agentrl.eval.evaluate import eval_config
    from agentrl.seeding import eval_seed

    run = _fake_run(
        tmp_path / "run",
        "seed=5",
        "env.kwargs={num_tasks: 80}",
        "env.num_envs=3",
        "rollout.prompt=chat",
        "rollout.history_k=0",
        "rollout.max_turns=7",
        "rollout.max_new_tokens=12",
        "model.dtype=float32",
        "eval.enabled=true",
        "eval.tasks.start=60",
        "eval.tasks.count=20",
        "eval.episodes_per_task=2",
        "eval.temperature=0.5",
        "eval.env_kwargs={slip: 0.1}",
    )
    latest = run / "checkpoints" / "iter-000003" / "adapter"
    for target in (run, latest.parent, latest):
        cfg = eval_config(f"hf:{target}")
        assert cfg.policy == f"hf:{run / 'tiny-model'}" and cfg.adapter == str(latest) and cfg.run == str(run)
        assert cfg.env == "maze" and cfg.env_kwargs == {"num_tasks": 80, "slip": 0.1} and cfg.num_envs == 3
        assert cfg.policy_options == {"max_batch_size": 64, "merge_for_sampling": True, "dtype": "float32"}
        assert cfg.spec.prompt == PromptSettings(kind="chat", history_k=0)
        assert (cfg.spec.task_start, cfg.spec.task_count, cfg.spec.episodes_per_task) == (60, 20, 2)
        assert (cfg.spec.seed, cfg.spec.seeds, cfg.spec.max_turns) == (eval_seed(5), 1, 7)
        assert (cfg.spec.temperature, cfg.spec.max_new_tokens) == (0.5, 12)
    older = run / "checkpoints" / "iter-000001" / "adapter"
    assert eval_config(f"hf:{older.parent}").adapter == str(older)
    # given options win; the base model and --adapter of a run read the run's settings as well
    cfg = eval_config(
        "hf:/models/base",
        adapter=str(older),
        env_kwargs={"slip": 0.0},
        prompt={"kind": "step", "history_k": 3},
        task_count=5,
        seeds=2,
        temperature=0.0,
    )
    assert cfg.policy == "hf:/models/base" and cfg.adapter == str(older)
    assert cfg.spec.prompt == PromptSettings(kind="step", history_k=3) and cfg.env_kwargs["slip"] == 0.0
    assert (cfg.spec.task_start, cfg.spec.task_count, cfg.spec.seeds, cfg.spec.temperature) == (60, 5, 2, 0.0)

    # a run without held-out evaluation lends its prompts and decoding, not its (unused) eval tasks
    plain = eval_config(f"hf:{_fake_run(tmp_path / 'plain', 'rollout.history_k=1', 'sft.enabled=true')}")
    assert plain.policy == f"hf:{tmp_path / 'plain' / 'sft-model'}" and plain.spec.prompt.history_k == 1
    assert (plain.spec.task_start, plain.spec.task_count, plain.spec.seed) == (0, 50, 0)
    # agentrl sft's run directory: its sft-model (no checkpoint), prompted as the demonstrations were
    sft_run = tmp_path / "sft"
    (sft_run / "sft-model").mkdir(parents=True)
    (sft_run / "sft-model" / "config.json").write_text("{}")
    (sft_run / "config.yaml").write_text(dump_config(load_config(None, ["rollout.prompt=chat"])))
    cfg = eval_config(f"hf:{sft_run}")
    assert (
        cfg.policy == f"hf:{sft_run / 'sft-model'}" and cfg.adapter is None and cfg.spec.prompt.kind == "chat"
    )
    # a model directory is no run; without a run the env must be given
    assert eval_config("hf:/models/base", env="maze").run is None
    with pytest.raises(ValueError, match="--env is needed"):
        eval_config("hf:/models/base")
