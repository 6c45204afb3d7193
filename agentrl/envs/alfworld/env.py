"""ALFWorldEnv: household tasks in text on the real ALFWorld engine, as an agentrl AgentEnv.

Games come from a folder in the ``json_2.1.1`` layout: the ``data_dir`` argument, else
``$ALFWORLD_DATA`` (the real data), else a default generated set in the cache (made on first
use). Observations are the engine's text (the reset text ends with "Your task is to: ...");
``info`` carries the admissible commands, the task type and the task sentence. A command that is
not admissible changes nothing ("Nothing happens.", ``valid=False``) and costs a step.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from agentrl.envs.alfworld import paths
from agentrl.envs.alfworld.engine import GameEngine
from agentrl.envs.alfworld.expert import Expert, ExpertGaveUp
from agentrl.envs.alfworld.generate import DEFAULT_PER_TYPE, ensure_default_games
from agentrl.envs.alfworld.scenes import TASK_TYPES
from agentrl.envs.base import AgentEnv

NOTHING_HAPPENS = "Nothing happens."


def normalize_command(action: str) -> str:
    """ALFWorld commands are lower-case with single spaces."""
    return " ".join(action.strip().lower().split())


def task_sentence(obs: str) -> str:
    """The task from the reset text ("Your task is to: put a clean egg in microwave.")."""
    marker = "Your task is to: "
    return obs.rsplit(marker, 1)[-1].strip().rstrip(".") if marker in obs else ""


def real_data_dir() -> str | None:
    """``$ALFWORLD_DATA`` when it holds the real ``json_2.1.1`` data, else None.

    Importing alfworld sets ``ALFWORLD_DATA`` to its (usually empty) default cache, so the variable
    being set does not mean the data is there.
    """
    root = os.environ.get("ALFWORLD_DATA")
    return root if root and os.path.isdir(os.path.join(root, "json_2.1.1")) else None


def resolve_data_dir(
    data_dir: str | None, split: str, progress: bool = True, games_per_type: int = DEFAULT_PER_TYPE
) -> str:
    """``data_dir`` if given, else ``$ALFWORLD_DATA`` if it holds the data, else the generated games
    (``games_per_type`` per task type, made on first use)."""
    if data_dir:
        return data_dir
    return real_data_dir() or ensure_default_games(split, per_type=games_per_type, progress=progress)


class ALFWorldEnv(AgentEnv):
    """One ALFWorld game at a time; ``reset(options={"task_id": ...})`` picks the game.

    Args:
        split: "train", "valid_seen" or "valid_unseen" (or alfworld's "eval_in_distribution" /
            "eval_out_of_distribution").
        data_dir: a folder holding ``json_2.1.1`` (or that folder itself).
        task_types: keep only these task types (names as in ``TASK_TYPES``).
        reward_won: reward of the winning step (1; the ALFWorld RL papers use 10).
        max_steps: steps before the episode is truncated (50, as in ALFWorld evaluations).
        expert: add ``info["expert_action"]``, the handcoded expert's next command (slower steps).
        fast: use the engine caches of ``speedups`` (identical transcripts).
        games_per_type: size of the generated set used when there is neither ``data_dir`` nor the
            real data (10 per task type by default; a tiny model's SFT wants more train games).
    """

    def __init__(
        self,
        split: str = "train",
        data_dir: str | None = None,
        task_types: Sequence[str] | None = None,
        reward_won: float = 1.0,
        max_steps: int = 50,
        expert: bool = False,
        fast: bool = True,
        render_mode: str | None = None,
        games_per_type: int = DEFAULT_PER_TYPE,
    ) -> None:
        super().__init__(render_mode=render_mode)
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if task_types is not None:
            unknown = [t for t in task_types if t not in TASK_TYPES]
            if unknown:
                raise ValueError(f"unknown ALFWorld task type(s) {unknown}; choose from {list(TASK_TYPES)}")
        self.split = paths.canonical_split(split)
        if games_per_type < 1:
            raise ValueError(f"games_per_type must be >= 1, got {games_per_type}")
        self.data_dir = resolve_data_dir(data_dir, self.split, games_per_type=games_per_type)
        self.folder = paths.split_dir(self.data_dir, self.split)
        if not os.path.isdir(self.folder):
            raise FileNotFoundError(
                f"no ALFWorld split folder {self.folder} (expected <data_dir>/json_2.1.1/{self.split})"
            )
        self.games = paths.collect_games(self.folder, tuple(task_types) if task_types is not None else None)
        if not self.games:
            raise FileNotFoundError(
                f"no solvable ALFWorld games (game.tw-pddl + traj_data.json) under {self.folder}"
            )
        self._ids = [os.path.relpath(os.path.dirname(g), self.folder) for g in self.games]
        self._index = {tid: i for i, tid in enumerate(self._ids)}
        self.reward_won = float(reward_won)
        self.max_steps = max_steps
        self._engine = GameEngine(facts=expert, fast=fast)
        self._expert = Expert() if expert else None
        self._state: Any = None
        self._traj: dict[str, Any] = {}
        self._task_id = ""
        self._task = ""
        self._steps = 0
        self._won = False
        self._last_command = ""

    def task_ids(self) -> list[str]:
        return list(self._ids)

    @property
    def has_expert(self) -> bool:
        """Made with ``expert=True``: every step's info carries the handcoded expert's next action."""
        return self._expert is not None

    def _traj_data(self, game_file: str) -> dict[str, Any]:
        with open(os.path.join(os.path.dirname(game_file), "traj_data.json"), encoding="utf-8") as f:
            return json.load(f)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        task_id = options.get("task_id")
        if task_id is None:
            task_id = self._ids[int(self.np_random.integers(len(self._ids)))]
        if task_id not in self._index:
            raise ValueError(
                f"unknown ALFWorld task_id {task_id!r} in {self.folder} ({len(self._ids)} games; see task_ids())"
            )
        game_file = self.games[self._index[task_id]]
        if game_file != self._engine.game_file:
            self._traj = self._traj_data(game_file)
        self._engine.load(game_file)
        self._state = self._engine.reset()
        self._task_id = task_id
        self._steps = 0
        self._won = False
        self._last_command = ""
        obs = self._state["feedback"]
        if self._expert is not None:
            self._expert.reset(self._traj, obs, seed=seed)
        self._last_obs = obs
        self._task = task_sentence(obs)
        return obs, self._info(obs)

    def _info(self, obs: str, **extra: Any) -> dict[str, Any]:
        info = {
            "state_key": obs,
            "admissible_actions": list(self._state["admissible_commands"]),
            "task_id": self._task_id,
            "task_type": self._traj.get("task_type", ""),
            "task": self._task,
            "won": self._won,
            **extra,
        }
        if self._expert is not None:
            info["expert_action"] = self._next_expert_action()
        return info

    def _next_expert_action(self) -> str | None:
        assert self._expert is not None
        try:
            return self._expert.act(self._state, self._last_command)
        except ExpertGaveUp:
            return None

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("ALFWorldEnv.step() called before reset()")
        command = normalize_command(action) if isinstance(action, str) else ""
        valid = command in self._state["admissible_commands"]
        if valid:
            self._state = self._engine.step(command)
            obs = self._state["feedback"]
        else:  # the engine answers the same without changing anything; skip its work
            obs = NOTHING_HAPPENS
            self._state = {**dict(self._state), "feedback": obs}
        self._last_command = command
        self._steps += 1
        self._won = bool(self._state["won"])
        reward = self.reward_won if self._won else 0.0
        terminated = self._won
        truncated = not terminated and self._steps >= self.max_steps
        self._last_obs = obs
        return obs, reward, terminated, truncated, self._info(obs, valid=valid, success=self._won)

    def close(self) -> None:
        self._engine.close()
        self._state = None
