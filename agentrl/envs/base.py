"""AgentEnv: a gymnasium.Env whose observations and actions are text.

Contract (every env keeps it): ``reset(seed=None, options={"task_id": ...}) -> (obs, info)`` and
``step(action) -> (obs, reward, terminated, truncated, info)``. ``info`` always carries
``state_key`` (the raw observation without history or scaffolding), and after a step also
``valid`` and ``success``; envs with a finite action set add ``admissible_actions``; envs with
verifiable per-turn scores add ``turn_reward``. The same task and seed give an identical initial
state and identical dynamics, which is what group resets rely on. A bad action never raises: it
is a no-op with ``valid=False``.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
from gymnasium.spaces import Text

RESET_INFO_KEYS = ("state_key",)
STEP_INFO_KEYS = ("state_key", "valid", "success")

_SAMPLE_CHARSET = string.ascii_letters + string.digits + " []_-.,"


class FreeText(Text):
    """A Text space that contains any string up to ``max_length`` characters.

    gymnasium's Text only admits characters of its charset; agent text is arbitrary Unicode.
    The charset is kept for ``sample`` (random actions, used by gymnasium's checker).
    """

    def __init__(self, max_length: int = 100_000, *, min_length: int = 0, seed: int | None = None) -> None:
        super().__init__(max_length=max_length, min_length=min_length, charset=_SAMPLE_CHARSET, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        if mask is None and probability is None:
            length = int(self.np_random.integers(self.min_length, min(self.max_length, 40) + 1))
            return super().sample(mask=(length, None))
        return super().sample(mask=mask, probability=probability)

    def __repr__(self) -> str:
        return f"FreeText({self.min_length}, {self.max_length})"


class AgentEnv(gym.Env[str, str]):
    """Base class of every agentrl environment (see the module docstring for the contract)."""

    metadata = {"render_modes": ["ansi"]}  # noqa: RUF012 (gymnasium declares it an instance attribute)

    def __init__(self, render_mode: str | None = None, max_text_length: int = 100_000) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode {render_mode!r} is not supported; choose one of {self.metadata['render_modes']}"
            )
        self.render_mode = render_mode
        self.observation_space = FreeText(max_text_length)
        self.action_space = FreeText(max_text_length)
        self._last_obs = ""

    def task_ids(self) -> Sequence[str]:
        """Ids accepted by ``reset(options={"task_id": ...})``; empty when tasks are not enumerable."""
        return ()

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self._last_obs
        return None
