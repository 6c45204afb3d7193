"""Checkpoints: adapter, optimiser (+ value head), RNG states and the loop's position, written
atomically, so a run killed at any moment resumes from the last complete checkpoint exactly.

With several processes rank 0 writes the checkpoint and every process adds its own RNG states
(``rng-rank<R>.pt``): each process's random stream continues where it stopped."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentrl.distributed import SINGLE, Dist

__all__ = ["latest_checkpoint", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]

PREFIX = "iter-"


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path, iteration: int, learner, state: dict[str, Any], keep: int = 2, dist: Dist = SINGLE
) -> Path:
    """Write ``checkpoints/iter-NNNNNN`` (next iteration = ``iteration``): the adapter, the optimiser and
    value head, RNG states and ``state`` (JSON). Written to a temporary directory first and renamed,
    so a partial checkpoint is never read; only the ``keep`` newest are kept."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{iteration:06d}"
    tmp = root / f".tmp-{PREFIX}{iteration:06d}"
    if dist.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    if dist.active:
        dist.barrier()
        torch.save(rng_state(), tmp / f"rng-rank{dist.rank}.pt")
        dist.barrier()
    if not dist.main:
        dist.barrier()
        return final
    learner.policy.save_adapter(tmp / "adapter")
    torch.save(
        {
            "optimizer": learner.optimizer.state_dict(),
            "value_head": learner.value_head.state_dict() if learner.value_head is not None else None,
            "rng": rng_state(),
        },
        tmp / "trainer.pt",
    )
    (tmp / "state.json").write_text(json.dumps({**state, "iteration": iteration}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(p for p in root.glob(f"{PREFIX}*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    done = sorted(p for p in root.glob(f"{PREFIX}*") if (p / "state.json").exists()) if root.exists() else []
    return done[-1] if done else None


def load_checkpoint(path: Path, learner, dist: Dist = SINGLE) -> dict[str, Any]:
    """Restore adapter, optimiser, value head and RNG states; returns the saved ``state``.

    A process without its own RNG file (the run had fewer processes) takes rank 0's states."""
    learner.policy.load_adapter(path / "adapter")
    saved = torch.load(path / "trainer.pt", weights_only=False)
    learner.optimizer.load_state_dict(saved["optimizer"])
    if learner.value_head is not None:
        if saved["value_head"] is None:
            raise ValueError(f"checkpoint {path} has no value head but this run's estimator needs one")
        learner.value_head.load_state_dict(saved["value_head"])
    own = path / f"rng-rank{dist.rank}.pt"
    set_rng_state(torch.load(own, weights_only=False) if dist.active and own.exists() else saved["rng"])
    return json.loads((path / "state.json").read_text())
