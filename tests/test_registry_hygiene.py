"""Tests leave no registration behind: every registry is scoped around every test (conftest.py).

The first two tests run in file order: one registers into every registry, the next finds none of it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest

import agentrl
from agentrl.envs import gym_id, list_envs, make, register_env
from agentrl.envs.maze import MazeEnv
from agentrl.registry import Registry, all_registries
from tests.registry_check import REGISTRY_MODULES, leftovers, registration_state

ROOT = Path(agentrl.__file__).parent
NAME = "test-leftover"


def test_registers_into_every_registry():
    register_env(NAME, MazeEnv, gym_name="Leftover")
    for registry in all_registries():
        if NAME not in registry:
            registry.register(NAME, object())
    assert all(NAME in registry for registry in all_registries())
    assert "agentrl/Leftover-v0" in gym.registry and isinstance(make(NAME), MazeEnv)


def test_the_registrations_of_the_test_before_are_gone():
    assert [r.kind for r in all_registries() if NAME in r] == []
    assert NAME not in list_envs() and "agentrl/Leftover-v0" not in gym.registry
    assert gym_id(NAME) == "agentrl/TestLeftover-v0"  # the gymnasium name went with it


def test_leftovers_name_what_was_added_removed_or_replaced():
    before = registration_state()
    register_env(NAME, MazeEnv, gym_name="Leftover")
    from agentrl.credit.base import ESTIMATORS

    ESTIMATORS.register("grpo", object(), overwrite=True)
    assert sorted(leftovers(before, registration_state())) == [
        f"env registry: left behind ['{NAME}']",
        "estimator registry: replaced ['grpo']",
        "gymnasium ids: left behind ['agentrl/Leftover-v0']",
        f"gymnasium name registry: left behind ['{NAME}']",
    ]
    assert leftovers(registration_state(), registration_state()) == []


def _modules_defining_a_registry() -> set[str]:
    out = set()
    for path in ROOT.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only
            value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
            if isinstance(value, ast.Call) and getattr(value.func, "id", None) == Registry.__name__:
                parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
                out.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def test_conftest_imports_every_module_that_defines_a_registry():
    """A registry made after the autouse fixture starts would not be scoped: conftest imports them all."""
    assert _modules_defining_a_registry() == set(REGISTRY_MODULES)


@pytest.mark.slow
def test_no_module_registers_anything_beyond_what_conftest_imports():
    """Built-ins registered by a module imported only inside a test would be undone after it: importing
    every agentrl module adds nothing to what the registry modules hold."""
    code = f"""
import importlib, pkgutil
import agentrl
from agentrl.registry import all_registries
for m in {list(REGISTRY_MODULES)!r}:
    importlib.import_module(m)
before = {{r.kind: r.names() for r in all_registries()}}
for info in pkgutil.walk_packages(agentrl.__path__, "agentrl."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
after = {{r.kind: r.names() for r in all_registries()}}
print({{k: sorted(set(v) - set(before.get(k, []))) for k, v in after.items() if v != before.get(k)}})
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "{}"
