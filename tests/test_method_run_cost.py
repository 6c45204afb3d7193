"""bench/method_run_cost.py: one short run in a fresh process, every phase reported (times are not asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "method_run_cost.py"


@pytest.mark.slow
def test_one_repeat_reports_every_phase():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--repeats", "1", "--iterations", "1", "--sft-tasks", "4"]
        + ["--eval-tasks", "1", "rollout.groups=2", "eval.episodes_per_task=2"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("repeat 1 (wall s / CPU s): start ") for line in lines)
    table = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("  ")}
    for phase in ("start", "setup", "sft", "eval_before", "rollout", "update", "eval_after", "total"):
        assert len(table[phase]) == 2 and all(float(v) >= 0 for v in table[phase]), phase
    assert float(table["sft"][0]) > 0 and float(table["update"][0]) > 0  # SFT and an update ran
    assert "1 iterations, 2 evaluation episodes" in done.stdout
    assert sum("a full method run" in line for line in lines) == 2
