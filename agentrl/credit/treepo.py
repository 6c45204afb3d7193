"""TreePO: a trajectory's advantage averaged over the subtrees it belongs to (M-A-P 2025, heuristic
tree-based rollouts, arXiv 2508.17445), on tree rollouts with turns as segments.

Each trajectory i of a rollout tree (``rollout(..., branching=...)``) lies under a chain of
subtrees: the group (root), and every branch point on its path. Each gives a baseline; TreePO
averages the normalised advantages against them:

    A_i = mean_{j in ancestors(i)} (R_i - mu_j) / (sigma_j + eps)

with mu_j, sigma_j the mean and (unbiased) std of the outcomes of the leaves under j. An ancestor
is the group or a node of i's path where the set of leaves below shrinks (a branch point); sets
of one leaf are not ancestors. Every row of i takes A_i; the turns i shares with its siblings (their
copies, ``StepBatch.node``) are trained once with the mean over the leaves below them. Without
branching the only ancestor is the group and this is GRPO (``mode`` mean_std, unbiased std).

Sources. The paper's segment-tree advantage (global root-group and local subtree baselines); the
formula is the method card's reading of the paper [inferred]: the authors' code is not in the
searched store. Turns as segments and ``c_inv`` on invalid rows are [ours].
"""

from __future__ import annotations

import numpy as np

from agentrl.credit.base import Advantages, register_estimator
from agentrl.credit.ops import check_finite, layout
from agentrl.credit.spo_tree import node_codes
from agentrl.types import StepBatch

PAPER = "TreePO (M-A-P 2025), arXiv 2508.17445"


@register_estimator("treepo", paper=PAPER)
def treepo(batch: StepBatch, *, eps: float = 1e-6, invalid_penalty: float = 0.1) -> Advantages:
    """The mean over a trajectory's subtrees (group and branch points) of its normalised advantage."""
    check_finite("eps", eps, 0.0)
    check_finite("invalid_penalty", invalid_penalty)
    lay = layout(batch)
    code = node_codes(batch)
    r_row = batch.outcome
    count = np.bincount(code)
    mean = np.bincount(code, weights=r_row) / count
    dev = r_row - mean[code]
    std = np.sqrt(np.bincount(code, weights=dev * dev) / np.maximum(count - 1, 1))
    g = lay.per_traj(batch.group_idx)
    r_traj = lay.per_traj(r_row)
    n_groups = int(batch.group_idx.max()) + 1 if len(batch) else 0
    group_n = np.bincount(g, minlength=n_groups)
    group_mean = np.bincount(g, weights=r_traj, minlength=n_groups) / np.maximum(group_n, 1)
    g_dev = r_traj - group_mean[g]
    group_std = np.sqrt(
        np.bincount(g, weights=g_dev * g_dev, minlength=n_groups) / np.maximum(group_n - 1, 1)
    )
    # a branch point on the path: a node with >= 2 leaves, fewer than the node before it (or the group)
    n_before = np.empty(len(batch), dtype=np.int64)
    later = lay.pos > 0
    n_before[~later] = group_n[batch.group_idx[~later]]
    n_before[later] = count[code[np.flatnonzero(later) - 1]]
    branch = (count[code] >= 2) & (count[code] < n_before)
    term = np.divide(r_row - mean[code], std[code] + eps, out=np.zeros(len(batch)), where=branch)
    total = np.bincount(lay.slot, weights=term, minlength=lay.n_traj)
    terms = np.bincount(lay.slot, weights=branch.astype(np.float64), minlength=lay.n_traj)
    has_root = group_n[g] >= 2
    total += np.divide(g_dev, group_std[g] + eps, out=np.zeros_like(g_dev), where=has_root)
    terms += has_root
    adv_traj = np.divide(total, terms, out=np.zeros_like(total), where=terms > 0)
    return Advantages(step=adv_traj[lay.slot] - invalid_penalty * (~batch.valid))
