"""Run ALFWorld games on the real engine: TextWorld's PDDL backend with alfworld's wrappers.

This is what ``AlfredTWEnv`` registers for each game (``AlfredDemangler`` turning
``Apple_bar_...`` into "apple 1", and ``AlfredInfos``), minus its gym batching. One engine keeps
one TextWorld env and loads games into it: each new TextWorld env dlopens its own copy of Fast
Downward's library and never releases it.
"""

from __future__ import annotations

from typing import Any

import textworld
from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

from agentrl.envs.alfworld import speedups


class GameEngine:
    """``load(game_file)``, ``reset() -> state``, ``step(command) -> state`` on the real engine.

    ``facts=True`` also returns the state's facts (what the handcoded expert reads; costs time);
    ``fast=False`` runs the stock engine without the caches of ``speedups``.
    """

    def __init__(self, *, facts: bool = False, fast: bool = True) -> None:
        self.facts = facts
        self.fast = fast
        self.game_file: str | None = None
        self._env: Any = None

    def load(self, game_file: str) -> None:
        if game_file == self.game_file:
            return
        self._set_speed()
        if self._env is None:
            infos = textworld.EnvInfos(
                won=True, admissible_commands=True, facts=self.facts, extras=["gamefile"]
            )
            self._env = textworld.start(
                game_file, infos, wrappers=[AlfredDemangler(shuffle=False), AlfredInfos]
            )
        else:
            self._env.load(game_file)
        self.game_file = game_file

    def reset(self) -> Any:
        if self._env is None:
            raise RuntimeError("GameEngine.reset() before load(game_file)")
        self._set_speed()
        return self._env.reset()

    def step(self, command: str) -> Any:
        self._set_speed()
        state, _score, _done = self._env.step(command)
        return state

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env = None
        self.game_file = None

    def _set_speed(self) -> None:
        if self.fast:
            speedups.enable()
        else:
            speedups.disable()
