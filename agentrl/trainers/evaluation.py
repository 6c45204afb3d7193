"""Evaluation on held-out tasks: success rate with a 95% Wilson confidence interval.

The same tasks, seeds and decoding settings are used before and after RL, so the two numbers
in ``summary.json`` differ only by the policy. With several processes each plays its share of the
tasks (with the seeds a single process would give them) and every process gets the result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentrl.distributed import SINGLE, Dist
from agentrl.policies.base import Policy, SamplingParams
from agentrl.rollout import PromptBuilder, rollout
from agentrl.seeding import rank_seed
from agentrl.stats import wilson
from agentrl.types import write_trajectories

__all__ = ["evaluate"]


def evaluate(
    policy: Policy,
    envs: Any,
    task_ids: Sequence[str],
    *,
    episodes_per_task: int,
    max_turns: int,
    builder: PromptBuilder,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    episodes_path: str | os.PathLike[str] | None = None,
    dist: Dist = SINGLE,
) -> dict[str, Any]:
    """Play every held-out task ``episodes_per_task`` times; success rate, its CI and mean reward.
    ``episodes_path``: also write the episodes there (JSONL, for ``agentrl view``; rank 0 writes)."""
    params = SamplingParams(
        temperature=temperature, max_new_tokens=max_new_tokens, seed=rank_seed(seed, dist.rank)
    )
    index = dist.share(range(len(task_ids)))
    groups = (
        rollout(
            policy,
            envs,
            [task_ids[i] for i in index],
            episodes_per_task,
            max_turns=max_turns,
            params=params,
            builder=builder,
            seeds=[seed + i for i in index],
            id_prefix=f"eval-r{dist.rank}-" if dist.active else "eval-",
        )
        if index
        else []
    )
    trajs = [t for g in dist.gather(groups) for t in g]
    if episodes_path is not None and dist.main:
        Path(episodes_path).parent.mkdir(parents=True, exist_ok=True)
        write_trajectories(episodes_path, trajs)
    wins = sum(bool(t.success) for t in trajs)
    ci = wilson(wins, len(trajs))
    low, high = (ci.low, ci.high)
    return {
        "success_rate": wins / len(trajs) if trajs else 0.0,
        "ci_low": low,
        "ci_high": high,
        "episodes": len(trajs),
        "reward_mean": sum(float(t.outcome) for t in trajs) / len(trajs) if trajs else 0.0,
        "turns_mean": sum(len(t) for t in trajs) / len(trajs) if trajs else 0.0,
        "errors": sum("error" in t.info for t in trajs),
    }
