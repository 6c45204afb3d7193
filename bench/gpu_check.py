"""The GPU path end to end, in one script (no downloads; about 5-8 minutes on one H100):

1. builds a random-init Qwen2.5-1.5B-shaped model with a tokenizer grown locally to 151,936
   entries (bf16 weights);
2. ``bench/train_speed.py`` on it: sampling at batch 128 and one whole update step (old and
   reference log-probs, forward + backward + AdamW) with LoRA r=64, bf16, gradient checkpointing;
3. two training iterations of an ALFWorld recipe (default ``configs/recipes/alfworld/seeupo.yaml``:
   GSPO with its 3e-4/4e-4 clip band, 16 groups x 8 episodes sampled in one batch per turn) on
   that model, with fewer turns per episode (``--max-turns``) so it fits the time;

and prints one table. A random-init model never acts sensibly: success rates mean nothing here;
times, memory, the GSPO ratio (1 at unchanged weights) and the absence of errors do.

    .venv/bin/python bench/gpu_check.py                 # one CUDA GPU
    .venv/bin/python bench/gpu_check.py --tiny          # CPU smoke test, tiny shapes, ~a minute
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_speed.py beside this file

import train_speed

from agentrl.trainers import train

ROOT = Path(__file__).resolve().parents[1]


def training_check(
    model_dir: str, recipe: Path, out: Path, *, tiny: bool, max_turns: int, max_new_tokens: int
) -> dict[str, Any]:
    """Two iterations of the recipe on ``model_dir``; returns what the metrics say about them."""
    overrides = {
        "model.path": model_dir,
        "optim.iterations": 2,
        "rollout.max_turns": max_turns,
        "rollout.max_new_tokens": max_new_tokens,
        "logging.tensorboard": "false",
        "logging.checkpoint_every": 1,
    }
    if tiny:  # CPU: the recipe's settings (bf16, LoRA r=64, checkpointing) on a tiny batch
        overrides.update({"model.device": "cpu", "rollout.groups": 2, "rollout.group_size": 2})
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run = train(recipe, out, [f"{k}={v}" for k, v in overrides.items()])
    seconds = time.perf_counter() - t0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    keys = ("time_rollout", "time_update", "tokens_generated", "tokens_per_s", "rows", "errors")
    keys += ("ratio", "clip_frac", "kl", "grad_norm")
    out_stats: dict[str, Any] = {"train_seconds": round(seconds, 1), "iterations": len(records)}
    for k, rec in enumerate(records):
        for key in keys:
            if key in rec:
                value = rec[key]
                out_stats[f"it{k}_{key}"] = round(value, 6) if isinstance(value, float) else value
    if torch.cuda.is_available():
        out_stats["train_peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    out_stats["checkpoint"] = (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir())
    return out_stats


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny shapes and batches")
    p.add_argument("--recipe", default=str(ROOT / "configs/recipes/alfworld/seeupo.yaml"))
    p.add_argument("--max-turns", type=int, default=None, help="per episode (default 2; tiny 1)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="per turn (default 512; tiny 8)")
    p.add_argument("--out", default=None, help="keep the run here (default: a temporary directory)")
    args = p.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        p.error("no CUDA GPU: run with --tiny for the CPU smoke test")
    max_turns = args.max_turns or (1 if args.tiny else 2)
    max_new = args.max_new_tokens or (8 if args.tiny else 512)
    bench_args = (
        ["--device", "cpu", "--dtype", "bfloat16", "--vocab", "2048", "--batch", "8", "--new-tokens", "8"]
        + [
            "--rows",
            "4",
            "--micro-batch",
            "2",
            "--prompt-len",
            "32",
            "--response-len",
            "16",
            "--repeats",
            "1",
        ]
        if args.tiny
        else ["--qwen-1.5b-shape", "--device", "cuda", "--batch", "128", "--new-tokens", "128"]
        + ["--rows", "32", "--micro-batch", "16", "--prompt-len", "1024", "--response-len", "256"]
    )
    t_start = time.perf_counter()
    table: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        bench = train_speed.parser().parse_args(bench_args)
        bench.vocab = bench.vocab or train_speed.QWEN_VOCAB
        t0 = time.perf_counter()
        model_dir = train_speed.build_model(bench, Path(tmp) / "model")
        table["model_build_seconds"] = round(time.perf_counter() - t0, 1)
        table.update(train_speed.run([*bench_args, "--model", model_dir]))
        table.pop("model_build_seconds", None)
        out = Path(args.out) if args.out else Path(tmp) / "run"
        table.update(
            training_check(
                model_dir, Path(args.recipe), out, tiny=args.tiny, max_turns=max_turns, max_new_tokens=max_new
            )
        )
    table["recipe"] = Path(args.recipe).name
    table["total_seconds"] = round(time.perf_counter() - t_start, 1)
    width = max(len(k) for k in table)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in table.items() if k != "flops_note"))
    print(f"FLOPs: {table.get('flops_note', '')}")
    return table


if __name__ == "__main__":
    main()
