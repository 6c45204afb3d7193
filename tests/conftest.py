"""Fixtures shared by test modules."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

import agentrl.credit
import agentrl.trainers.experts
import agentrl.trainers.schedule  # noqa: F401  (its registries exist before any test registers into them)
from agentrl.envs.maze import MazeEnv
from agentrl.policies.tiny import build_tiny_model, env_corpus
from agentrl.registry import all_registries


@pytest.fixture(autouse=True)
def registrations_undone():
    """Whatever a test registers (estimators, losses, schedules, envs, formats, ...) is gone after it."""
    with ExitStack() as stack:
        for registry in all_registries():
            stack.enter_context(registry.scoped())
        yield


@pytest.fixture(scope="session")
def served_model_dir(tmp_path_factory):
    """A tiny maze model (2 layers, hidden 64) for the server and openai-policy tests."""
    corpus = env_corpus(MazeEnv(), [f"maze-{i}" for i in range(8)], steps_per_task=6, seed=0)
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny"), corpus, vocab_size=384, layers=2, hidden=64, seed=0
    )
