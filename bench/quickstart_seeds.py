"""Does the quickstart replicate? Its config on several seeds, one after another, with the range.

    .venv/bin/python bench/quickstart_seeds.py [--seeds 0,1,2] [--out runs/quickstart-seeds] [key=value ...]

Runs ``agentrl train configs/quickstart.yaml seed=S`` for each seed (extra ``key=value`` overrides
are passed to every run), each in ``OUT/seed-S`` (an existing complete run is read, not rerun; a
killed one resumes), then prints one row per seed (before and after RL with 95% intervals, whether
the gain lies beyond both intervals, wall minutes) and the range over seeds: the figures README.md and
docs/benchmarks.md quote. Also written to ``OUT/seeds.json``. Exit status 1 when some seed's gain is
not beyond both intervals, so the script can gate a config change.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_seed(seed: int, out: Path, overrides: list[str]) -> dict:
    """Train one seed (or read its finished run) and return its summary with the wall minutes."""
    summary_path = out / "summary.json"
    timing_path = out / "bench_minutes.json"
    if summary_path.exists() and timing_path.exists():
        minutes = json.loads(timing_path.read_text())["minutes"]
    else:
        cli = [
            sys.executable,
            "-m",
            "agentrl.cli",
            "train",
            str(ROOT / "configs" / "quickstart.yaml"),
            f"seed={seed}",
            *overrides,
            "--out",
            str(out),
        ]
        started = time.monotonic()
        print(f"seed {seed}: {' '.join(cli[2:])}", flush=True)
        subprocess.run(cli, check=True)
        minutes = (time.monotonic() - started) / 60
        timing_path.write_text(json.dumps({"minutes": minutes}))
    summary = json.loads(summary_path.read_text())
    return {
        "seed": seed,
        "minutes": minutes,
        **{k: summary[k] for k in ("before", "after", "improvement", "significant")},
    }


def _pct(side: dict) -> str:
    return f"{100 * side['success_rate']:.1f}% ({100 * side['ci_low']:.1f}-{100 * side['ci_high']:.1f}%)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "quickstart-seeds")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every seed")
    args = parser.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    rows = [run_seed(s, args.out / f"seed-{s}", args.overrides) for s in seeds]
    episodes = rows[0]["before"]["episodes"]
    print(
        f"\nquickstart over {len(rows)} seeds ({episodes} held-out episodes each side; 95% Wilson intervals)"
    )
    print(f"{'seed':>4}  {'before RL':<22}{'after RL':<22}{'gain':>7}  beyond both  minutes")
    for r in rows:
        print(
            f"{r['seed']:>4}  {_pct(r['before']):<22}{_pct(r['after']):<22}{100 * r['improvement']:>+6.1f}  "
            f"{'yes' if r['significant'] else 'NO':<11}  {r['minutes']:.1f}"
        )
    for key in ("before", "after"):
        rates = [100 * r[key]["success_rate"] for r in rows]
        print(f"{key} RL: {min(rates):.1f}-{max(rates):.1f}%")
    gains = [100 * r["improvement"] for r in rows]
    minutes = [r["minutes"] for r in rows]
    print(
        f"gain: {min(gains):+.1f} to {max(gains):+.1f} points; minutes: {min(minutes):.1f}-{max(minutes):.1f}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "seeds.json").write_text(json.dumps(rows, indent=1))
    return 0 if all(r["significant"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
