"""WebShop speed: text env steps/s, site requests/s under concurrent clients, browser seconds per action.

    .venv/bin/python bench/webshop_speed.py [--episodes 500] [--clients 16] [--seconds 5] [--browser-goals 10]

1. Text env, pinned to one core: random-agent and oracle episodes over the test goals (steps/s
   including resets). Target >= 2,000 steps/s.
2. The site served by uvicorn in its own process on 127.0.0.1; N concurrent clients (threads,
   keep-alive) each shop: new session, search, open an item, pick an option, read a sub-page, go
   back; requests/s counted over a fixed time.
3. The browser env (Debian Chromium via Playwright) against that server: seconds per action
   (median, p90) for oracle episodes. Target: median click-to-observation <= 150 ms.
Targets are printed, not asserted. Results also go to stdout as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import httpx

from agentrl.envs.webshop import WebShopBrowserEnv, WebShopEnv
from agentrl.envs.webshop.agents import oracle_actions, random_policy, run_episode, scripted_policy


def text_env_speed(episodes: int) -> dict[str, float]:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    env = WebShopEnv("test")
    ids = list(env.task_ids())[:episodes]
    out: dict[str, float] = {}
    for name, make_policy in (
        ("random", lambda t: random_policy(int(t))),
        ("oracle", lambda t: scripted_policy(oracle_actions(env.shop, int(t)))),
    ):
        steps, successes, start = 0, 0, time.perf_counter()
        for t in ids:
            result = run_episode(env, make_policy(t), t)
            steps += result["steps"]
            successes += result["success"]
        elapsed = time.perf_counter() - start
        out[f"{name}_steps_per_s"] = steps / elapsed
        out[f"{name}_success"] = successes / len(ids)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentrl.envs.webshop", "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/static-probe", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the WebShop server did not start within 60 s")


def site_speed(url: str, clients: int, seconds: float) -> dict[str, float]:
    shop = WebShopEnv("test").shop
    counts = [0] * clients
    errors = [0] * clients
    stop = time.monotonic() + seconds

    def shopper(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            goal = k
            while time.monotonic() < stop:
                loc = c.get(f"/?goal={goal % 500}", follow_redirects=False).headers["location"]
                actions = oracle_actions(shop, goal % 500)
                plan = [
                    ("search", actions[0][7:-1]),
                    ("click", actions[-2][6:-1] if len(actions) > 2 else "< prev"),
                    ("click", "description"),
                    ("click", "< prev"),
                    ("click", "back to search"),
                ]
                for verb, arg in plan:
                    field = "search_query" if verb == "search" else "label"
                    r = c.post(f"{loc}/{verb}", data={field: arg}, follow_redirects=False)
                    page = c.get(loc)
                    counts[k] += 2
                    errors[k] += (r.status_code != 303) + (page.status_code != 200)
                goal += clients

    start = time.perf_counter()
    threads = [threading.Thread(target=shopper, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {
        "requests_per_s": sum(counts) / elapsed,
        "requests": sum(counts),
        "errors": sum(errors),
        "clients": clients,
    }


def browser_speed(url: str, goals: int) -> dict[str, float]:
    env = WebShopBrowserEnv("test", base_url=url)
    times: list[float] = []
    per_kind: dict[str, list[float]] = {"search": [], "click": []}
    try:
        for goal in range(goals):
            env.reset(options={"task_id": str(goal)})
            for action in oracle_actions(env.shop, goal):
                start = time.perf_counter()
                env.step(action)
                dt = time.perf_counter() - start
                times.append(dt)
                per_kind[action.split("[", 1)[0]].append(dt)
    finally:
        env.close()
    q = statistics.quantiles(times, n=10)
    return {
        "median_s": statistics.median(times),
        "p90_s": q[-1],
        "actions": len(times),
        "median_click_s": statistics.median(per_kind["click"]),
        "median_search_s": statistics.median(per_kind["search"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--browser-goals", type=int, default=10)
    args = parser.parse_args()
    results: dict[str, Any] = {"text": text_env_speed(args.episodes)}
    t = results["text"]
    print(
        f"text env (1 core): random {t['random_steps_per_s']:,.0f} steps/s (success {t['random_success']:.1%}), "
        f"oracle {t['oracle_steps_per_s']:,.0f} steps/s (success {t['oracle_success']:.1%}); target >= 2,000"
    )
    port = free_port()
    server = start_server(port)
    url = f"http://127.0.0.1:{port}"
    try:
        s = results["site"] = site_speed(url, args.clients, args.seconds)
        print(
            f"site: {s['requests_per_s']:,.0f} requests/s with {s['clients']} concurrent clients "
            f"({s['requests']} requests, {s['errors']} errors)"
        )
        b = results["browser"] = browser_speed(url, args.browser_goals)
        print(
            f"browser env: median {b['median_s'] * 1000:.0f} ms per action (click {b['median_click_s'] * 1000:.0f} ms, "
            f"search {b['median_search_s'] * 1000:.0f} ms), p90 {b['p90_s'] * 1000:.0f} ms over {b['actions']} actions; "
            "target median click <= 150 ms"
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
