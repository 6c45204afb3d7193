"""RL learning-rate schedule (``optim.lr_schedule``, ``optim.warmup_ratio``): the rate each iteration
trains with, its effect on the weights, exact resume, and config errors."""

from __future__ import annotations

import math

import pytest

from agentrl.config import ConfigError
from agentrl.trainers import train
from agentrl.trainers.metrics import read_metrics
from tests.test_trainer import _comparable, tiny_run


@pytest.fixture(scope="module")
def model_dir(small_maze_model_dir):
    return small_maze_model_dir


def adapter(run, it: int) -> bytes:
    return (run / "checkpoints" / f"iter-{it:06d}" / "adapter" / "adapter_model.safetensors").read_bytes()


def cosine(it: int, n: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * it / n))


def test_cosine_schedule_sets_each_iterations_rate_and_resumes_exactly(model_dir, tmp_path):
    every = {"optim.iterations": 3, "logging.checkpoint_every": 1, "logging.keep_checkpoints": 3}
    overrides = tiny_run(model_dir, **every, **{"optim.lr_schedule": "cosine"})
    full = train(None, tmp_path / "full", overrides)
    records = read_metrics(full / "metrics.jsonl")
    assert [r["lr"] for r in records] == pytest.approx([0.01 * cosine(it, 3) for it in range(3)])
    assert [r["lr"] for r in records] == pytest.approx([0.01, 0.0075, 0.0025])

    constant = train(None, tmp_path / "constant", tiny_run(model_dir, **every))
    plain = read_metrics(constant / "metrics.jsonl")
    assert "lr" not in plain[0]  # the default keeps the records (and every number) as they were
    # iteration 0 trains at the full rate either way; iteration 1 at 0.75 of it: other weights
    assert adapter(full, 1) == adapter(constant, 1)
    assert adapter(full, 2) != adapter(constant, 2)

    stopped = tmp_path / "stopped"
    train(None, stopped, overrides, stop_after=1)
    resumed = read_metrics(train(None, stopped, overrides) / "metrics.jsonl")
    assert [_comparable(r) for r in resumed] == [_comparable(r) for r in records]
    assert adapter(stopped, 3) == adapter(full, 3)


def test_warmup_ramps_up_before_the_decay(model_dir, tmp_path):
    overrides = tiny_run(
        model_dir,
        **{"optim.iterations": 3, "optim.lr_schedule": "cosine", "optim.warmup_ratio": 0.5},
    )
    records = read_metrics(train(None, tmp_path / "run", overrides) / "metrics.jsonl")
    # 1 warm-up iteration (int(0.5 x 3)) at half the rate, then cosine over the 2 left
    assert [r["lr"] for r in records] == pytest.approx([0.005, 0.01, 0.005])


@pytest.mark.parametrize(
    ("override", "match"),
    [("optim.lr_schedule=linear", "lr_schedule"), ("optim.warmup_ratio=1.0", "warmup_ratio")],
)
def test_bad_schedule_settings_are_refused(model_dir, tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        train(None, tmp_path / "run", [*tiny_run(model_dir), override])
