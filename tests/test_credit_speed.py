"""The credit speed benchmark: every estimator timed, in-process and through an installed-like CLI."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import agentrl
from agentrl.cli import app
from agentrl.credit import available_estimators
from agentrl.eval.credit_speed import bench_size, parse_sizes

ESTIMATOR_ROWS = ("gigpo", "hgpo", "salt", "salt[merge=state_action]", "gigpo[anchors=similarity]")


def report_rows(text: str) -> dict[str, str]:
    """Report lines keyed by their first word (the estimator label)."""
    return {line.split()[0]: line for line in text.splitlines() if line.split()}


TIMING = re.compile(r"\s(\d+\.\d+)\s+([\d,]+)\s+(\d+)(?:\s|$)")  # median s, rows/s, runs


def assert_every_estimator_timed(text: str) -> None:
    """Every estimator (and the batch build and the naive yardstick) has a row with its figures.

    The figures are the machine's, so only their form is checked: finite, non-negative, at least
    one run. No timing is compared with a constant or with another (the rows of a fast estimator
    read 0.0000 s on a fast machine).
    """
    rows = report_rows(text)
    for name in ("StepBatch.from_trajectories", *available_estimators(), *ESTIMATOR_ROWS, "naive"):
        assert name in rows, name
        assert "failed" not in rows[name], rows[name]
        timing = TIMING.search(rows[name])  # the pattern admits only non-negative numbers
        assert timing, rows[name]
        figures = float(timing[1]), float(timing[2].replace(",", "")), int(timing[3])
        assert all(map(math.isfinite, figures)) and figures[2] >= 1, rows[name]
    ratio = re.search(r"gigpo is (\d+\.\d)x", rows["naive"])  # the speed-up is reported, whatever it is
    assert ratio and math.isfinite(float(ratio[1])), rows["naive"]


def test_speed_bench_runs_every_estimator():
    lines: list[str] = []
    bench_size(2, repeats=1, seed=0, echo=lines.append)
    assert lines[0].startswith("\nP=2: ")
    assert_every_estimator_timed("\n".join(lines))


def test_parse_sizes_rejects_what_is_not_a_task_count():
    assert parse_sizes("16, 128,") == [16, 128]
    for bad in ("", "4,x", "0", "-3"):
        with pytest.raises(ValueError, match="positive integers"):
            parse_sizes(bad)


def test_cli_speed_part_runs_without_a_source_checkout(tmp_path):
    # a copy of the package with no bench/ beside it, imported from there: what a pip install gives
    package = Path(agentrl.__file__).resolve().parent
    shutil.copytree(package, tmp_path / "agentrl", ignore=shutil.ignore_patterns("__pycache__", "data"))
    assert not (tmp_path / "bench").exists()
    run_cli = "import sys, agentrl.cli as cli; assert cli.__file__.startswith(sys.argv[1]), cli.__file__; sys.argv[:2] = ['agentrl']; cli.main()"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", run_cli, str(tmp_path), "bench", "credit", "--part", "speed", "--sizes", "4"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "P=4: " in result.stdout
    assert_every_estimator_timed(result.stdout)


def test_cli_speed_part_rejects_bad_sizes():
    result = CliRunner(env={"COLUMNS": "400"}).invoke(
        app, ["bench", "credit", "--part", "speed", "--sizes", "4,x"]
    )
    assert result.exit_code != 0 and "positive integers" in result.output
