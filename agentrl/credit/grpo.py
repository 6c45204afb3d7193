"""Group baselines on the trajectory outcome: GRPO (mean_std / mean / median), RLOO, REINFORCE++.

Every row of trajectory i gets the same advantage, except that the invalid-action penalty
``c_inv`` is subtracted from the score of the row whose action was invalid.
"""

from __future__ import annotations

import numpy as np

from agentrl.credit.base import Advantages, register_estimator
from agentrl.credit.ops import Layout, check_choice, group_mean_std, group_median, layout, normalize, whiten
from agentrl.types import StepBatch

EPISODE_STATS = ("trajectories", "steps")


def row_scores(batch: StepBatch, invalid_penalty: float) -> np.ndarray:
    """R_i - c_inv * [row invalid]: the score each row is normalised with."""
    return batch.outcome - invalid_penalty * (~batch.valid)


def episode_advantage(
    batch: StepBatch,
    lay: Layout,
    *,
    mode: str,
    eps: float,
    invalid_penalty: float,
    episode_stats: str,
    ddof: int = 1,
) -> np.ndarray:
    """norm_G(R_i) per row minus the invalid-action penalty on invalid rows.

    episode_stats="trajectories" (the paper): group statistics over outcomes, each trajectory
    counted once; the penalty is subtracted after normalising, unscaled [ours], because it is not
    part of those statistics and a group of equal outcomes (std 0) would turn c_inv into c_inv/eps.
    episode_stats="steps" (the GiGPO code): statistics over the rows' penalised scores
    R_i - c_inv*[invalid], so longer trajectories weigh more and the penalty is normalised too.
    """
    check_choice("mode", mode, ("mean_std", "mean", "median"))
    check_choice("episode_stats", episode_stats, EPISODE_STATS)
    n_groups, g = batch.num_groups, batch.group_idx
    penalty: np.ndarray | float
    if episode_stats == "trajectories":
        x, penalty = batch.outcome, invalid_penalty * (~batch.valid)
        stat_x, stat_g = lay.per_traj(batch.outcome), lay.per_traj(g)
    else:
        x, penalty = row_scores(batch, invalid_penalty), 0.0
        stat_x, stat_g = x, g
    if mode == "median":
        return x - group_median(stat_x, stat_g, n_groups)[g] - penalty
    mean, std, _ = group_mean_std(stat_x, stat_g, n_groups, ddof=ddof)
    return normalize(x, mean[g], std[g], mode, eps) - penalty


@register_estimator("grpo", paper="Shao et al. 2024 (DeepSeekMath), arXiv 2402.03300; median: MC-GRPO")
def grpo(
    batch: StepBatch,
    *,
    mode: str = "mean_std",
    eps: float = 1e-6,
    invalid_penalty: float = 0.1,
    episode_stats: str = "trajectories",
) -> Advantages:
    """Outcome normalised within its group: (R - mean)/(std + eps), R - mean, or R - median."""
    lay = layout(batch)
    return Advantages(
        step=episode_advantage(
            batch, lay, mode=mode, eps=eps, invalid_penalty=invalid_penalty, episode_stats=episode_stats
        )
    )


@register_estimator("rloo", paper="Ahmadian et al. 2024, arXiv 2402.14740")
def rloo(batch: StepBatch, *, invalid_penalty: float = 0.1) -> Advantages:
    """Leave-one-out baseline: R_i - mean of the other trajectories of the group (0 when alone)."""
    lay = layout(batch)
    r_traj, g_traj = lay.per_traj(batch.outcome), lay.per_traj(batch.group_idx)
    total = np.bincount(g_traj, weights=r_traj, minlength=batch.num_groups)
    count = np.bincount(g_traj, minlength=batch.num_groups).astype(np.float64)
    others = count[batch.group_idx] - 1
    loo_mean = np.divide(
        total[batch.group_idx] - batch.outcome, others, out=batch.outcome.copy(), where=others > 0
    )
    return Advantages(step=row_scores(batch, invalid_penalty) - loo_mean)


@register_estimator("reinforce_pp", paper="Hu 2025 (REINFORCE++), arXiv 2501.03262")
def reinforce_pp(batch: StepBatch, *, invalid_penalty: float = 0.1, eps: float = 1e-8) -> Advantages:
    """R_i minus the group mean, then whitened over every row of the batch."""
    lay = layout(batch)
    mean, _, _ = group_mean_std(lay.per_traj(batch.outcome), lay.per_traj(batch.group_idx), batch.num_groups)
    centred = row_scores(batch, invalid_penalty) - mean[batch.group_idx]
    return Advantages(step=whiten(centred, eps=eps))
