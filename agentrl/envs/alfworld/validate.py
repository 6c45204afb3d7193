"""Check generated games in worker subprocesses: a game is kept only if the expert wins it.

Malformed PDDL makes Fast Downward call ``exit()``, which would take the caller down with it, so
games are played in child processes (``python -m agentrl.envs.alfworld.validate``), one JSON line
per game in and out. A child that dies marks the game it was playing as unsolvable and a fresh
child goes on with the rest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Verdict:
    game_file: str
    solvable: bool
    walkthrough: list[str] = field(default_factory=list)
    error: str = ""


def _worker_main() -> None:
    """Child process: read game paths (one per line), answer one JSON verdict per line."""
    from agentrl.envs.alfworld.engine import GameEngine
    from agentrl.envs.alfworld.expert import solve

    max_steps = int(os.environ.get("AGENTRL_ALFWORLD_VALIDATE_STEPS", "50"))
    # verdicts get their own descriptor; whatever the engine prints (Python or C) goes to stderr
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    engine = GameEngine(facts=True)
    for line in sys.stdin:
        game_file = line.strip()
        if not game_file:
            continue
        try:
            won, actions = solve(game_file, max_steps=max_steps, engine=engine)
            verdict = {
                "game_file": game_file,
                "solvable": won,
                "walkthrough": actions if won else [],
                "error": "" if won else "expert did not win",
            }
        except Exception as e:
            verdict = {
                "game_file": game_file,
                "solvable": False,
                "walkthrough": [],
                "error": f"{type(e).__name__}: {e}",
            }
        results.write(json.dumps(verdict) + "\n")
        results.flush()


def _feed(stdin: Any, games: list[str]) -> None:
    try:
        for g in games:
            stdin.write(g + "\n")
        stdin.close()
    except (BrokenPipeError, OSError, ValueError):
        pass  # the child died; its exit is handled by the reader


def _run_chunk(games: list[str], max_steps: int, on_verdict: Callable[[Verdict], None]) -> None:
    pending = list(games)
    env = {**os.environ, "AGENTRL_ALFWORLD_VALIDATE_STEPS": str(max_steps)}
    while pending:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentrl.envs.alfworld.validate"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        # fed from a thread: a long list must not fill the pipe while verdicts wait to be read
        feeder = threading.Thread(target=_feed, args=(proc.stdin, list(pending)), daemon=True)
        feeder.start()
        for line in proc.stdout:
            try:
                v = json.loads(line)
            except ValueError:
                continue  # stray output from the engine
            if v.get("game_file") != (pending[0] if pending else None):
                continue
            pending.pop(0)
            on_verdict(Verdict(v["game_file"], bool(v["solvable"]), list(v["walkthrough"]), v["error"]))
        code = proc.wait()
        feeder.join()
        if pending:  # the child died on pending[0]
            on_verdict(Verdict(pending.pop(0), False, [], f"validator process died (exit code {code})"))


def validate_games(
    games: Sequence[str],
    *,
    workers: int = 2,
    max_steps: int = 50,
    on_verdict: Callable[[Verdict], None] | None = None,
) -> dict[str, Verdict]:
    """Verdict per game file, from ``workers`` child processes; ``on_verdict`` sees each as it lands."""
    results: dict[str, Verdict] = {}
    lock = threading.Lock()

    def record(v: Verdict) -> None:
        with lock:
            results[v.game_file] = v
            if on_verdict is not None:
                on_verdict(v)

    chunks = [list(games[i::workers]) for i in range(max(1, workers))]
    threads = [
        threading.Thread(target=_run_chunk, args=(c, max_steps, record), daemon=True) for c in chunks if c
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


if __name__ == "__main__":
    _worker_main()
