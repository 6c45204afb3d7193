"""SeeUPO per-turn advantages and the correction factors of its sequential update (Hu et al. 2026,
arXiv 2602.06554).

Turn t of every episode is treated as agent t of a sequential multi-agent bandit. Agents are
updated one at a time (reverse order by default); each agent's advantage is multiplied by
M_i, the clipped product of the probability ratios of the agents already updated on
trajectory i, which is what makes the backward induction monotonic without a critic. The
estimator computes the per-turn advantages for all turn slots at once (given the current M);
the trainer walks the slots with ``turn_slots`` and refreshes M with ``update_corrections``.

Sources. The official code is modelscope/AgentEvolver, branch ``seeupo``,
``beyondagent/module/trainer/ba_ray_trainer.py``; a later copy of it (``seeupo_v2``) differs on
episodes that end before the last turn slot (option ``ended``). Neither the ``seeupo`` branch nor
the ``seeupo_v2`` copy is in the code index this was written from (AgentEvolver's stored versions
of that file contain no SeeUPO code), so both behaviours are written from a description of how the
two copies differ, not from their code: ``ended="keep"`` (the official code) counts ended
trajectories in later turns' statistics, ``"drop"`` (``seeupo_v2``) only live ones. Correction
factors are keyed by trajectory id: the official code reorders the turn batches while carrying M
row-aligned, which pairs M with the wrong trajectory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from agentrl.credit.base import Advantages, register_estimator
from agentrl.credit.ops import check_choice, factorize, group_mean_std, layout
from agentrl.types import StepBatch

ORDERS = ("reverse", "forward", "random")
ENDED = ("keep", "drop")
RATIO_LOW, RATIO_HIGH = 0.8, 1.2
LOG_RATIO_CLAMP = 10.0


def _row_corrections(batch: StepBatch, correction: Mapping[str, float] | None) -> np.ndarray:
    """M per row, looked up by trajectory id (1 for ids the mapping does not hold)."""
    if correction is None:
        return np.ones(len(batch))
    if not isinstance(correction, Mapping):
        raise ValueError(f"option correction must be a dict traj_id -> M, got {type(correction).__name__}")
    m_traj = np.array([float(correction.get(tid, 1.0)) for tid in batch.traj_names], dtype=np.float64)
    bad = ~np.isfinite(m_traj)
    if bad.any():
        raise ValueError(
            f"option correction has non-finite M for trajectory id(s) {list(batch.traj_names[bad][:5])}"
        )
    return m_traj[batch.traj_idx]


@register_estimator(
    "seeupo", paper="Hu et al. 2026 (SeeUPO), arXiv 2602.06554", schedule="turn_slots", loss="gspo"
)
def seeupo(
    batch: StepBatch,
    *,
    correction: Mapping[str, float] | None = None,
    ended: str = "keep",
    clip: float = 3.0,
    min_std: float = 1e-6,
) -> Advantages:
    """Per-turn GRAE: ``A_{i,t} = R_i - mean_{j in i's group at turn t} R_j`` (no std), then over
    the trajectories of turn slot t in the batch: z-score (only centred when std <= ``min_std``),
    clip to [-clip, clip], multiply by ``M_i`` (``correction``: traj_id -> M, default 1).

    ``ended`` says what happens to a trajectory at turn slots after it ended:
    - ``"keep"`` (default; the official code, AgentEvolver branch ``seeupo``): it stays in every
      later turn batch, so it counts in the group mean and in the slot's z-score. Every slot then
      holds every trajectory once, and a trajectory gets the same advantage at each of its turns
      (times its current M). A group of one trajectory has baseline R_i (A = 0).
    - ``"drop"`` (the ``seeupo_v2`` copy): only trajectories still running at t take part; a group
      with a single live trajectory at t gets baseline 0 (A = R_i before the z-score).
    Either way only the rows of slot t are trained in slot t (``turn_slots``). The z-score uses the
    unbiased std (n-1) [ours; the paper does not say].

    Under ``keep`` a late slot's trained rows are the trajectories still running, where successes end
    early mostly failures, so that slot's advantages are mostly negative (on the maze, slot means down
    to -1.6) and its update only pushes down; ``drop`` makes each slot's advantages zero-mean. At PPO's
    clip 0.2 on the GSPO ratio (which then seldom clips) SeeUPO's policy collapsed on the maze; at
    GSPO's band (the loss's default) the collapses are shorter but remain under ``keep``, not seen under
    ``drop`` (docs/benchmarks.md, "SeeUPO and MT-PPO at 150 iterations").
    """
    check_choice("ended", ended, ENDED)
    if clip <= 0:
        raise ValueError(f"option clip must be > 0, got {clip}")
    if ended == "keep":
        lay = layout(batch)
        outcome = lay.per_traj(batch.outcome)
        group = lay.per_traj(batch.group_idx)
        baseline, _, _ = group_mean_std(outcome, group, batch.num_groups, ddof=1)
        centred_traj = outcome - baseline[group]
        everyone = np.zeros(lay.n_traj, dtype=np.int64)
        mean, std, _ = group_mean_std(centred_traj, everyone, 1, ddof=1)
        scale = std[0] if std[0] > min_std else 1.0
        z = ((centred_traj - mean[0]) / scale)[lay.slot]
    else:
        g_turn, n_g_turn = factorize(batch.group_idx, batch.turn)
        baseline, _, live = group_mean_std(batch.outcome, g_turn, n_g_turn, ddof=1)
        baseline = np.where(live > 1, baseline, 0.0)
        centred = batch.outcome - baseline[g_turn]
        slot, n_slots = factorize(batch.turn)
        mean, std, _ = group_mean_std(centred, slot, n_slots, ddof=1)
        scale = np.where(std > min_std, std, 1.0)
        z = (centred - mean[slot]) / scale[slot]
    return Advantages(step=np.clip(z, -clip, clip) * _row_corrections(batch, correction))


def turn_slots(batch: StepBatch, order: str = "reverse", seed: int = 0) -> list[tuple[int, np.ndarray]]:
    """The per-turn batches B_t as (t, row indices into ``batch``), in update order.

    ``reverse`` (T-1 .. 0, the paper's backward induction), ``forward`` (0 .. T-1) or ``random``
    (a permutation drawn from ``seed``), for ablations. Turns with no rows are left out.
    """
    check_choice("order", order, ORDERS)
    turns = np.unique(batch.turn)
    if order == "reverse":
        turns = turns[::-1]
    elif order == "random":
        turns = np.random.default_rng(seed).permutation(turns)
    return [(int(t), np.flatnonzero(batch.turn == t)) for t in turns]


def correction_ratio(mean_log_ratio: np.ndarray | Sequence[float]) -> np.ndarray:
    """rho_i = clip(exp(clamp(x_i, -10, 10)), 0.8, 1.2), x_i = mean over tokens of logp_new - logp_old."""
    x = np.asarray(mean_log_ratio, dtype=np.float64)
    if np.isnan(x).any():
        raise ValueError("mean_log_ratio contains NaN")
    return np.clip(np.exp(np.clip(x, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)), RATIO_LOW, RATIO_HIGH)


def update_corrections(
    corrections: Mapping[str, float],
    traj_ids: Sequence[str] | np.ndarray,
    mean_log_ratio: np.ndarray | Sequence[float],
) -> dict[str, float]:
    """New correction factors after one turn slot's update: ``M_i = clip(M_i * rho_i, 0.8, 1.2)``
    for the trajectories in ``traj_ids`` (M_i = 1 when absent); the others are carried over."""
    ids = list(traj_ids)
    rho = correction_ratio(mean_log_ratio)
    if rho.shape != (len(ids),):
        raise ValueError(
            f"mean_log_ratio must have one value per traj id ({len(ids)}), got shape {rho.shape}"
        )
    if len(set(ids)) != len(ids):
        raise ValueError("traj_ids must not repeat: one mean log-ratio per trajectory of the turn slot")
    old = np.array([float(corrections.get(tid, 1.0)) for tid in ids], dtype=np.float64)
    new = np.clip(old * rho, RATIO_LOW, RATIO_HIGH)
    return {**corrections, **dict(zip(ids, new.tolist()))}
