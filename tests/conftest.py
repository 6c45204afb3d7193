"""Fixtures shared by test modules."""

from __future__ import annotations

import pytest

from agentrl.envs.maze import MazeEnv
from agentrl.policies.tiny import build_tiny_model, env_corpus


@pytest.fixture(scope="session")
def served_model_dir(tmp_path_factory):
    """A tiny maze model (2 layers, hidden 64) for the server and openai-policy tests."""
    corpus = env_corpus(MazeEnv(), [f"maze-{i}" for i in range(8)], steps_per_task=6, seed=0)
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), corpus, vocab_size=384, layers=2, hidden=64, seed=0)
