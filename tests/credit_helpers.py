"""Builders the credit tests share: outcome-only trajectories, batches of groups, per-trajectory views."""

from __future__ import annotations

from typing import Any

import numpy as np

from agentrl.types import Step, StepBatch, Trajectory


def traj(
    group: str,
    i: int,
    outcome: float,
    n_steps: int = 2,
    invalid_at: int | None = None,
    task: str | None = None,
    state_keys: bool = False,
    **kw: Any,
) -> Trajectory:
    """Trajectory ``group/i`` of ``n_steps`` steps whose last step earns ``outcome``; terminated unless
    ``kw`` says otherwise, task ``task`` (default: the group); ``state_keys``: states s0, s1, ..."""
    steps = [
        Step(obs=f"o{t}", action="a", valid=t != invalid_at, state_key=f"s{t}" if state_keys else None)
        for t in range(n_steps)
    ]
    steps[-1].reward = outcome
    kw.setdefault("terminated", True)
    return Trajectory(task_id=task or group, group_id=group, traj_id=f"{group}/{i}", steps=steps, **kw)


def batch_of(groups: dict[str, list[float]]) -> StepBatch:
    """One trajectory per outcome, groups in the given order."""
    return StepBatch.from_trajectories([traj(g, i, r) for g, rs in groups.items() for i, r in enumerate(rs)])


def per_traj(b: StepBatch, adv: np.ndarray) -> dict[str, float]:
    """traj_id -> advantage, checking every row of a trajectory carries the same one."""
    out: dict[str, float] = {}
    for tid, a in zip(b.traj_id, adv):
        assert out.setdefault(tid, a) == a, "every row of a trajectory carries its advantage"
    return out


def per_valid_traj(b: StepBatch, adv: np.ndarray) -> dict[str, float]:
    """As ``per_traj`` over valid rows only (invalid rows carry the invalid-action penalty too)."""
    out: dict[str, float] = {}
    for tid, a, valid in zip(b.traj_id, adv, b.valid):
        if valid:
            assert out.setdefault(tid, a) == a, "valid rows of a trajectory share its advantage"
    return out
