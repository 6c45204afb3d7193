"""AgentEnv: a gymnasium.Env whose observations and actions are text.

Contract (every env keeps it): ``reset(seed=None, options={"task_id": ...}) -> (obs, info)`` and
``step(action) -> (obs, reward, terminated, truncated, info)``. ``info`` always carries
``state_key`` (the raw observation without history or scaffolding), and after a step also
``valid`` and ``success``; envs with a finite action set add ``admissible_actions``; envs with
verifiable per-turn scores add ``turn_reward``. The same task and seed give an identical initial
state and identical dynamics, which is what group resets rely on. A bad action never raises: it
is a no-op with ``valid=False``.

Resuming an episode from a prefix (branching rollouts): every env that keeps the contract can be
*replayed* (the same seeded reset, then the prefix's actions; ``agentrl.envs.branching``). An env
whose episode state is cheap to copy also declares ``snapshot_fields``, the attributes that hold
it: ``snapshot()`` then copies them with the RNG's state, and ``restore()`` puts a copy back, so the
episode continues exactly as it would have from the snapshot, at the cost of one copy.
"""

from __future__ import annotations

import copy
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
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


@dataclass(frozen=True)
class EnvSnapshot:
    """A copy of one env's episode state: ``env`` (the class name, checked on restore), the
    ``snapshot_fields`` values, and the RNG's bit-generator state (None before the first reset)."""

    env: str
    fields: dict[str, Any]
    rng: dict[str, Any] | None


class AgentEnv(gym.Env[str, str]):
    """Base class of every agentrl environment (see the module docstring for the contract)."""

    metadata = {"render_modes": ["ansi"]}  # noqa: RUF012 (gymnasium declares it an instance attribute)
    # attributes that hold the whole episode state (with the RNG): declared, snapshot() copies them;
    # those also in snapshot_shared are never changed in place (a task's data) and are kept by reference
    snapshot_fields: ClassVar[tuple[str, ...]] = ()
    snapshot_shared: ClassVar[tuple[str, ...]] = ()

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

    @property
    def can_snapshot(self) -> bool:
        """Whether ``snapshot``/``restore`` work here (else resume from a prefix by replaying it)."""
        return bool(self.snapshot_fields)

    def snapshot(self) -> EnvSnapshot:
        """A deep copy of the episode state: ``restore`` it (any number of times) to continue from here."""
        if not self.can_snapshot:
            raise NotImplementedError(
                f"{type(self).__name__} declares no snapshot_fields: resume its episodes by replay "
                "(agentrl.envs.branching.resume(..., mode='replay'))"
            )
        rng = self._np_random
        return EnvSnapshot(
            env=type(self).__name__,
            fields={name: self._copied(name, getattr(self, name)) for name in self.snapshot_fields},
            rng=None if rng is None else dict(copy.deepcopy(rng.bit_generator.state)),
        )

    def _copied(self, name: str, value: Any) -> Any:
        return value if name in self.snapshot_shared else copy.deepcopy(value)

    def restore(self, snapshot: EnvSnapshot) -> None:
        """Put a snapshot's episode state back (a copy of it: the snapshot stays reusable)."""
        if not self.can_snapshot:
            self.snapshot()  # raises the explanation
        if not isinstance(snapshot, EnvSnapshot) or snapshot.env != type(self).__name__:
            got = snapshot.env if isinstance(snapshot, EnvSnapshot) else type(snapshot).__name__
            raise ValueError(f"{type(self).__name__}.restore needs one of its own snapshots, got {got!r}")
        for name in self.snapshot_fields:
            setattr(self, name, self._copied(name, snapshot.fields[name]))
        if snapshot.rng is not None:
            kind = snapshot.rng["bit_generator"]  # e.g. "PCG64", gymnasium's
            if self._np_random is None or type(self._np_random.bit_generator).__name__ != kind:
                self.np_random = np.random.Generator(getattr(np.random, kind)())
            self.np_random.bit_generator.state = copy.deepcopy(snapshot.rng)

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self._last_obs
        return None
