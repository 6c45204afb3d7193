"""The env registry: ``make("maze", **kw)``, also visible to gymnasium as ``agentrl/Maze-v0``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym

from agentrl.envs.base import AgentEnv
from agentrl.registry import Registry

ENVS: Registry[Callable[..., AgentEnv]] = Registry("env")
GYM_NAMES: Registry[str] = Registry("gymnasium name")  # env name -> the <name> of agentrl/<name>-v0


def gym_id(name: str) -> str:
    """gymnasium id of a registered env: "maze" -> "agentrl/Maze-v0" (or its registered gym_name)."""
    camel = "".join(part.capitalize() for part in name.replace("_", "-").split("-"))
    return f"agentrl/{GYM_NAMES.get(name) if name in GYM_NAMES else camel}-v0"


def register_env(
    name: str, factory: Callable[..., AgentEnv] | str, *, gym_name: str | None = None, overwrite: bool = False
) -> None:
    """Register an env factory (a class or callable, or "module:attr" imported lazily on first use).

    Lazy entry points keep ``import agentrl.envs`` light: ALFWorld or Playwright are only imported
    when their env is made. ``gym_name`` sets the gymnasium id ``agentrl/<gym_name>-v0``.
    """
    ENVS.register(name, _lazy(factory) if isinstance(factory, str) else factory, overwrite=overwrite)
    if gym_name:
        GYM_NAMES.register(name, gym_name, overwrite=True)
    gid = gym_id(name)
    if gid in gym.registry and overwrite:
        del gym.registry[gid]
    if gid not in gym.registry:
        gym.register(id=gid, entry_point=factory)


def _lazy(entry: str) -> Callable[..., AgentEnv]:
    def factory(**kwargs: Any) -> AgentEnv:
        module, _, attr = entry.partition(":")
        obj = __import__(module, fromlist=[attr])
        return getattr(obj, attr)(**kwargs)

    factory.__qualname__ = factory.__name__ = f"lazy({entry})"
    return factory


def make(name: str, **kwargs: Any) -> AgentEnv:
    """Build a registered env by name, e.g. ``make("maze", size=3)``."""
    return ENVS.get(name)(**kwargs)


def list_envs() -> list[str]:
    return ENVS.names()
