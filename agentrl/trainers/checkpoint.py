"""Checkpoints: adapter, optimiser (+ value head), RNG states and the loop's position, written
atomically, so a run killed at any moment resumes from the last complete checkpoint exactly.

With several processes rank 0 writes the checkpoint and every process adds its own RNG states
(``rng-rank<R>.pt``): each process's random stream continues where it stopped. Every
``distributed.strategy`` writes the same files: ``fsdp`` shards only the frozen base model (which
the checkpoint does not hold), while the adapter and its optimiser state are replicated, so rank
0's copy is the whole trained state. An adapter is small, so one full file beats a sharded
``torch.distributed.checkpoint`` and lets a run resume on another strategy or process count.

A stateful estimator's state (``credit.base``) is saved as ``estimator_state.json``. After each
iteration the trainer keeps the state as JSON gives it back (``settle_estimator_state``), so a
resumed run reads exactly what an uninterrupted one goes on with. The stored responses of an
estimator that measures the policy drift (``trainers.drift``) are saved as ``policy_drift.pt``."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from agentrl.distributed import SINGLE, Dist

if TYPE_CHECKING:
    from agentrl.trainers.drift import PolicyDrift

__all__ = [
    "ESTIMATOR_STATE",
    "latest_checkpoint",
    "load_behaviour",
    "load_checkpoint",
    "load_estimator_state",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "settle_estimator_state",
]

PREFIX = "iter-"
ESTIMATOR_STATE = "estimator_state.json"


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
    if "cuda" in state and torch.cuda.is_available():  # the devices both runs see
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def save_checkpoint(
    run_dir: Path,
    iteration: int,
    learner,
    state: dict[str, Any],
    keep: int = 2,
    dist: Dist = SINGLE,
    estimator_state: dict[str, Any] | None = None,
    behaviour: list[torch.Tensor] | None = None,
    drift: PolicyDrift | None = None,
) -> Path:
    """Write ``checkpoints/iter-NNNNNN`` (next iteration = ``iteration``): the adapter, the optimiser and
    value head, RNG states, ``state`` (JSON) and a stateful estimator's ``estimator_state``. Written to
    a temporary directory first and renamed, so a partial checkpoint is never read; only the ``keep``
    newest are kept. ``behaviour``: the adapter weights the next rollout samples with, when they are
    not the saved adapter's (``rollout.overlap``; see ``load_behaviour``). ``drift``: the stored
    responses of a run that measures the policy drift (``PolicyDrift.load`` reads them back)."""
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
    saved: dict[str, Any] = {
        "optimizer": learner.optimizer.state_dict(),
        "value_head": learner.value_head.state_dict() if learner.value_head is not None else None,
        "rng": rng_state(),
    }
    if behaviour is not None:
        saved["behaviour"] = [t.detach().cpu() for t in behaviour]
    torch.save(saved, tmp / "trainer.pt")
    if estimator_state is not None:
        (tmp / ESTIMATOR_STATE).write_text(estimator_state_json(estimator_state))
    if drift is not None:
        from agentrl.trainers.drift import DRIFT_FILE

        drift.save(tmp / DRIFT_FILE)
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
    # on the CPU whatever device wrote it: the optimiser state follows its parameters on load, and
    # RNG states must be CPU tensors (without this every rank would load onto the saving GPU)
    saved = torch.load(path / "trainer.pt", weights_only=False, map_location="cpu")
    learner.optimizer.load_state_dict(saved["optimizer"])
    if learner.value_head is not None:
        if saved["value_head"] is None:
            raise ValueError(f"checkpoint {path} has no value head but this run's estimator needs one")
        learner.value_head.load_state_dict(saved["value_head"])
    own = path / f"rng-rank{dist.rank}.pt"
    set_rng_state(
        torch.load(own, weights_only=False, map_location="cpu")
        if dist.active and own.exists()
        else saved["rng"]
    )
    return json.loads((path / "state.json").read_text())


def load_behaviour(path: Path, device: torch.device | str = "cpu") -> list[torch.Tensor] | None:
    """The adapter weights the next rollout samples with, as ``save_checkpoint`` kept them (None: the
    saved adapter's own, as in every on-policy run)."""
    saved = torch.load(Path(path) / "trainer.pt", weights_only=False, map_location="cpu")
    behaviour = saved.get("behaviour")
    return None if behaviour is None else [t.to(device) for t in behaviour]


def estimator_state_json(state: dict[str, Any]) -> str:
    """The state as strict JSON; a ValueError says when it is not (e.g. a NaN, a tuple key, an array)."""
    try:
        return json.dumps(state, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(
            "an estimator's state must be JSON: dicts with string keys, lists, strings, finite numbers, "
            f"booleans and None ({e})"
        ) from None


def settle_estimator_state(state: dict[str, Any], dist: Dist = SINGLE) -> dict[str, Any]:
    """The state as a checkpoint gives it back (a JSON round trip: tuples become lists, and so on).

    Every process estimates on the same gathered batch, so every process must hold the same state;
    with several processes this is checked, and a difference is an error rather than a silent drift."""
    text = estimator_state_json(state)
    if dist.active:
        texts = dist.gather([text])
        differ = [rank for rank, other in enumerate(texts) if other != texts[0]]
        if differ:
            raise RuntimeError(
                f"the estimator state differs between rank 0 and rank(s) {differ}: the estimator is not "
                "deterministic on the gathered batch"
            )
    return json.loads(text)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a finite number")


def load_estimator_state(path: Path, estimator: str) -> dict[str, Any]:
    """The state a stateful estimator had when checkpoint ``path`` was written.

    A missing or unreadable file is an error naming the checkpoint: starting again from an empty
    state would silently change the advantages of a resumed run."""
    file = Path(path) / ESTIMATOR_STATE
    if not file.exists():
        raise ValueError(
            f"checkpoint {path} has no {ESTIMATOR_STATE}, but estimator {estimator!r} keeps state across "
            "iterations; resume from a checkpoint written by a run of this estimator, or use a new run directory"
        )
    try:
        state = json.loads(file.read_text(), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(
            f"checkpoint {path}: {ESTIMATOR_STATE} of estimator {estimator!r} is corrupt ({e}); "
            "resume from an earlier checkpoint (delete this one) or use a new run directory"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(
            f"checkpoint {path}: {ESTIMATOR_STATE} of estimator {estimator!r} is corrupt (a JSON object is "
            f"expected, found {type(state).__name__}); resume from an earlier checkpoint or use a new run directory"
        )
    return state
