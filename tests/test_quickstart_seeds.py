"""bench/quickstart_seeds.py: reads finished seeds instead of retraining them, and refuses bad input."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "quickstart_seeds.py"


def _side(rate: float, low: float, high: float) -> dict:
    return {"success_rate": rate, "ci_low": low, "ci_high": high, "episodes": 1000}


def _finished(out: Path, seed: int, before: dict, after: dict, significant: bool, minutes: float) -> None:
    run = out / f"seed-{seed}"
    run.mkdir(parents=True)
    summary = {
        "before": before,
        "after": after,
        "improvement": after["success_rate"] - before["success_rate"],
        "significant": significant,
        "estimator": "gigpo",
    }
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "bench_minutes.json").write_text(json.dumps({"minutes": minutes}))


def test_finished_seeds_are_read_and_a_seed_without_a_resolved_gain_fails_the_gate(tmp_path):
    _finished(tmp_path, 0, _side(0.5, 0.47, 0.53), _side(0.6, 0.57, 0.63), True, 5.0)
    _finished(tmp_path, 1, _side(0.7, 0.67, 0.73), _side(0.72, 0.69, 0.75), False, 6.5)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--seeds", "0,1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr  # seed 1's gain lies inside the intervals
    assert "seed 0:" not in done.stdout and "seed 1:" not in done.stdout  # nothing was retrained
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()[:1].isdigit()}
    assert "+10.0" in rows["0"] and "yes" in rows["0"] and "5.0" in rows["0"]
    assert "+2.0" in rows["1"] and "NO" in rows["1"]
    assert (
        "before RL: 50.0-70.0%" in done.stdout
        and "gain: +2.0 to +10.0 points; minutes: 5.0-6.5" in done.stdout
    )
    assert [r["seed"] for r in json.loads((tmp_path / "seeds.json").read_text())] == [0, 1]


def test_bad_seeds_are_refused_before_anything_runs(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--seeds", "0,x", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--seeds takes comma-separated integers, got '0,x'" in done.stderr
    assert not (tmp_path / "out").exists()
