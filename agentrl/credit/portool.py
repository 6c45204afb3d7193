"""PORTool: fork-relative step advantages on a rollout tree, blended with trajectory GRPO (Wu et al.
2025, "PORTool", arXiv 2510.26020), with turns as the tree's steps.

On tree rollouts (``rollout(..., branching=...)``) a step shared by several trajectories is one tree
node (``StepBatch.node``). Each node's step reward is whether its descendants reach a correct answer
(the share of the leaves below it that succeed, ``correct="success"``, or their mean outcome,
``"outcome"``), plus ``tool_weight`` for a turn whose tool call ran (``tool_call`` and ``valid``). At
a fork (a node whose episodes continue with two or more different next steps) the children's step
rewards are normalised among themselves:

    A_fork(r) = (s(child) - mean_siblings s) / (std_siblings s + eps)     (0 where a node does not fork)
    A(r)      = A_traj(i) + lam * A_fork(r),    A_traj = GRPO (mean_std) over the group

The group's root is not a fork here: its children are the trajectories themselves, which
``A_traj`` already compares. Shared steps get identical rewards, and the trainer trains them once.

Sources. The method card's reading of the paper and a third-party summary (the authors' code is
not in the searched store): the correctness term, the format/success term, identical rewards for
shared steps and ``A = A_traj + lam A_fork`` are the paper's; ``lam`` = 1, ``tool_weight`` = 0 (the
paper's weights were not found), the sibling statistics (unbiased std, each child once) and turns
as steps are [inferred]/[ours].
"""

from __future__ import annotations

import numpy as np

from agentrl.credit.base import Advantages, register_estimator
from agentrl.credit.grpo import grpo
from agentrl.credit.ops import check_choice, check_finite, layout
from agentrl.credit.spo_tree import node_codes
from agentrl.types import StepBatch

CORRECT = ("success", "outcome")
PAPER = "Wu et al. 2025, PORTool, arXiv 2510.26020"


@register_estimator("portool", paper=PAPER)
def portool(
    batch: StepBatch,
    *,
    lam: float = 1.0,
    correct: str = "success",
    tool_weight: float = 0.0,
    eps: float = 1e-6,
    invalid_penalty: float = 0.1,
) -> Advantages:
    """Trajectory GRPO plus each step's reward normalised among its siblings at a fork."""
    check_choice("correct", correct, CORRECT)
    for name, value in (("lam", lam), ("tool_weight", tool_weight), ("eps", eps)):
        check_finite(name, value, 0.0)
    check_finite("invalid_penalty", invalid_penalty)
    lay = layout(batch)
    code = node_codes(batch)
    count = np.bincount(code).astype(np.float64)
    leaf = batch.success.astype(np.float64) if correct == "success" else batch.outcome
    reward = np.bincount(code, weights=leaf) / count
    if tool_weight and batch.tool_call is not None:
        ran = (batch.tool_call & batch.valid).astype(np.float64)
        reward = reward + tool_weight * (np.bincount(code, weights=ran) / count)
    # forks: the distinct (parent node, child node) edges below the root
    later = np.flatnonzero(lay.pos > 0)
    parent, child = code[later - 1], code[later]
    edges = np.unique(np.stack([parent, child], axis=1), axis=0) if later.size else np.zeros((0, 2), np.int64)
    n_nodes = count.shape[0]
    kids = np.bincount(edges[:, 0], minlength=n_nodes).astype(np.float64)
    s = reward[edges[:, 1]]
    mean = np.bincount(edges[:, 0], weights=s, minlength=n_nodes) / np.maximum(kids, 1)
    dev = s - mean[edges[:, 0]]
    std = np.sqrt(np.bincount(edges[:, 0], weights=dev * dev, minlength=n_nodes) / np.maximum(kids - 1, 1))
    fork = np.zeros(len(batch))
    at_fork = kids[parent] >= 2
    rows = later[at_fork]
    p, c = parent[at_fork], child[at_fork]
    fork[rows] = (reward[c] - mean[p]) / (std[p] + eps)
    traj = grpo(batch, mode="mean_std", eps=eps, invalid_penalty=0.0).step
    return Advantages(step=traj + lam * fork - invalid_penalty * (~batch.valid))
