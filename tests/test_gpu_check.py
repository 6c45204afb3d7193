"""bench/gpu_check.py --tiny: the GPU check's CPU smoke test (benchmark, sampling, two recipe iterations)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.mark.slow  # a few minutes on 2 busy cores: builds a model, benchmarks it, trains two iterations
def test_gpu_check_runs_on_cpu_with_tiny_shapes(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition("  ")
        table[key.strip()] = value.strip()
    assert table["tokenizer_entries"] == table["vocab"] == "2048"  # the grown tokenizer
    assert (
        table["lora_r"] == "64" and table["dtype"] == "bfloat16" and table["gradient_checkpointing"] == "True"
    )
    # the timed figures are the script's to print (the table has them); nothing here judges their size
    assert {"sampling_new_tokens_per_s", "step_seconds"} <= set(table)
    assert table["iterations"] == "2" and table["checkpoint"] == "True" and table["recipe"] == "seeupo.yaml"
    for it in (0, 1):  # SeeUPO's GSPO at unchanged weights (one minibatch per slot), in bf16
        assert abs(float(table[f"it{it}_ratio"]) - 1.0) < 1e-6
        assert float(table[f"it{it}_clip_frac"]) == 0.0
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
