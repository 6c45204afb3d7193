"""OpenEnv server speed: steps/s to concurrent clients, next to agentrl's own HTTP protocol.

    .venv/bin/python bench/openenv_speed.py [--env maze] [-o size=3] [--clients 16] [--seconds 10] [--json F]

The same env is served twice by ``agentrl envs serve`` in its own process (127.0.0.1, a free port):
``--protocol agentrl`` (HTTP, one request per call) and ``--protocol openenv`` (one WebSocket per
client). ``--clients`` threads each hold one env (``make("remote")``, ``make("openenv")``, and
openenv-core's own ``EnvClient`` when it is installed) and play episodes with random admissible
actions (seeded) for ``--seconds``; steps/s and resets/s are over all clients. The maze steps in
microseconds, so the figures are the protocols' own cost. Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from agentrl.serving import free_port


def start_server(env: str, options: list[str], protocol: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "agentrl.cli",
        "envs",
        "serve",
        env,
        "--protocol",
        protocol,
        "--port",
        str(port),
    ]
    cmd += [arg for opt in options for arg in ("-o", opt)]
    cmd += ["--max-envs", "64"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the {protocol} server for {env} did not start")
        time.sleep(0.2)


class CoreClient:
    """openenv-core's EnvClient behind the (obs, info) / 5-tuple interface the bench loop uses."""

    def __init__(self, url: str) -> None:
        from openenv.core.client_types import StepResult
        from openenv.core.env_client import EnvClient

        class Client(EnvClient):
            def _step_payload(self, action: str) -> dict[str, Any]:
                return {"message": action}

            def _parse_result(self, payload: dict[str, Any]) -> Any:
                return StepResult(payload["observation"], payload.get("reward"), payload.get("done", False))

            def _parse_state(self, payload: dict[str, Any]) -> Any:
                return payload

        client = Client(base_url=url)
        self.client = client.sync() if hasattr(client, "sync") else client

    def task_ids(self) -> list[str]:
        return []

    def reset(self, seed: int, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        result = self.client.reset(seed=seed, **(options or {}))
        return result.observation["text"], result.observation["info"]

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        result = self.client.step(action)
        obs = result.observation
        return obs["text"], result.reward, result.done and not obs["truncated"], obs["truncated"], obs["info"]

    def close(self) -> None:
        self.client.close()


def run_clients(connect: Callable[[], Any], clients: int, seconds: float) -> dict[str, float]:
    """``clients`` threads, each with its own env, playing until the clock runs out."""
    envs = [connect() for _ in range(clients)]
    tasks = list(envs[0].task_ids()) or [None]
    counts = [[0, 0] for _ in range(clients)]
    start_line = threading.Barrier(clients + 1)
    stop = threading.Event()

    def play(k: int) -> None:
        env, rng = envs[k], np.random.default_rng(k)
        start_line.wait()
        while not stop.is_set():
            task = tasks[int(rng.integers(len(tasks)))]
            _obs, info = env.reset(seed=int(rng.integers(1000)), options={"task_id": task} if task else None)
            counts[k][1] += 1
            for _ in range(30):
                action = (
                    str(rng.choice(info["admissible_actions"])) if info.get("admissible_actions") else "look"
                )
                _obs, _r, terminated, truncated, info = env.step(action)
                counts[k][0] += 1
                if terminated or truncated or stop.is_set():
                    break

    threads = [threading.Thread(target=play, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start_line.wait()
    begin = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    for env in envs:
        env.close()
    steps, resets = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return {"steps_per_s": steps / elapsed, "resets_per_s": resets / elapsed, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="maze")
    parser.add_argument("-o", "--option", action="append", default=None, help="env option key=value")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    options = args.option if args.option is not None else (["size=3"] if args.env == "maze" else [])

    from agentrl.envs import make

    rows: dict[str, dict[str, float]] = {}
    for protocol in ("agentrl", "openenv"):
        proc, url = start_server(args.env, options, protocol)
        try:
            if protocol == "agentrl":
                clients = {"agentrl protocol, make('remote')": functools.partial(make, "remote", url=url)}
            else:
                clients = {"OpenEnv protocol, make('openenv')": functools.partial(make, "openenv", url=url)}
                try:
                    import openenv.core.env_client  # noqa: F401

                    clients["OpenEnv protocol, openenv-core EnvClient"] = functools.partial(CoreClient, url)
                except ImportError:
                    pass
            for label, connect in clients.items():
                rows[label] = run_clients(connect, args.clients, args.seconds)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print(f"{args.env} {' '.join(options)}: {args.clients} concurrent clients, {args.seconds:g} s each")
    print(f"| {'server and client':<42} | steps/s | resets/s |")
    print(f"| {'-' * 42} | ------- | -------- |")
    for label, row in rows.items():
        print(f"| {label:<42} | {row['steps_per_s']:7.0f} | {row['resets_per_s']:8.0f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {"env": args.env, "options": options, "clients": args.clients, "rows": rows}, f, indent=1
            )


if __name__ == "__main__":
    main()
