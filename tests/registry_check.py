"""What the autouse fixture in conftest.py scopes, and how it tells that a test left a registration behind.

Every module that defines a registry is imported before the first test (``REGISTRY_MODULES``;
test_registry_hygiene.py checks the list is complete), so every test runs inside every registry's
``scoped()``. ``register_env`` also adds an ``agentrl/<Name>-v0`` id to gymnasium's registry, which
the fixture restores too.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from agentrl.registry import all_registries

REGISTRY_MODULES = (
    "agentrl.agents.formats",
    "agentrl.credit.base",
    "agentrl.envs.registration",
    "agentrl.policies.base",
    "agentrl.trainers.experts",
    "agentrl.trainers.losses",
    "agentrl.trainers.schedule",
)


def registration_state() -> dict[str, dict[str, Any]]:
    """Every registry's entries (and gymnasium's), keyed by registry, to compare before and after."""
    state = {f"{r.kind} registry": {name: r.get(name) for name in r.names()} for r in all_registries()}
    state["gymnasium ids"] = dict(gym.registry)
    return state


def leftovers(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> list[str]:
    """What changed in the registries that existed before: names added, removed or replaced."""
    out = []
    for key, entries in before.items():
        now = after.get(key, {})
        added = sorted(set(now) - set(entries))
        removed = sorted(set(entries) - set(now))
        replaced = sorted(n for n in set(now) & set(entries) if now[n] is not entries[n])
        for what, names in (("left behind", added), ("removed", removed), ("replaced", replaced)):
            if names:
                out.append(f"{key}: {what} {names}")
    return out
