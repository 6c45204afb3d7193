"""A deliberately plain GiGPO: dicts and a Python loop per row, read straight off the formulas.

Kept as the yardstick for the vectorised ``estimate("gigpo")``: the benchmark reports how much
faster that is, and a test checks both agree. Exact anchors only.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

from agentrl.types import Trajectory


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and unbiased std (0 for fewer than two values)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _norm(x: float, mean: float, std: float, mode: str, eps: float) -> float:
    return (x - mean) / (std + eps) if mode == "mean_std" else x - mean


def naive_gigpo(
    trajectories: Sequence[Trajectory],
    *,
    gamma: float = 0.95,
    omega: float = 1.0,
    mode: str = "mean_std",
    eps: float = 1e-6,
    invalid_penalty: float = 0.1,
    episode_stats: str = "trajectories",
) -> dict[tuple[str, int], float]:
    """GiGPO advantage of every step, keyed by (traj_id, turn)."""
    groups: dict[str, list[Trajectory]] = {}
    for traj in trajectories:
        if traj.steps:
            groups.setdefault(traj.group_id, []).append(traj)

    out: dict[tuple[str, int], float] = {}
    for trajs in groups.values():
        if episode_stats == "trajectories":
            pool = [traj.outcome for traj in trajs]
        else:
            pool = [
                traj.outcome - invalid_penalty * (not step.valid) for traj in trajs for step in traj.steps
            ]
        ep_mean, ep_std = _mean_std(pool)

        step_return: dict[tuple[str, int], float] = {}
        anchor_of: dict[tuple[str, int], Hashable] = {}
        anchor_members: dict[Hashable, list[float]] = {}
        for traj in trajs:
            running = 0.0
            for t in range(len(traj.steps) - 1, -1, -1):
                step = traj.steps[t]
                running = step.reward + gamma * running
                value = running - invalid_penalty * (not step.valid)
                key = (traj.traj_id, t)
                anchor: Hashable = step.state_key if step.state_key is not None else ("no state", key)
                step_return[key] = value
                anchor_of[key] = anchor
                anchor_members.setdefault(anchor, []).append(value)

        anchor_stats = {anchor: _mean_std(members) for anchor, members in anchor_members.items()}
        for traj in trajs:
            for t, step in enumerate(traj.steps):
                key = (traj.traj_id, t)
                penalty = invalid_penalty * (not step.valid)
                if episode_stats == "trajectories":  # penalty outside the statistics: not rescaled
                    episode = _norm(traj.outcome, ep_mean, ep_std, mode, eps) - penalty
                else:
                    episode = _norm(traj.outcome - penalty, ep_mean, ep_std, mode, eps)
                anchor = anchor_of[key]
                if len(anchor_members[anchor]) < 2:
                    step_adv = 0.0
                else:
                    step_adv = _norm(step_return[key], *anchor_stats[anchor], mode, eps)
                out[key] = episode + omega * step_adv
    return out
