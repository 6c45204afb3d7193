"""Env throughput: median reset/step latency of one env, and steps/s and resets/s of pools.

Policy: a uniformly random admissible command (seeded); pools step in lock-step batches and start
each batch of episodes with a group reset (every env on the same next task, as GRPO-style groups
do), resetting an env whose episode ends (won, truncated, or ``--episode-len`` steps). Runs on
ALFWorld generated games by default (the cached default train set, made on first use), or on any
registered env (``--env maze``). Prints a table and, with ``--json``, writes the numbers.

    python bench/env_throughput.py                      # alfworld, fast engine, pools of 1 and 2
    python bench/env_throughput.py --stock              # also the stock engine's latency
    python bench/env_throughput.py --ray                # also a Ray pool of 2 actors
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from typing import Any

from agentrl.envs import make
from agentrl.envs.pool import EnvPool


def _pick(info: dict[str, Any], rng: random.Random) -> str:
    acts = info.get("admissible_actions") or ["look"]
    return rng.choice(acts)


def latency(
    env_name: str, env_kwargs: dict[str, Any], steps: int, warmup_tasks: int, seed: int
) -> dict[str, float]:
    """Median reset and step time (ms) of one in-process env, after every task was played once."""
    env = make(env_name, **env_kwargs)
    tasks = list(env.task_ids())[:warmup_tasks] or [None]
    rng = random.Random(seed)
    for task in tasks:  # warm-up: first loads (translation, parses) are not what we measure
        _obs, info = env.reset(seed=seed, options={"task_id": task} if task else None)
        for _ in range(3):
            env.step(_pick(info, rng))
    reset_ms, step_ms = [], []
    k = 0
    while len(step_ms) < steps:
        task = tasks[k % len(tasks)]
        k += 1
        t = time.perf_counter()
        _obs, info = env.reset(seed=seed, options={"task_id": task} if task else None)
        reset_ms.append((time.perf_counter() - t) * 1e3)
        for _ in range(10):
            action = _pick(info, rng)
            t = time.perf_counter()
            _obs, _r, terminated, truncated, info = env.step(action)
            step_ms.append((time.perf_counter() - t) * 1e3)
            if terminated or truncated:
                break
    env.close()
    return {
        "reset_ms_median": statistics.median(reset_ms),
        "step_ms_median": statistics.median(step_ms),
        "resets": len(reset_ms),
        "steps": len(step_ms),
    }


def _cpu_seconds(pids: list[int]) -> float:
    """User+system CPU time of processes (Linux /proc), plus this process."""
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(os.times()[:2])
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def pool_throughput(
    env_name: str,
    env_kwargs: dict[str, Any],
    workers: int,
    seconds: float,
    seed: int,
    backend: str,
    episode_len: int,
) -> dict[str, float]:
    """Steps/s and resets/s of a pool driven in lock-step batches for ``seconds`` after warm-up."""
    with EnvPool(env_name, workers, env_kwargs=env_kwargs, backend=backend) as pool:
        probe = make(env_name, **env_kwargs)
        tasks = list(probe.task_ids()) or [None]
        probe.close()
        rng = random.Random(seed)
        counter = [0]

        def options() -> list[dict[str, Any] | None]:
            """A group reset: every env of the batch starts the next task (as GRPO-style groups do)."""
            task = tasks[counter[0] % len(tasks)]
            counter[0] += 1
            return [{"task_id": task} if task else None] * workers

        # warm-up: every worker loads every task once
        for r in range(len(tasks)):
            opts = [{"task_id": tasks[(r + k) % len(tasks)]} if tasks[0] else None for k in range(workers)]
            resets = pool.reset(seeds=[seed] * workers, options=opts)
            pool.step([_pick(info, rng) for _, info in resets])
        infos = [info for _, info in pool.reset(seeds=[seed] * workers, options=options())]
        lengths = [0] * workers
        steps = resets_done = 0
        pids = pool.pids() if backend == "process" else []
        cpu0 = _cpu_seconds(pids)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            results = pool.step([_pick(i, rng) for i in infos])
            steps += workers
            infos = [r.info for r in results]
            done = []
            for k, r in enumerate(results):
                lengths[k] += 1
                if r.terminated or r.truncated or lengths[k] >= episode_len:
                    done.append(k)
            if done:
                opts = options()[: len(done)]
                for k, (_obs, info) in zip(
                    done, pool.reset(indices=done, seeds=[seed] * len(done), options=opts)
                ):
                    infos[k] = info
                    lengths[k] = 0
                resets_done += len(done)
        elapsed = time.perf_counter() - t0
        cpu = _cpu_seconds(pids) - cpu0
    # CPU per step (parent + workers) does not depend on what else runs on the machine
    return {
        "workers": workers,
        "steps_per_s": steps / elapsed,
        "resets_per_s": resets_done / elapsed,
        "seconds": elapsed,
        "cpu_ms_per_step": 1e3 * cpu / steps if pids else None,
    }


def _spin(n: int) -> float:
    t = time.perf_counter()
    x = 0
    for i in range(n):
        x += i * i
    return time.perf_counter() - t


def cpu_headroom(n: int = 20_000_000) -> float:
    """How much faster two busy processes finish two jobs than one does: 2.0 on two idle cores.

    Pool scaling cannot beat this; on a machine shared with other jobs it tells what is left.
    """
    import multiprocessing as mp

    one = _spin(n)
    with mp.get_context("spawn").Pool(2) as workers:
        t = time.perf_counter()
        workers.map(_spin, [n, n])
        two = time.perf_counter() - t
    return 2 * one / two


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="alfworld")
    parser.add_argument("--split", default="train", help="alfworld split")
    parser.add_argument(
        "--data-dir", default=None, help="alfworld games (default: the generated set in the cache)"
    )
    parser.add_argument("--steps", type=int, default=400, help="steps timed for the latency medians")
    parser.add_argument(
        "--warmup-tasks", type=int, default=20, help="tasks played once before timing latency"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per pool")
    parser.add_argument("--episode-len", type=int, default=10, help="steps before a pool env is reset")
    parser.add_argument("--stock", action="store_true", help="also time the stock engine (no caches)")
    parser.add_argument("--ray", action="store_true", help="also time a Ray pool of 2 actors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the numbers here")
    args = parser.parse_args(argv)

    kwargs: dict[str, Any] = {}
    if args.env == "alfworld":
        kwargs = {"split": args.split, "data_dir": args.data_dir}
    report: dict[str, Any] = {"env": args.env}
    report["latency_fast"] = latency(args.env, kwargs, args.steps, args.warmup_tasks, args.seed)
    if args.stock and args.env == "alfworld":
        report["latency_stock"] = latency(
            args.env,
            {**kwargs, "fast": False},
            max(50, args.steps // 8),
            min(5, args.warmup_tasks),
            args.seed,
        )
    for name, lat in ((k, v) for k, v in report.items() if k.startswith("latency")):
        print(
            f"{name:16s} reset {lat['reset_ms_median']:8.1f} ms   step {lat['step_ms_median']:7.2f} ms   (medians of {lat['resets']} resets, {lat['steps']} steps)"
        )
    pools = [("process", 1), ("process", 2)] + ([("ray", 2)] if args.ray else [])
    for backend, n in pools:
        r = pool_throughput(args.env, kwargs, n, args.seconds, args.seed, backend, args.episode_len)
        report[f"pool_{backend}_{n}"] = r
        cpu = f"   {r['cpu_ms_per_step']:.2f} CPU-ms/step" if r["cpu_ms_per_step"] is not None else ""
        print(
            f"pool {backend:8s} x{n}   {r['steps_per_s']:8.1f} steps/s   {r['resets_per_s']:7.1f} resets/s{cpu}"
        )
    one, two = report["pool_process_1"]["steps_per_s"], report["pool_process_2"]["steps_per_s"]
    report["speedup_2_vs_1"] = two / one
    report["cpu_headroom_2_procs"] = cpu_headroom()
    print(
        f"2 workers / 1 worker: {two / one:.2f}x   (two busy processes on this machine now: {report['cpu_headroom_2_procs']:.2f}x)"
    )
    if args.ray:
        import ray

        ray.shutdown()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
