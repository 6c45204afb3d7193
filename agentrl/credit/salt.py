"""SALT (Li et al. 2025, arXiv 2510.20022): step credit from a graph of same-task trajectories.

Steps shared by several trajectories of a group are one edge; a step's advantage is the mean
base advantage of every trajectory through its edge, so steps shared by good and bad
trajectories become near-neutral and steps unique to one trajectory keep its sign.

There is no public code: what counts as one edge (the two ``merge`` modes), counting a
trajectory once per edge, and how the invalid-action penalty passes through follow our reading
of the paper's description.
"""

from __future__ import annotations

import numpy as np

from agentrl.credit.base import Advantages, register_estimator
from agentrl.credit.grpo import EPISODE_STATS, episode_advantage, rloo
from agentrl.credit.ops import Layout, centred_group_stats, check_choice, check_finite, factorize, layout
from agentrl.types import StepBatch

MERGES = ("prefix", "state_action")
BASES = ("grpo", "rloo")


def prefix_edges(batch: StepBatch, lay: Layout) -> tuple[np.ndarray, int]:
    """Edge codes of the prefix tree: rows share an edge when their trajectories (same task
    group) took the same (state, normalised action) at every turn up to and including this one."""
    n = len(batch)
    by_pos = np.argsort(lay.pos, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(lay.pos))])
    edge = np.empty(n, np.int64)
    n_edges = 0
    for p in range(bounds.size - 1):
        rows = by_pos[bounds[p] : bounds[p + 1]]
        parent = batch.group_idx[rows] if p == 0 else edge[rows - 1]
        sub, n_sub = factorize(parent, batch.column("state_key")[rows], batch.action_key[rows])
        edge[rows] = sub + n_edges
        n_edges += n_sub
    return edge, n_edges


def state_action_edges(batch: StepBatch) -> tuple[np.ndarray, int]:
    """Edge codes of the re-converging graph: same task group, state and normalised action, any turn."""
    return factorize(batch.group_idx, batch.column("state_key"), batch.action_key)


def edge_mean(edge: np.ndarray, n_edges: int, traj_idx: np.ndarray, traj_adv: np.ndarray) -> np.ndarray:
    """Per row: mean trajectory advantage over the distinct trajectories through the row's edge."""
    pair, n_pairs = factorize(edge, traj_idx)
    pair_edge = np.zeros(n_pairs, np.int64)
    pair_edge[pair] = edge
    pair_adv = np.zeros(n_pairs)
    pair_adv[pair] = traj_adv
    total = np.bincount(pair_edge, weights=pair_adv, minlength=n_edges)
    count = np.bincount(pair_edge, minlength=n_edges)
    return (total / np.maximum(count, 1))[edge]


@register_estimator(
    "salt",
    fields=("state_key",),
    paper="Li et al. 2025 (SALT: step-level advantage assignment via trajectory graphs), arXiv 2510.20022",
)
def salt(
    batch: StepBatch,
    *,
    merge: str = "prefix",
    base: str = "grpo",
    lam: float = 1.0,
    mode: str = "mean_std",
    eps: float = 1e-6,
    episode_stats: str = "trajectories",
    invalid_penalty: float = 0.1,
) -> Advantages:
    """lam * (mean base advantage of the trajectories through the row's edge) + (1-lam) * A_i.

    ``merge``: "prefix" (same full (state, action) history: a tree) or "state_action" (same
    state and normalised action at any turn: a graph with re-convergence). ``base``: "grpo"
    (with ``mode``, ``eps``, ``episode_stats``) or "rloo" (those three unused). The base
    trajectory advantage A_j is the mean of the base estimator over j's rows; a row's own
    deviation from it (the invalid-action penalty, 0 when ``invalid_penalty`` is 0) is added
    back to that row only.
    """
    check_choice("merge", merge, MERGES)
    check_choice("base", base, BASES)
    check_choice("mode", mode, ("mean_std", "mean", "median"))
    check_choice("episode_stats", episode_stats, EPISODE_STATS)
    check_finite("lam", lam, 0.0, 1.0)
    check_finite("eps", eps, 0.0)
    check_finite("invalid_penalty", invalid_penalty)
    lay = layout(batch)
    if base == "grpo":
        base_row = episode_advantage(
            batch, lay, mode=mode, eps=eps, invalid_penalty=invalid_penalty, episode_stats=episode_stats
        )
    else:
        base_row = rloo(batch, invalid_penalty=invalid_penalty).step
    own, _, _ = centred_group_stats(base_row, lay.slot, lay.n_traj, ddof=0)
    traj_adv = base_row - own
    edge, n_edges = prefix_edges(batch, lay) if merge == "prefix" else state_action_edges(batch)
    edge_adv = edge_mean(edge, n_edges, batch.traj_idx, traj_adv)
    return Advantages(step=lam * edge_adv + (1.0 - lam) * traj_adv + own)
