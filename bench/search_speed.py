"""Search speed: SearchEnv steps/s on one core, and the retrieval server's queries/s under concurrency.

    .venv/bin/python bench/search_speed.py [--num-docs 100000] [--clients 16] [--seconds 10] [--json out.json]

1. SearchEnv on a generated world of ``--num-docs`` documents (bm25s, in-process), pinned to one
   core: the oracle plays test and train questions; every search query is new to the retriever's
   cache (each sub-question is asked once), so the number is the uncached speed. Target: >= 500 steps/s
   at 100k documents.
2. The retrieval server (``python -m agentrl.envs.search serve``, its own process) on the same
   world, with ``--clients`` threads each sending one query per request (distinct queries) for
   ``--seconds``. Target: >= 300 queries/s with 16 clients.
Targets are printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import httpx

from agentrl.envs.search import SearchEnv, generate_world, oracle_actions
from agentrl.serving import free_port

ENV_TARGET, SERVER_TARGET = 500.0, 300.0


def env_speed(num_docs: int, max_steps: int) -> dict[str, float]:
    """Build the env (index time), then oracle episodes until ``max_steps`` steps; steps/s of the steps."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    generate_world.cache_clear()  # time a real generation
    start = time.perf_counter()
    world = generate_world(0, num_docs)
    generated = time.perf_counter()
    envs = {split: SearchEnv(split, num_docs=num_docs) for split in ("test", "train")}  # one shared index
    built = time.perf_counter()
    envs["test"].retriever.search("warm up the compiled scorer", 3)
    questions = list(world.splits["test"]) + list(world.splits["train"])
    seen: set[str] = set()
    steps = searches = correct = episodes = 0
    elapsed = 0.0
    for q in questions:
        if steps >= max_steps:
            break
        if any(h.question in seen for h in q.decomposition):
            continue  # keep every query uncached
        seen.update(h.question for h in q.decomposition)
        env = envs[q.id.split("-")[0]]
        t0 = time.perf_counter()
        env.reset(seed=0, options={"task_id": q.id})
        for action in oracle_actions(q):
            _, reward, terminated, truncated, _ = env.step(action)
            steps += 1
            if terminated or truncated:
                break
        elapsed += time.perf_counter() - t0
        searches += q.hops
        correct += reward == 1.0
        episodes += 1
    return {
        "num_docs": num_docs,
        "generate_s": generated - start,
        "index_s": built - generated,
        "steps": steps,
        "searches": searches,
        "episodes": episodes,
        "oracle_success": correct / max(episodes, 1),
        "steps_per_s": steps / elapsed,
        "searches_per_s": searches / elapsed,
    }


def server_speed(num_docs: int, clients: int, seconds: float) -> dict[str, float]:
    """Queries/s of a retrieval server process with ``clients`` concurrent single-query clients."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentrl.envs.search",
            "serve",
            "--port",
            str(port),
            "--num-docs",
            str(num_docs),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the retrieval server did not start")
            time.sleep(0.5)
        world = generate_world(0, num_docs)
        queries = [h.question for q in world.splits["train"] + world.splits["test"] for h in q.decomposition]
        httpx.post(url + "/retrieve", json={"queries": queries[:8], "topk": 3})  # warm up
        counts = [0] * clients
        errors: list[str] = []
        stop = time.monotonic() + seconds

        def client(i: int) -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                j = i
                while time.monotonic() < stop:
                    r = c.post(
                        "/retrieve",
                        json={"queries": [queries[j % len(queries)]], "topk": 3, "return_scores": True},
                    )
                    if r.status_code != 200 or len(r.json()["result"]) != 1:
                        errors.append(r.text[:200])
                        return
                    counts[i] += 1
                    j += clients

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        if errors:
            raise RuntimeError(f"retrieval errors: {errors[:3]}")
        return {
            "num_docs": num_docs,
            "clients": clients,
            "queries": sum(counts),
            "queries_per_s": sum(counts) / elapsed,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-docs", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    server = server_speed(
        args.num_docs, args.clients, args.seconds
    )  # first: the env part pins this process to one core
    env = env_speed(args.num_docs, args.steps)
    print(
        f"SearchEnv, {env['num_docs']:,} docs, one core: world {env['generate_s']:.1f} s, index {env['index_s']:.1f} s; "
        f"{env['steps']} steps ({env['searches']} uncached searches) in {env['episodes']} oracle episodes: "
        f"{env['steps_per_s']:.0f} steps/s, {env['searches_per_s']:.0f} searches/s "
        f"(target >= {ENV_TARGET:.0f} steps/s); oracle success {env['oracle_success']:.3f}"
    )
    print(
        f"retrieval server, {server['num_docs']:,} docs, {server['clients']} concurrent clients, one query per request: "
        f"{server['queries_per_s']:.0f} queries/s (target >= {SERVER_TARGET:.0f})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "server": server}, f, indent=2)


if __name__ == "__main__":
    main()
