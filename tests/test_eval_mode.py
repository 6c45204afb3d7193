"""Evaluation-only mode: scripted and model policies, report.json numbers, errors."""

import json
import math

import pytest
from typer.testing import CliRunner

from agentrl.cli import app
from agentrl.eval.evaluate import EvalConfig, evaluate
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
    assert report["mean_steps"] == pytest.approx(sum(len(t) for t in episodes) / 50)
    assert report["invalid_rate"] == 0.0 and report["per_type"]["maze"]["episodes"] == 50
    assert (tmp_path / "report.md").exists() and (tmp_path / "report.html").exists()
    assert "success" in result.output and "95% CI" in result.output


def test_expert_policy_solves_every_maze_even_with_slips(tmp_path):
    report = evaluate(
        EvalConfig(env="maze", policy="expert", episodes=20, seeds=2, env_kwargs={"slip": 0.2}), tmp_path
    )
    assert report["success_rate"] == 1.0 and report["ci_high"] == 1.0 and report["ci_low"] < 1.0


def test_same_config_same_report(tmp_path):
    cfg = EvalConfig(env="maze", policy="random", episodes=10, seeds=1)
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
    ],
)
def test_bad_input_fails_clearly(tmp_path, args, message):
    result = runner.invoke(app, ["eval", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output


def test_hf_policy_on_a_tiny_model(tmp_path, tiny_model):
    """A real (tiny, random-init) transformer plays the maze through the rollout path."""
    path = tiny_model(tasks=5, steps_per_task=10, formats=True, vocab_size=300)
    cfg = EvalConfig(
        env="maze", policy=f"hf:{path}", episodes=3, seeds=1, max_turns=2, max_new_tokens=8, num_envs=2
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
    common = {"env": "maze", "episodes": 3, "seeds": 1, "max_turns": 2, "max_new_tokens": 8, "num_envs": 2}
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
