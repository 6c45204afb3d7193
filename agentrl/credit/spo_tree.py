"""SPO-tree: segment advantages from Monte-Carlo node values on a rollout tree, segments = turns
(Guo et al. 2025, "Segment Policy Optimization", arXiv 2505.23564; code AIFrameResearch/SPO).

Tree rollouts (``rollout(..., branching=Branching(...))``) continue episodes from chosen turns, so
a step's prefix is shared by every trajectory branched after it. The value of a tree node (a
prefix through some turn) is the mean outcome of the trajectories (leaves) below it, and a turn's
advantage is what its action changed about that value:

    V(n)   = mean_{i in leaves(n)} R_i
    A(r)   = V(node after turn t) - V(node before turn t)      (row r: turn t of trajectory i)

where the node before turn 0 is the group's root (the mean over every trajectory of the group).
Rows are identified with nodes through ``StepBatch.node`` (a sampled step and its copies in
branched trajectories share one); a batch without branching has one node per row, so only turn 0
gets credit (R_i minus the group mean) and every later turn 0: a chain has no information about
its later actions that its outcome does not already give turn 0 alike. ``normalize="group_std"``
divides by the group's outcome std (unbiased) + ``eps``; ``c_inv`` is subtracted from invalid rows.

Sources. The paper's tree variant: fixed token-count segments, ``V(node)`` = mean leaf reward
below, the advantage of a segment from its node against its parent. The authors' code
(AIFrameResearch/SPO, ``src/treetune``) is not in the searched store (only its README and results
files are), so the agent mapping [ours] takes turns as segments and the formula above from the
paper's description; the normalisation option is [ours] (``none`` follows the description).
"""

from __future__ import annotations

import numpy as np

from agentrl.credit.base import Advantages, register_estimator
from agentrl.credit.ops import check_choice, check_finite, layout
from agentrl.types import StepBatch

NORMALIZE = ("none", "group_std")
PAPER = "Guo et al. 2025, Segment Policy Optimization (SPO-tree), arXiv 2505.23564"


def node_codes(batch: StepBatch) -> np.ndarray:
    """0..K-1 per row: the row's tree node (``StepBatch.node``; one per row without branching)."""
    node = batch.node if batch.node is not None else np.arange(len(batch), dtype=np.int64)
    return np.unique(node, return_inverse=True)[1].astype(np.int64)


@register_estimator("spo_tree", paper=PAPER)
def spo_tree(
    batch: StepBatch,
    *,
    normalize: str = "none",
    eps: float = 1e-6,
    invalid_penalty: float = 0.1,
) -> Advantages:
    """Per turn: mean outcome of the leaves below the node after it minus that of the node before it."""
    check_choice("normalize", normalize, NORMALIZE)
    check_finite("eps", eps, 0.0)
    check_finite("invalid_penalty", invalid_penalty)
    lay = layout(batch)
    code = node_codes(batch)
    count = np.bincount(code)
    value = np.bincount(code, weights=batch.outcome) / count
    g = lay.per_traj(batch.group_idx)
    r_traj = lay.per_traj(batch.outcome)
    n_groups = int(batch.group_idx.max()) + 1 if len(batch) else 0
    group_n = np.bincount(g, minlength=n_groups)
    group_mean = np.bincount(g, weights=r_traj, minlength=n_groups) / np.maximum(group_n, 1)
    before = np.empty(len(batch))
    later = lay.pos > 0
    before[~later] = group_mean[batch.group_idx[~later]]
    before[later] = value[code[np.flatnonzero(later) - 1]]
    adv = value[code] - before
    if normalize == "group_std":
        dev = r_traj - group_mean[g]
        var = np.bincount(g, weights=dev * dev, minlength=n_groups) / np.maximum(group_n - 1, 1)
        adv = adv / (np.sqrt(var)[batch.group_idx] + eps)
    return Advantages(step=adv - invalid_penalty * (~batch.valid))
