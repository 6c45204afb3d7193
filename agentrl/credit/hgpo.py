"""HGPO (He et al. 2026, arXiv 2602.22817): GiGPO's anchor groups refined by history.

With a K-step history window in the prompt, two rows on the same state can have been shown
different prompts, so GiGPO's state-only anchor groups mix contexts. HGPO groups rows at
nested levels k = 1..K+1 by the last k observations (level 1 = GiGPO's anchor group, level
K+1 = everything the prompt showed), normalises the step return within each level's group
and averages the levels with weights growing in k.
"""

from __future__ import annotations

import numpy as np

from agentrl.credit.base import Advantages, register_estimator
from agentrl.credit.gigpo import group_advantage, step_returns
from agentrl.credit.grpo import EPISODE_STATS, episode_advantage
from agentrl.credit.ops import MODES, Layout, check_choice, check_finite, factorize, layout
from agentrl.types import StepBatch


def context_levels(batch: StepBatch, lay: Layout, n_levels: int) -> list[tuple[np.ndarray, int]]:
    """Group codes for levels 1..n_levels; -1 where a row has no level k (position < k-1).

    Level k groups rows of one task group with equal (s_{t-k+1}, ..., s_t): the level-(k-1)
    group of the previous row of the trajectory (the row before it in a canonical batch)
    refined by the row's own state. Keys are built from ids and turn order, never positions
    across trajectories.
    """
    code, n_codes = factorize(batch.group_idx, batch.column("state_key"))
    levels = [(code, n_codes)]
    for k in range(2, n_levels + 1):
        rows = np.flatnonzero(lay.pos >= k - 1)
        if rows.size == 0:
            break
        sub, n_codes = factorize(code[rows - 1], batch.column("state_key")[rows])
        code = np.full(len(batch), -1, np.int64)
        code[rows] = sub
        levels.append((code, n_codes))
    return levels


@register_estimator(
    "hgpo",
    fields=("state_key",),
    paper="He et al. 2026 (HGPO: history-aware grouping for agent policy optimisation), arXiv 2602.22817",
)
def hgpo(
    batch: StepBatch,
    *,
    gamma: float = 0.95,
    history_length: int = 2,
    alpha: float = 1.0,
    mode: str = "mean_std",
    eps: float = 1e-6,
    invalid_penalty: float = 0.1,
    base_group: bool = False,
    episode_stats: str = "trajectories",
) -> Advantages:
    """Weighted mean over context levels of the step return normalised within the level's group.

    Per level k (groups of >= 2 rows only, population std): A_k = (R - mean)/(std + eps) or
    R - mean. Levels with A_k exactly 0 are dropped, the rest weighted (k+1)^alpha and
    renormalised; no level left gives 0. ``base_group`` reads "add GiGPO's episode advantage as
    level 0 with weight 1" as: GiGPO's episode term (unbiased std, ``mode``, ``episode_stats``,
    ``invalid_penalty``) joins the average as one more level with unnormalised weight
    (0+1)^alpha = 1, renormalised together with the others and dropped like them when exactly 0.
    ``history_length`` is K, the number of past observations the prompt shows.
    """
    check_choice("mode", mode, MODES)
    check_choice("episode_stats", episode_stats, EPISODE_STATS)
    if (
        isinstance(history_length, bool)
        or not isinstance(history_length, (int, np.integer))
        or history_length < 0
    ):
        raise ValueError(f"option history_length={history_length!r} must be an integer >= 0")
    if not isinstance(base_group, (bool, np.bool_)):
        raise ValueError(f"option base_group={base_group!r} must be True or False")
    check_finite("gamma", gamma, 0.0, 1.0)
    check_finite("alpha", alpha, -64.0, 64.0)
    check_finite("eps", eps, 0.0)
    check_finite("invalid_penalty", invalid_penalty)
    lay = layout(batch)
    returns = step_returns(batch, lay, gamma, invalid_penalty)
    weighted = np.zeros(len(batch))
    total_weight = np.zeros(len(batch))
    if base_group:
        level0 = episode_advantage(
            batch, lay, mode=mode, eps=eps, invalid_penalty=invalid_penalty, episode_stats=episode_stats
        )
        kept = level0 != 0.0
        weighted[kept] += level0[kept]
        total_weight[kept] += 1.0
    for k, (code, n_codes) in enumerate(context_levels(batch, lay, int(history_length) + 1), start=1):
        rows = np.flatnonzero(code >= 0)
        adv, shared = group_advantage(returns[rows], code[rows], n_codes, mode=mode, eps=eps, ddof=0)
        kept = shared & (adv != 0.0)
        w = float(k + 1) ** alpha
        weighted[rows[kept]] += w * adv[kept]
        total_weight[rows[kept]] += w
    step = np.divide(weighted, total_weight, out=np.zeros(len(batch)), where=total_weight > 0)
    return Advantages(step=step)
