"""The engine caches are pure: every transcript is byte-identical with and without them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytest.importorskip(
    "alfworld", reason="needs the alfworld extra: pip install alfworld==0.4.2 'textworld[pddl]'"
)

from agentrl.envs.alfworld import speedups
from agentrl.envs.alfworld.engine import GameEngine
from tests.test_alfworld import SPLIT, alf_cache, games_dir  # noqa: F401 - shared session fixtures


def _transcript(engine: GameEngine, game_file: str) -> bytes:
    """The winning walkthrough, then a random walk, from two resets: every text the engine produced."""
    engine.load(game_file)
    assert speedups.enabled() is engine.fast
    with open(game_file) as f:
        walkthrough = json.load(f)["walkthrough"]
    rng = random.Random(0)
    records = []
    for plan in (walkthrough, None):
        state = engine.reset()
        records.append([state["feedback"], state["admissible_commands"], sorted(map(str, state["facts"]))])
        for t in range(len(plan) if plan else 10):
            command = plan[t] if plan else rng.choice(state["admissible_commands"])
            state = engine.step(command)
            records.append(
                [
                    command,
                    state["feedback"],
                    state["admissible_commands"],
                    state["won"],
                    sorted(map(str, state["facts"])),
                ]
            )
        if plan:
            assert state["won"], "the stored walkthrough must win the game"
    return json.dumps(records).encode()


@pytest.mark.slow
def test_transcripts_identical_with_and_without_speedups(games_dir: Path) -> None:  # noqa: F811
    games = sorted(str(p) for p in (games_dir / "json_2.1.1" / SPLIT).glob("*/trial_T*/game.tw-pddl"))
    assert len(games) == 6
    stock_engine, fast_engine = GameEngine(facts=True, fast=False), GameEngine(facts=True, fast=True)
    try:
        for game in games:  # one engine each, switching games as a long-lived env does
            stock = _transcript(stock_engine, game)
            fast = _transcript(fast_engine, game)
            assert len(stock) > 1000
            assert fast == stock, f"speed-ups changed the transcript of {game}"
    finally:
        stock_engine.close()
        fast_engine.close()
        speedups.enable()
