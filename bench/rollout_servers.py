"""Rollout throughput over 1, 2 and 4 ``agentrl serve`` replicas, and iteration time of on-policy
training against ``rollout.overlap`` (one-step off-policy) on the maze with a server.

Every server is a real ``agentrl serve`` process on 127.0.0.1 (a random-init tiny model, no
download; ``--threads`` torch threads each). Prints figures only; how they scale depends on the
cores the machine has free.

    .venv/bin/python bench/rollout_servers.py                     # rollout tokens/s, 1/2/4 replicas
    .venv/bin/python bench/rollout_servers.py --overlap --seeds 3 # iteration time, both modes (random init)
    .venv/bin/python bench/rollout_servers.py --overlap --sft     # the same from the quickstart's SFT model
    .venv/bin/python bench/rollout_servers.py --overlap --seeds 3 --eval \
        --warm runs/bench/maze/seed{seed}/warm-think_action/sft-model   # + held-out success before/after
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

from agentrl.envs.maze import MazeEnv
from agentrl.policies import SamplingParams
from agentrl.policies.openai import OpenAIPolicy
from agentrl.policies.pool import ServerPool
from agentrl.policies.tiny import build_tiny_model, env_corpus
from agentrl.rollout import rollout
from agentrl.serving import free_port
from agentrl.trainers import run_sft, train
from agentrl.trainers.metrics import read_metrics

MAZE = {"size": 3, "max_steps": 8}
QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


@contextlib.contextmanager
def servers(model_dir: Path, n: int, threads: int) -> Iterator[list[str]]:
    """``n`` ``agentrl serve`` processes; yields their URLs once all answer."""
    procs, urls = [], []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    try:
        for _ in range(n):
            port = free_port()
            code = (
                "import torch; from agentrl.policies.server import serve; "
                f"torch.set_num_threads({threads}); serve({str(model_dir)!r}, port={port}, "
                "served_model_name='tiny', device='cpu')"
            )
            procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 300
        for url, proc in zip(urls, procs):
            while True:
                try:
                    httpx.get(f"{url}/v1/models", timeout=1)
                    break
                except httpx.TransportError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"agentrl serve at {url} did not come up") from None
                    time.sleep(0.2)
        yield urls
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


def throughput(model_dir: Path, args: argparse.Namespace) -> None:
    tasks = [f"maze-{i}" for i in range(args.groups)]
    params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    with servers(model_dir, max(args.replicas), args.threads) as urls:
        for n in args.replicas:
            sampler = (
                OpenAIPolicy(urls[0], "tiny", concurrency=args.concurrency)
                if n == 1
                else ServerPool(urls[:n], "tiny", concurrency=args.concurrency)
            )
            envs = [MazeEnv(**MAZE) for _ in range(args.groups * args.group_size)]
            t = time.perf_counter()
            groups = rollout(sampler, envs, tasks, args.group_size, max_turns=args.max_turns, params=params)
            seconds = time.perf_counter() - t
            tokens = sum(len(s.response_ids or ()) for g in groups for tr in g for s in tr.steps)
            row = {
                "replicas": n,
                "tokens": tokens,
                "seconds": round(seconds, 2),
                "tokens_per_s": round(tokens / seconds, 1),
            }
            if isinstance(sampler, ServerPool):
                row["requests_per_server"] = list(sampler.take_stats()["server_requests"].values())
            print(json.dumps(row), flush=True)


def overlap(model_dir: Path, args: argparse.Namespace, out: Path) -> None:
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        config = None
        if args.warm:  # an SFT model made before (e.g. the credit benchmark's warm start)
            config = QUICKSTART
            model_dir = Path(args.warm.format(seed=seed))
        elif args.sft:  # the quickstart's SFT warm start, served: a policy that solves some mazes
            config = QUICKSTART
            model_dir = run_sft(config, out / f"sft-seed{seed}", [f"seed={seed}", "eval.enabled=false"])
        with servers(model_dir, 1, args.threads) as urls:
            for mode in ("false", "true"):
                overrides = {
                    "seed": seed,
                    "model.path": str(model_dir),
                    "model.device": "cpu",
                    "lora.r": 8,
                    "lora.alpha": 16,
                    "env.kwargs": json.dumps(MAZE),
                    "env.num_envs": 16,
                    "rollout.groups": 4,
                    "rollout.group_size": 4,
                    "rollout.max_turns": args.max_turns,
                    "rollout.max_new_tokens": args.max_new_tokens,
                    "rollout.server.url": urls[0] + "/v1",
                    "rollout.overlap": mode,
                    "optim.iterations": args.iterations,
                    "optim.lr": 0.005,
                    "logging.tensorboard": "false",
                    "eval.enabled": "false",
                }
                if config is not None:  # the quickstart's settings, from its SFT model
                    overrides = {
                        "seed": seed,
                        "model.path": str(model_dir),
                        "sft.enabled": "false",
                        "rollout.server.url": urls[0] + "/v1",
                        "rollout.overlap": mode,
                        "optim.iterations": args.iterations,
                        "eval.enabled": str(args.eval).lower(),
                        "logging.tensorboard": "false",
                        "logging.save_trajectories": "false",
                        "model.torch_threads": args.trainer_threads,
                    }
                run = train(
                    config, out / f"seed{seed}-overlap-{mode}", [f"{k}={v}" for k, v in overrides.items()]
                )
                records = read_metrics(run / "metrics.jsonl")
                later = records[1:]  # iteration 0 has nothing to overlap with
                row = {"seed": seed, "overlap": mode == "true"}
                for key in ("time_iteration", "time_rollout", "time_update", "time_rollout_wait"):
                    if key in records[0]:
                        row[f"{key}_mean"] = mean(later, key)
                for key in ("success_rate", "reward_mean", "invalid_rate"):
                    row[f"{key}_first3"], row[f"{key}_last3"] = (
                        mean(records[:3], key),
                        mean(records[-3:], key),
                    )
                if args.eval:  # held-out success before and after RL, with 95% intervals
                    summary = json.loads((run / "summary.json").read_text())
                    for when in ("before", "after"):
                        e = summary[when]
                        row[when] = [round(e[k], 4) for k in ("success_rate", "ci_low", "ci_high")]
                print(json.dumps(row), flush=True)


def mean(records: list[dict[str, float]], key: str) -> float:
    return round(float(np.mean([r[key] for r in records])), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--threads", type=int, default=1, help="torch threads per server")
    ap.add_argument("--concurrency", type=int, default=16, help="requests in flight per server")
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--max-turns", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=128, help="the tiny model's width")
    ap.add_argument(
        "--overlap", action="store_true", help="compare on-policy and overlapped training instead"
    )
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument(
        "--first-seed", type=int, default=0, help="--overlap: seeds first-seed, first-seed + 1, ..."
    )
    ap.add_argument(
        "--sft", action="store_true", help="--overlap from the quickstart's SFT model and settings"
    )
    ap.add_argument(
        "--warm",
        help="--overlap from an SFT model made before, a path with {seed} (e.g. the credit benchmark's "
        "<out>/maze/seed{seed}/warm-think_action/sft-model), with the quickstart's settings",
    )
    ap.add_argument(
        "--trainer-threads",
        type=int,
        default=1,
        help="with --sft/--warm: the trainer's torch threads (1 + a 1-thread server: both fit 2 cores)",
    )
    ap.add_argument(
        "--eval",
        action="store_true",
        help="with --sft/--warm: the quickstart's held-out evaluation before and after (1000 episodes)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        tasks = [f"maze-{i}" for i in range(20)]
        build_tiny_model(
            model_dir,
            env_corpus(MazeEnv(**MAZE), tasks, steps_per_task=6, seed=0),
            hidden=args.hidden,
            seed=0,
        )
        if args.overlap:
            overlap(model_dir, args, Path(tmp))
        else:
            throughput(model_dir, args)


if __name__ == "__main__":
    main()
