"""Data-parallel training speed: the same config on 1 process and on N processes (torchrun), once
per ``distributed.strategy``.

    .venv/bin/python bench/data_parallel_speed.py [--processes 2] [--iterations 4] [--threads 2]
        [--strategies ddp allreduce fsdp fsdp:always]

Trains ``configs/quickstart.yaml`` without SFT and evaluation (the tiny model is built in each run
directory) once on one process with ``--threads`` torch threads and once per strategy on
``--processes`` processes sharing those threads, and prints the median rollout, update and
iteration seconds and new tokens/s of each. ``fsdp:always`` is ``fsdp`` with
``distributed.shard=always`` (the base sharded between updates too; in-process sampling then
all-gathers every layer for each generated token). On a CPU machine the processes share the same cores,
so expect parity; on GPUs (``--device cuda``, one process per GPU) the iteration time should fall
with N.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run(
    processes: int, threads: int, iterations: int, device: str, out: Path, strategy: str = "ddp"
) -> dict[str, float | str]:
    name, _, shard = strategy.partition(":")
    overrides = [
        f"distributed.strategy={name}",
        f"distributed.shard={shard or 'update'}",
        "sft.enabled=false",
        "eval.enabled=false",
        f"optim.iterations={iterations}",
        "logging.tensorboard=false",
        "logging.save_trajectories=false",
        f"model.torch_threads={threads}",
        f"model.device={device}",
    ]
    cli = [
        "-m",
        "agentrl.cli",
        "train",
        str(ROOT / "configs" / "quickstart.yaml"),
        *overrides,
        "--out",
        str(out),
    ]
    if processes > 1:
        cli = [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            _free_port(),
            *cli,
        ]
    subprocess.run([sys.executable, *cli], check=True, capture_output=True, text=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][
        1:
    ]  # the first warms up
    return {
        "processes": processes,
        "strategy": strategy if processes > 1 else "-",
        "threads_per_process": threads,
        "time_rollout": statistics.median(r["time_rollout"] for r in records),
        "time_update": statistics.median(r["time_update"] for r in records),
        "time_iteration": statistics.median(r["time_iteration"] for r in records),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in records),
        **(
            {"filler_passes": statistics.median(r["filler_passes"] for r in records)}
            if "filler_passes" in records[0]
            else {}
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--iterations", type=int, default=4, help="iterations per run (the first is not counted)")
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads of the 1-process run, split among the N processes",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--strategies", nargs="+", default=["ddp", "allreduce", "fsdp", "fsdp:always"])
    args = p.parse_args()
    if args.iterations < 2:
        p.error("--iterations must be >= 2 (the first is a warm-up)")
    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, args.threads, args.iterations, args.device, Path(tmp) / "one")
        many = {
            strategy: run(
                args.processes,
                max(1, args.threads // args.processes),
                args.iterations,
                args.device,
                Path(tmp) / strategy,
                strategy,
            )
            for strategy in args.strategies
        }
    print(
        json.dumps(
            {
                "one_process": one,
                **{f"{args.processes}_processes_{s}": r for s, r in many.items()},
                "speedup_iteration": {
                    s: round(float(one["time_iteration"]) / float(r["time_iteration"]), 2)
                    for s, r in many.items()
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
