"""HiPER hierarchical advantage estimation (Peng et al. 2026, arXiv 2602.16165).

Every response is ``<switch>KEEP|SWITCH</switch><subgoal>...</subgoal><action>...</action>``.
A segment (one subgoal) starts at t=0 and on every SWITCH. Three critic heads give three
signals: the executor's action advantage A^L (GAE inside a segment with V_L), the planner's
subgoal advantage A^H (GAE across segments with V_H) and the switch advantage A^T (segment
return minus V_T), each routed to its own part of the response (credit.md, HiPER).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agentrl.credit.base import Advantages, MissingInputError, register_estimator
from agentrl.credit.gae import last_rows
from agentrl.credit.ops import Layout, backward_recursion, layout, next_in_traj, whiten
from agentrl.types import StepBatch

HEADS = ("high", "low", "switch")


def _heads(values: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(values, dict):
        raise ValueError(f"estimator 'hiper' takes values as a dict of per-row arrays with heads {list(HEADS)}")
    missing = [h for h in HEADS if h not in values]
    if missing:
        raise MissingInputError(
            f"estimator 'hiper' needs value head(s) {missing} in values= (V_H 'high', V_L 'low', V_T 'switch')"
        )
    unknown = sorted(set(values) - set(HEADS))
    if unknown:
        raise ValueError(f"estimator 'hiper' got unknown value head(s) {unknown}; expected {list(HEADS)}")
    return values["high"], values["low"], values["switch"]


def segment_starts(batch: StepBatch, lay: Layout) -> np.ndarray:
    """bool per row: a new subgoal starts here (t=0 always, then on every SWITCH)."""
    return (lay.pos == 0) | batch.switch


def shaped_rewards(
    batch: StepBatch,
    lay: Layout,
    starts: np.ndarray,
    *,
    invalid_penalty: float,
    keep_penalty: float,
    subgoal_change_penalty: float,
) -> np.ndarray:
    """Env reward plus the HiPER code's shaping.

    - ``-invalid_penalty`` on a row whose action was invalid;
    - ``-keep_penalty * (fraction of KEEP turns)`` spread evenly over the trajectory's KEEP turns
      (each gets ``-keep_penalty * n_keep / T / n_keep``), so never switching costs most;
    - ``-subgoal_change_penalty`` on a KEEP turn whose subgoal text differs from the previous
      turn's (keeping while rewriting the subgoal is an unannounced switch).
    A KEEP turn is a turn that does not start a segment: t=0 always starts one (there is no
    subgoal to keep yet), so it is never a KEEP turn [ours; the sources are silent].
    """
    keep = ~starts
    n_keep = np.bincount(lay.slot, weights=keep, minlength=lay.n_traj)
    frac_keep = n_keep / lay.lengths
    per_keep = np.divide(keep_penalty * frac_keep, n_keep, out=np.zeros(lay.n_traj), where=n_keep > 0)
    prev_subgoal = np.empty_like(batch.subgoal)
    prev_subgoal[1:] = batch.subgoal[:-1]
    prev_subgoal[lay.first] = batch.subgoal[lay.first]
    changed = keep & (batch.subgoal != prev_subgoal)
    return (
        batch.reward
        - invalid_penalty * (~batch.valid)
        - per_keep[lay.slot] * keep
        - subgoal_change_penalty * changed
    )


def _segment_layout(seg_slot: np.ndarray) -> Layout:
    """Layout over segments (grouped by trajectory, in order), for recursions across segments."""
    n = seg_slot.shape[0]
    start = np.ones(n, dtype=bool)
    start[1:] = seg_slot[1:] != seg_slot[:-1]
    first = np.flatnonzero(start)
    lengths = np.diff(np.append(first, n))
    slot = np.cumsum(start) - 1
    return Layout(first=first, lengths=lengths, slot=slot, pos=np.arange(n) - first[slot])


@register_estimator(
    "hiper",
    fields=("switch", "subgoal"),
    inputs=("values",),
    row_inputs=("values",),
    paper="Peng et al. 2026 (HiPER), arXiv 2602.16165",
)
def hiper(
    batch: StepBatch,
    *,
    values: dict[str, np.ndarray] | None = None,
    gamma: float = 1.0,
    lam_L: float = 1.0,
    lam_H: float = 0.95,
    shaping: bool = True,
    invalid_penalty: float = 0.1,
    keep_penalty: float = 0.3,
    subgoal_change_penalty: float = 0.3,
    bootstrap_truncated: bool = False,
    standardize: bool = True,
    eps: float = 1e-8,
) -> Advantages:
    """Hierarchical advantages: spans "action" (A^L), "subgoal" (A^H on boundary rows), "switch" (A^T).

    values: {"high": V_H, "low": V_L, "switch": V_T}, one float per row each. Segment k covers
    turns [t_k, t_{k+1}-1] (d_k turns). With r the (shaped) reward:
    - executor ``A^L_t = delta_t + gamma*lam_L*(1-done_t)*A^L_{t+1}``, reset at segment ends, with
      ``delta_t = r_t + gamma*(1-done_t)*V_next - V_L(t)``; V_next = V_L(t+1) inside a segment,
      V_H(t_{k+1}) at a segment end, 0 at the episode end;
    - planner ``A^H_k = delta^H_k + gamma^{d_k}*lam_H*(1-done)*A^H_{k+1}`` with
      ``delta^H_k = G_k + gamma^{d_k}*(1-done)*V_H(t_{k+1}) - V_H(t_k)``, G_k the segment's
      discounted reward sum;
    - switch ``A^T_t = G^_t - V_T(t)``, ``G^_t = r_t + gamma*G^_{t+1}`` inside the segment,
      bootstrapped by V_H(t_{k+1}) at its end.
    A truncated trajectory with ``bootstrap_truncated`` continues, at its end, from its last
    row's own (detached) V_L instead of 0, in all three recursions [ours for planner/switch].

    ``masks["subgoal"]`` marks the boundary rows; ``spans["subgoal"]`` is 0 elsewhere. With
    ``standardize`` each family is standardised over the batch (subgoal over boundary rows only).
    ``step`` = the action span. ``extras``: value targets A + V per head, before standardising
    (``target_high`` only means something on boundary rows), and the ``shaped_reward``.
    Defaults: gamma 1.0, lam_L 1.0, lam_H 0.95, shaping on (invalid 0.1, KEEP 0.3, change 0.3).
    """
    v_high, v_low, v_switch = _heads(values)
    lay = layout(batch)
    starts = segment_starts(batch, lay)
    is_last = last_rows(lay)
    seg_end = next_in_traj(lay, starts.astype(np.float64), fill=1.0) > 0
    if shaping:
        reward = shaped_rewards(
            batch,
            lay,
            starts,
            invalid_penalty=invalid_penalty,
            keep_penalty=keep_penalty,
            subgoal_change_penalty=subgoal_change_penalty,
        )
    else:
        reward = batch.reward.astype(np.float64)
    not_done = 1.0 - batch.done

    bootstrap_end = v_low * (batch.truncated & ~batch.done) if bootstrap_truncated else np.zeros(len(batch))
    after_segment = np.where(is_last, bootstrap_end, next_in_traj(lay, v_high))
    value_next = np.where(seg_end, after_segment, next_in_traj(lay, v_low))

    delta_low = reward + gamma * not_done * value_next - v_low
    adv_low = backward_recursion(lay, delta_low, gamma * lam_L * not_done * ~seg_end)

    seg_return = backward_recursion(lay, reward + gamma * not_done * after_segment * seg_end, gamma * ~seg_end)
    adv_switch = seg_return - v_switch

    start_rows = np.flatnonzero(starts)
    seg_len = np.diff(np.append(start_rows, len(batch)))
    end_rows = start_rows + seg_len - 1
    seg_discount = gamma ** seg_len.astype(np.float64)
    delta_high = seg_return[start_rows] - v_high[start_rows]
    coef_high = seg_discount * lam_H * not_done[end_rows]
    adv_high_seg = backward_recursion(_segment_layout(lay.slot[start_rows]), delta_high, coef_high)
    adv_high = np.zeros(len(batch))
    adv_high[start_rows] = adv_high_seg

    extras = {
        "target_high": adv_high + v_high,
        "target_low": adv_low + v_low,
        "target_switch": seg_return,
        "shaped_reward": reward,
    }
    if standardize:
        adv_low = whiten(adv_low, eps=eps)
        adv_high = whiten(adv_high, mask=starts, eps=eps)
        adv_switch = whiten(adv_switch, eps=eps)
    return Advantages(
        step=adv_low,
        spans={"action": adv_low, "subgoal": adv_high, "switch": adv_switch},
        masks={"subgoal": starts},
        extras=extras,
    )
