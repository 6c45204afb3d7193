"""What resuming an episode at a branch point costs, per env: snapshot + restore against a replay of
the prefix (the same seeded reset, then its actions), next to one ordinary step.

    .venv/bin/python bench/branch_cost.py [--envs maze,tools,search,webshop,bfcl] [--prefix 20] [--repeats 20]
    .venv/bin/python bench/branch_cost.py --envs alfworld --alfworld-games DIR   # generated games

Prints one row per env: the prefix length actually played (an episode may end sooner), ms per
step, ms per snapshot, ms per restore, ms per replay of the prefix, and replay / restore. Figures
only (no assertions): they depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

from agentrl.envs import make
from agentrl.envs.branching import Prefix, replay

ENV_KWARGS: dict[str, dict[str, Any]] = {
    "maze": {"size": 4, "n_doors": 2, "max_steps": 60},
    "tools": {"suite": "store"},
    "search": {},
    "webshop": {},
    "bfcl": {},
    "alfworld": {},
}
TEXT_ACTIONS = [
    "search[red shirt]",
    "look",
    "click[1]",
    '<tool_call>{"name": "x", "arguments": {}}</tool_call>',
]


def _timed(fn: Any, repeats: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def measure(name: str, kwargs: dict[str, Any], prefix_len: int, repeats: int) -> dict[str, Any]:
    env = make(name, **kwargs)
    task = next(iter(env.task_ids()))
    rng = np.random.default_rng(0)
    _obs, info = env.reset(seed=0, options={"task_id": task})
    actions: list[str] = []
    step_ms = []
    for _k in range(prefix_len):
        choices = info.get("admissible_actions") or TEXT_ACTIONS
        action = str(choices[int(rng.integers(len(choices)))])
        t = time.perf_counter()
        _obs, _r, terminated, truncated, info = env.step(action)
        step_ms.append((time.perf_counter() - t) * 1000)
        actions.append(action)
        if terminated or truncated:
            break
    if terminated or truncated:  # resume before the last step, so the episode is still running
        actions = actions[:-1]
        env.reset(seed=0, options={"task_id": task})
        for a in actions:
            env.step(a)
    prefix = Prefix(0, {"task_id": task}, tuple(actions))
    row: dict[str, Any] = {"env": name, "prefix": len(actions), "step_ms": statistics.median(step_ms)}
    if env.can_snapshot:
        snap = env.snapshot()
        row["snapshot_ms"] = _timed(env.snapshot, repeats)
        row["restore_ms"] = _timed(lambda: env.restore(snap), repeats)
    row["replay_ms"] = _timed(lambda: replay(env, prefix), max(3, repeats // 5))
    env.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envs", default="maze,tools,search,webshop,bfcl")
    parser.add_argument("--prefix", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--alfworld-games", default=None, help="a generated games directory (data_dir)")
    args = parser.parse_args()
    print("| env | prefix | step ms | snapshot ms | restore ms | replay ms | replay / restore |")
    print("|---|---|---|---|---|---|---|")
    for name in [n.strip() for n in args.envs.split(",") if n.strip()]:
        kwargs = dict(ENV_KWARGS.get(name, {}))
        if name == "alfworld" and args.alfworld_games:
            kwargs["data_dir"] = args.alfworld_games
        r = measure(name, kwargs, args.prefix, args.repeats)
        snap, restore = r.get("snapshot_ms"), r.get("restore_ms")
        ratio = f"{r['replay_ms'] / restore:,.0f}x" if restore else "replay only"
        print(
            f"| {name} | {r['prefix']} | {r['step_ms']:.3f} | {'—' if snap is None else f'{snap:.3f}'} | "
            f"{'—' if restore is None else f'{restore:.3f}'} | {r['replay_ms']:.2f} | {ratio} |"
        )


if __name__ == "__main__":
    main()
