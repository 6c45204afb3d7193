"""MCP and streaming speed: steps/s of an MCP tool env (stdio and HTTP servers), and time to first token.

    .venv/bin/python bench/mcp_speed.py [--episodes 40] [--streams 5] [--max-tokens 64] [--json out.json]

1. ``make("mcp", ...)`` on the built-in calculator tasks, the expert solution played episode after
   episode, against ``agentrl envs serve-mcp tools`` over stdio (one server process for the env) and
   over streamable HTTP on 127.0.0.1 (a fresh MCP session per episode, the HTTP default); the local
   ``ToolEnv`` on the same tasks for reference. Every step with a call is one MCP round trip.
2. ``agentrl serve`` on a tiny CPU model: time to the first content chunk of a streamed completion
   (``stream=true``) and to the whole answer, against the time of the same request unstreamed.
Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from typing import Any

from agentrl.envs import make
from agentrl.envs.mcp_server import http_server, tool_backend
from agentrl.envs.tools import builtin_tool_env, solution_action


def play(env: Any, episodes: int) -> dict[str, float]:
    """Expert episodes on the env; steps/s over all steps (resets included in the time)."""
    ids = list(env.tasks)
    steps, start = 0, time.perf_counter()
    for e in range(episodes):
        task = env.tasks[ids[e % len(ids)]]
        env.reset(seed=e, options={"task_id": task.id})
        for turn in task.solution:
            _, _, _, _, info = env.step(solution_action(turn))
            assert info["valid"], info
            steps += 1
        _, reward, _, _, _ = env.step(task.final)
        assert reward == 1.0
        steps += 1
    elapsed = time.perf_counter() - start
    return {
        "episodes": episodes,
        "steps": steps,
        "seconds": round(elapsed, 3),
        "steps_per_s": round(steps / elapsed, 1),
    }


def env_speeds(episodes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    local = builtin_tool_env(suite="calculator", num_tasks=20)
    out["local ToolEnv"] = play(local, episodes)
    command = [sys.executable, "-m", "agentrl.cli", "envs", "serve-mcp", "tools", "-o", "suite=calculator"]
    start = time.perf_counter()
    env = make("mcp", server=command, tasks="calculator")
    made = time.perf_counter() - start
    out["mcp stdio"] = {**play(env, episodes), "connect_s": round(made, 2)}
    env.close()
    with http_server(tool_backend("tools", suite="calculator")) as server:
        start = time.perf_counter()
        env = make("mcp", server=f"{server.url}/mcp", tasks="calculator")
        made = time.perf_counter() - start
        out["mcp http (session per episode)"] = {**play(env, episodes), "connect_s": round(made, 2)}
        env.close()
        env = make("mcp", server=f"{server.url}/mcp", tasks="calculator", session_per_episode=False)
        out["mcp http (one session)"] = play(env, episodes)
        env.close()
    return out


def first_token(streams: int, max_tokens: int) -> dict[str, Any]:
    from openai import OpenAI

    from agentrl.envs.maze import MazeEnv
    from agentrl.policies.server import PolicyServer
    from agentrl.policies.tiny import build_tiny_model, env_corpus

    model_dir = build_tiny_model(f"{tempfile.mkdtemp()}/tiny", env_corpus(MazeEnv(), ["maze-0", "maze-1"]))
    messages = [{"role": "user", "content": "You are in the hall. Admissible actions: go north, go east"}]
    ttft, total, unstreamed = [], [], []
    with PolicyServer(model_dir, served_model_name="tiny", device="cpu") as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        kwargs = {"model": "tiny", "messages": messages, "temperature": 0, "max_tokens": max_tokens}
        client.chat.completions.create(**kwargs)  # warm-up
        for _ in range(streams):
            start = time.perf_counter()
            first = None
            for chunk in client.chat.completions.create(**kwargs, stream=True):
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - start
            total.append(time.perf_counter() - start)
            ttft.append(first if first is not None else total[-1])
            start = time.perf_counter()
            client.chat.completions.create(**kwargs)
            unstreamed.append(time.perf_counter() - start)
    return {
        "max_tokens": max_tokens,
        "first_token_ms": round(1000 * statistics.median(ttft), 1),
        "streamed_total_ms": round(1000 * statistics.median(total), 1),
        "unstreamed_ms": round(1000 * statistics.median(unstreamed), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--streams", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results: dict[str, Any] = {"env": env_speeds(args.episodes)}
    for name, r in results["env"].items():
        extra = f", connect {r['connect_s']} s" if "connect_s" in r else ""
        print(f"{name:<32} {r['steps_per_s']:>8.1f} steps/s ({r['steps']} steps in {r['seconds']} s{extra})")
    results["streaming"] = first_token(args.streams, args.max_tokens)
    s = results["streaming"]
    print(
        f"agentrl serve, tiny CPU model, {s['max_tokens']} tokens: first token {s['first_token_ms']} ms, "
        f"streamed answer {s['streamed_total_ms']} ms, unstreamed answer {s['unstreamed_ms']} ms (medians)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
