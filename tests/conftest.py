"""Fixtures shared by test modules."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest

from agentrl.envs.maze import MazeEnv
from agentrl.policies.tiny import build_tiny_model, env_corpus, format_corpus
from agentrl.registry import all_registries
from tests.registry_check import REGISTRY_MODULES, leftovers, registration_state

for _module in REGISTRY_MODULES:  # every registry exists before any test registers into it
    importlib.import_module(_module)


@pytest.fixture(autouse=True)
def registrations_undone():
    """Whatever a test registers (estimators, losses, schedules, envs, formats, ...) is gone after it,
    gymnasium ids of registered envs included; a registration still there afterwards fails the test."""
    before = registration_state()
    gym_specs = dict(gym.registry)
    with ExitStack() as stack:
        for registry in all_registries():
            stack.enter_context(registry.scoped())
        yield
    for gid in set(gym.registry) - set(gym_specs):
        del gym.registry[gid]
    gym.registry.update(gym_specs)
    left = leftovers(before, registration_state())
    assert not left, "the test left registrations behind: " + "; ".join(left)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Callable[..., Path]:
    """Factory of tiny maze models, each built once per session: ``tiny_model(**options) -> model dir``.

    The tokenizer learns from ``steps_per_task`` random steps of each of the first ``tasks`` tasks
    of ``MazeEnv(**maze)`` (plus ``format_corpus()`` when ``formats``); the rest goes to
    ``build_tiny_model`` (default: vocabulary 384, 2 layers, hidden 64, seed 0). Test files that
    ask for the same options share one directory; no test writes into it.
    """
    built: dict[tuple[Any, ...], Path] = {}

    def make(
        *,
        maze: Mapping[str, Any] | None = None,
        tasks: int = 8,
        steps_per_task: int = 6,
        formats: bool = False,
        **model: Any,
    ) -> Path:
        model = {"vocab_size": 384, "layers": 2, "hidden": 64, "seed": 0, **model}
        key = (
            tuple(sorted((maze or {}).items())),
            tasks,
            steps_per_task,
            formats,
            tuple(sorted(model.items())),
        )
        if key not in built:
            env = MazeEnv(**(maze or {}))
            corpus = env_corpus(
                env, [f"maze-{i}" for i in range(tasks)], steps_per_task=steps_per_task, seed=0
            )
            if formats:
                corpus += format_corpus()
            built[key] = build_tiny_model(tmp_path_factory.mktemp("tiny"), corpus, **model)
        return built[key]

    return make


@pytest.fixture(scope="session")
def served_model_dir(tiny_model):
    """A tiny maze model (2 layers, hidden 64) for the server, openai-policy and policy tests."""
    return tiny_model()


@pytest.fixture(scope="session")
def small_maze_model_dir(tiny_model):
    """A smaller model (1 layer, hidden 32) on 2-room mazes, for the trainer and distributed tests."""
    return tiny_model(maze={"size": 2, "n_doors": 1, "num_tasks": 50}, tasks=10, layers=1, hidden=32)
