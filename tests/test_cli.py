"""The agentrl command line, run in-process through typer's runner."""

import pytest
import typer
from typer.testing import CliRunner

from agentrl.cli import app, parse_kv
from agentrl.envs.maze import MazeEnv, solve

runner = CliRunner(env={"COLUMNS": "400"})


def test_envs_list_names_and_gym_ids():
    result = runner.invoke(app, ["envs", "list"])
    assert result.exit_code == 0
    assert "maze" in result.output and "agentrl/Maze-v0" in result.output


def test_envs_show_prints_first_observation_and_info():
    result = runner.invoke(app, ["envs", "show", "maze", "--seed", "1", "-o", "size=2"])
    assert result.exit_code == 0, result.output
    assert "Your task is to reach" in result.output and "admissible_actions:" in result.output


def test_envs_play_reaches_the_goal_with_the_solver_plan():
    env = MazeEnv()
    env.reset(seed=3, options={"task_id": "maze-3"})
    plan = solve(env.layout)
    result = runner.invoke(
        app, ["envs", "play", "maze", "--seed", "3", "--task-id", "maze-3"], input="\n".join(plan) + "\n"
    )
    assert result.exit_code == 0, result.output
    assert f"steps={len(plan)} return=1 success=True" in result.output


def test_envs_play_reports_invalid_actions_and_quits():
    result = runner.invoke(app, ["envs", "play", "maze"], input="dance wildly\nquit\n")
    assert result.exit_code == 0
    assert "(not a valid action)" in result.output and "steps=1 return=0 success=False" in result.output


def test_bad_env_and_bad_options_fail_clearly():
    result = runner.invoke(app, ["envs", "show", "no-such-env"])
    assert result.exit_code != 0 and "unknown env 'no-such-env'" in result.output
    result = runner.invoke(app, ["envs", "show", "maze", "-o", "colour=red"])
    assert result.exit_code != 0 and "bad option for env 'maze'" in result.output


def test_parse_kv_types():
    assert parse_kv(["a=3", "b=0.5", "c=true", "d=none", "e=text"]) == {
        "a": 3,
        "b": 0.5,
        "c": True,
        "d": None,
        "e": "text",
    }
    with pytest.raises(typer.BadParameter, match="key=value"):
        parse_kv(["novalue"])


def test_bench_credit_fidelity_writes_its_tables(tmp_path):
    result = runner.invoke(
        app,
        [
            "bench",
            "credit",
            "--part",
            "fidelity",
            "--group-sizes",
            "4",
            "--tasks",
            "3",
            "--resamples",
            "2",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| gigpo |" in (tmp_path / "fidelity.md").read_text()
    import json

    rows = json.loads((tmp_path / "fidelity.json").read_text())
    assert {r["estimator"] for r in rows} >= {"grpo", "gigpo", "hgpo", "salt"}
    result = runner.invoke(app, ["bench", "credit", "--part", "nope"])
    assert result.exit_code != 0 and "--part must be" in result.output


def test_report_and_view_reject_a_missing_run_dir(tmp_path):
    for cmd in ("report", "view"):
        result = runner.invoke(app, [cmd, str(tmp_path / "nope")])
        assert result.exit_code != 0 and "does not exist" in result.output


def test_report_command_writes_markdown_and_html(tmp_path):
    from agentrl.types import Step, Trajectory, write_trajectories

    trajs = [
        Trajectory(
            "maze-1",
            "g0",
            f"g0/{i}",
            [Step("o", action="go east", reward=float(i % 2))],
            terminated=True,
            success=bool(i % 2),
        )
        for i in range(4)
    ]
    write_trajectories(tmp_path / "trajectories.jsonl", trajs)
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.md").exists() and (tmp_path / "report.html").exists()
    assert "| maze | 4 | 0.500 |" in (tmp_path / "report.md").read_text()


def test_envs_serve_rejects_unknown_env():
    result = runner.invoke(app, ["envs", "serve", "no-such-env"])
    assert result.exit_code != 0 and "unknown env 'no-such-env'" in result.output


def test_envs_serve_runs_a_real_server(tmp_path):
    """`agentrl envs serve` in a subprocess on a free port; a RemoteEnv plays against it."""
    import subprocess
    import sys
    import time

    from agentrl.envs import make
    from agentrl.envs.remote import RemoteEnv
    from agentrl.serving import free_port

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "agentrl.cli",
        "envs",
        "serve",
        "maze",
        "--port",
        str(port),
        "--token",
        "t0k",
        "-o",
        "size=2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                env = RemoteEnv(f"http://127.0.0.1:{port}", token="t0k")
                break
            except Exception:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        local = make("maze", size=2)
        assert env.reset(seed=2, options={"task_id": "maze-1"}) == local.reset(
            seed=2, options={"task_id": "maze-1"}
        )
        env.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_train_rejects_bad_config_keys_and_missing_files(tmp_path):
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    result = runner.invoke(app, ["train", str(config), "bogus.key=3", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "unknown key 'bogus'" in result.output and "allowed:" in result.output
    result = runner.invoke(app, ["train", str(tmp_path / "missing.yaml")])
    assert result.exit_code != 0 and "does not exist" in result.output


def test_generate_names_the_envs_it_can_generate(tmp_path):
    result = runner.invoke(app, ["envs", "generate", "maze", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "no generator for 'maze'; available: alfworld" in result.output


def test_serve_rejects_a_missing_model_dir(tmp_path):
    result = runner.invoke(app, ["serve", str(tmp_path / "nope")])
    assert result.exit_code != 0 and "does not exist" in result.output


def test_train_and_sft_report_a_bad_env_option_without_a_traceback(tmp_path):
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    for cmd in ("train", "sft"):
        result = runner.invoke(app, [cmd, str(config), "env.kwargs.colour=red", "--out", str(tmp_path / cmd)])
        assert result.exit_code == 2, (cmd, result.output)
        assert "bad option for env 'maze' (env.kwargs)" in result.output and "'colour'" in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    # only a TypeError raised while building the env is treated so; any other keeps its traceback
    from agentrl.cli import _env_option_error
    from agentrl.envs import make

    with pytest.raises(TypeError) as from_make:
        make("maze", colour="red")
    assert _env_option_error(from_make.value) == "maze"
    with pytest.raises(TypeError) as elsewhere:
        len(3)
    assert _env_option_error(elsewhere.value) is None


def test_train_with_an_unreachable_rollout_server_fails_clearly(tmp_path):
    """rollout.server.url pointing nowhere: exit 2 naming the URL, no traceback, the run dir's config kept."""
    import socket
    from pathlib import Path

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    url = f"http://127.0.0.1:{port}/v1"
    result = runner.invoke(
        app,
        [
            "train",
            str(config),
            f"rollout.server.url={url}",
            "sft.enabled=false",
            "eval.enabled=false",
            "model.tiny.hidden=16",
            "model.tiny.corpus_tasks=3",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert f"error: http://127.0.0.1:{port}/v1/models could not be reached" in result.output
    assert (tmp_path / "run" / "config.yaml").exists()
