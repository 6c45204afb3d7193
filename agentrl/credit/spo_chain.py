"""SPO-chain: segment advantages from Monte-Carlo values at segment boundaries, segments = turns
(Guo et al. 2025, "Segment Policy Optimization", arXiv 2505.23564; values as in VinePPO,
Kazemnejad et al. 2024, arXiv 2410.01679).

Chain rollouts (``Branching(at="chain", interval=k, width=M)``) continue every root (a sampled
episode of the group) from each boundary turn k, 2k, ... before its end by M episodes. For a root
i with outcome R_i and boundaries b_1 < ... < b_m:

    V(b_j)   = mean outcome of the continuations from b_j     (+ R_i with ``include_root``)
    V(b_0)   = the group's mean root outcome (``start="group"``), or the other roots' mean
               (``start="others"``; a root alone in its group takes its own outcome)
    V(end)   = R_i
    A(turn t) = V(b_{j+1}) - V(b_j)   for b_j <= t < b_{j+1}

Outcomes are whole-episode returns (a continuation's copied turns keep their rewards), so with
turn rewards this is the segment's rewards plus the change in value-to-go. A root shorter than the
interval, or one whose boundaries the budget dropped, has fewer segments (one: R_i - V(b_0)).
Continuations are found through ``StepBatch.node`` (their copied turns share the root's nodes)
and the column ``value_only``: value-only rows get 0 and are never trained (``merge_copies``);
with ``train_branches`` a continuation from b trains its own turns on R_c - V(b) and its copies on
the root's advantages. ``normalize="group_std"`` divides by the std (unbiased) of the group's root
outcomes + ``eps``; ``invalid_penalty`` is subtracted from trained invalid rows.

Sources. SPO's authors' code (AIFrameResearch/SPO) is not in the searched store (its README and
result files are; the README says the code is adapted from VinePPO's). SPO-chain's paper text:
boundaries every ``int`` cutpoints (int5/int10), V by MC rollouts from the prefix,
A_k = V(s_{k+1}) - V(s_k). VinePPO's code (McGill-NLP/VinePPO @f636a54,
``math_episode_generator_with_mc_advantages.py``) fixes the details followed here: a state's value
is the mean reward of its MC rollouts only (the main trajectory's own return is not in it: our
``include_root=False``); the terminal value is 0 with the trajectory's score as the last step's
reward (our V(end) = R_i); the MC rollouts only give values (episodes are built from the main
trajectories alone: our value-only continuations); values it did not estimate, past
``max_step_for_value_estimation``, are filled from the trajectory's own return. [ours]: turns as
segments and boundaries every ``interval`` turns (SPO's cutpoints are low-probability tokens);
V(b_0) from the group's roots (VinePPO samples separate MC rollouts from the prompt; the group's
roots are such rollouts, ``start="others"`` leaves the root's own return out as VinePPO does); a
boundary without continuations joins its two segments; ``normalize`` and ``invalid_penalty``.
"""

from __future__ import annotations

import numpy as np

from agentrl.credit.base import Advantages, register_estimator
from agentrl.credit.ops import check_choice, check_finite, layout
from agentrl.types import StepBatch

NORMALIZE = ("none", "group_std")
START = ("group", "others")
PAPER = "Guo et al. 2025, Segment Policy Optimization (SPO-chain), arXiv 2505.23564; VinePPO values"


@register_estimator("spo_chain", fields=("value_only",), paper=PAPER)
def spo_chain(
    batch: StepBatch,
    *,
    include_root: bool = False,
    start: str = "group",
    normalize: str = "none",
    eps: float = 1e-6,
    invalid_penalty: float = 0.1,
) -> Advantages:
    """Per turn: the Monte-Carlo value at the end of its segment minus that at its start."""
    check_choice("start", start, START)
    check_choice("normalize", normalize, NORMALIZE)
    check_finite("eps", eps, 0.0)
    check_finite("invalid_penalty", invalid_penalty)
    if not isinstance(include_root, bool):
        raise ValueError(f"option include_root={include_root!r} must be true or false")
    n = len(batch)
    idx = np.arange(n, dtype=np.int64)
    lay = layout(batch)
    node = batch.node if batch.node is not None else idx
    value_only = batch.column("value_only")
    copy = node != idx
    n_copy = np.bincount(lay.slot, weights=copy, minlength=lay.n_traj).astype(np.int64)
    r_traj = lay.per_traj(batch.outcome)
    root = (n_copy == 0) & ~lay.per_traj(value_only)
    # each continuation's value sample lands on the row of the last turn it copies (the boundary)
    branch = np.flatnonzero(n_copy > 0)
    key = node[lay.first[branch] + n_copy[branch] - 1]
    mc_sum = np.bincount(key, weights=r_traj[branch], minlength=n)
    mc_cnt = np.bincount(key, minlength=n).astype(np.float64)
    extra = float(include_root)
    v_at = np.divide(
        mc_sum + extra * batch.outcome, mc_cnt + extra, out=np.zeros(n), where=mc_cnt > 0
    )  # the value after a row's turn, where continuations start there

    g = lay.per_traj(batch.group_idx)
    n_groups = int(batch.group_idx.max()) + 1
    g_n = np.bincount(g, weights=root, minlength=n_groups)
    g_sum = np.bincount(g, weights=r_traj * root, minlength=n_groups)
    if start == "group":
        v_start = g_sum[g] / np.maximum(g_n[g], 1)
    else:
        alone = g_n[g] - root < 1
        v_start = np.where(alone, r_traj, (g_sum[g] - r_traj * root) / np.maximum(g_n[g] - root, 1))

    # segment ends: boundary rows (continuations start after them) and every trajectory's last row
    last = np.zeros(n, dtype=bool)
    last[lay.first + lay.lengths - 1] = True
    ends = last | (mc_cnt > 0)
    v_end = np.where(last, batch.outcome, v_at)
    end_row = np.minimum.accumulate(np.where(ends, idx, n)[::-1])[::-1]
    before = np.maximum.accumulate(np.where(ends, idx, -1))
    prev = np.full(n, -1, dtype=np.int64)
    prev[1:] = before[:-1]
    first_row = lay.first[lay.slot]
    seg_start = np.where(prev >= first_row, v_end[np.maximum(prev, 0)], v_start[lay.slot])
    adv = v_end[end_row] - seg_start
    root_row = root[lay.slot]
    trained = ~value_only
    own = trained & ~root_row & ~copy  # a trained continuation's own turns: R_c - V(its boundary)
    if own.any():
        b_row = np.full(lay.n_traj, -1, dtype=np.int64)
        b_row[branch] = key
        adv[own] = batch.outcome[own] - v_at[b_row[lay.slot[own]]]
    shared = trained & copy  # a trained continuation's copied turns: what the sampled turn got
    adv[shared] = adv[node[shared]]
    if normalize == "group_std":
        dev = (r_traj - g_sum[g] / np.maximum(g_n[g], 1)) * root
        var = np.bincount(g, weights=dev * dev, minlength=n_groups) / np.maximum(g_n - 1, 1)
        adv = adv / (np.sqrt(var)[batch.group_idx] + eps)
    adv = np.where(trained, adv - invalid_penalty * (~batch.valid), 0.0)
    return Advantages(step=adv)
