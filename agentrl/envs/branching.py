"""Resume an episode from a prefix: the building block of branching (tree-shaped) rollouts.

A branch point is where an episode stood after some actions: the seeded reset that started it
(``Prefix``), the actions taken, the observation and info there, and, where the env can copy its
episode state (``AgentEnv.snapshot_fields``), a snapshot. ``resume`` puts any env instance of the
same kind back at that point, by one of two modes:

- ``restore``: copy the snapshot back; costs one deep copy, whatever the prefix's length.
- ``replay``: the same seeded reset, then the prefix's actions. Every env that keeps the contract
  (identical dynamics for the same task, seed and actions, which ``check_env`` verifies) supports
  it; it costs the prefix's steps (ALFWorld on the real engine, search), and it checks that the
  replay ends where the original stood, so a nondeterministic env fails loudly, not silently.

``mode="auto"`` restores where a snapshot exists and the env can restore, else replays.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agentrl.envs.base import AgentEnv, EnvSnapshot

__all__ = [
    "MODES",
    "BranchError",
    "BranchPoint",
    "Prefix",
    "branch_point",
    "replay",
    "resume",
    "supported_modes",
]

MODES = ("auto", "restore", "replay")
Mode = Literal["auto", "restore", "replay"]


class BranchError(RuntimeError):
    """An episode could not be resumed at a branch point (the message says why)."""


@dataclass(frozen=True)
class Prefix:
    """How an episode started (``reset(seed=seed, options=options)``) and the actions since."""

    seed: int | None
    options: dict[str, Any] = field(default_factory=dict)
    actions: tuple[str, ...] = ()

    def then(self, action: str) -> Prefix:
        """The prefix one action longer."""
        return Prefix(self.seed, self.options, (*self.actions, action))


@dataclass(frozen=True)
class BranchPoint:
    """An episode after ``len(prefix.actions)`` steps: its observation and info there, and a
    snapshot of the env when the env can take one."""

    prefix: Prefix
    obs: str
    info: dict[str, Any]
    snapshot: EnvSnapshot | None = None

    @property
    def turn(self) -> int:
        return len(self.prefix.actions)


def branch_point(env: Any, prefix: Prefix, obs: str, info: dict[str, Any]) -> BranchPoint:
    """The branch point ``env`` stands at now (it played ``prefix`` and saw ``obs``/``info``)."""
    snap = env.snapshot() if getattr(env, "can_snapshot", False) else None
    return BranchPoint(prefix, obs, copy.deepcopy(info), snap)


def replay(env: Any, prefix: Prefix) -> tuple[str, dict[str, Any]]:
    """Reset ``env`` as the prefix did and take its actions; the last observation and info."""
    obs, info = env.reset(seed=prefix.seed, options=copy.deepcopy(prefix.options))
    for t, action in enumerate(prefix.actions):
        obs, _reward, terminated, truncated, info = env.step(action)
        if (terminated or truncated) and t < len(prefix.actions) - 1:
            raise BranchError(
                f"replaying the prefix: the episode ended after action {t} of {len(prefix.actions)}; "
                "the env does not replay deterministically (check_env tells)"
            )
    return obs, info


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (ValueError, TypeError):  # e.g. numpy arrays in an info
        return repr(a) == repr(b)


def resume(env: Any, point: BranchPoint, mode: Mode = "auto") -> tuple[str, dict[str, Any], str]:
    """Put ``env`` at ``point``; returns (observation, info, the mode used: "restore" or "replay").

    ``restore`` needs a snapshot (taken where the env can snapshot) and an env of the same class;
    ``replay`` raises ``BranchError`` when the replayed episode does not end at the recorded
    observation (a nondeterministic env)."""
    if mode not in MODES:
        raise ValueError(f"resume mode must be one of {MODES}, got {mode!r}")
    can_restore = point.snapshot is not None and getattr(env, "can_snapshot", False)
    if mode == "restore" and not can_restore:
        why = "the branch point has no snapshot" if point.snapshot is None else "the env cannot restore"
        raise BranchError(f"cannot restore: {why}; use mode='replay' (or 'auto')")
    if can_restore and mode != "replay":
        assert point.snapshot is not None
        env.restore(point.snapshot)
        return point.obs, copy.deepcopy(point.info), "restore"
    obs, info = replay(env, point.prefix)
    if obs != point.obs or not _same(info.get("state_key"), point.info.get("state_key")):
        raise BranchError(
            f"replaying {point.turn} action(s) did not reach the recorded state: the env is not "
            "deterministic for the same seed, task and actions"
        )
    return obs, info, "replay"


def supported_modes(env: AgentEnv) -> Sequence[str]:
    """The resume modes an env offers: ("restore", "replay") or ("replay",)."""
    return ("restore", "replay") if env.can_snapshot else ("replay",)
