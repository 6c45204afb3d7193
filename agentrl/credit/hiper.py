"""HiPER hierarchical advantage estimation (Peng et al. 2026, arXiv 2602.16165).

Every response is ``<switch>KEEP|SWITCH</switch><subgoal>...</subgoal><action>...</action>``.
A segment (one subgoal) starts at t=0 and on every SWITCH. Three critic heads give three
signals: the executor's action advantage A^L (GAE inside a segment with V_L), the planner's
subgoal advantage A^H (GAE across segments with V_H) and the switch advantage A^T (segment
return minus V_T), each routed to its own part of the response.

Sources. The authors' code is JonP07/HiPER-agent: ``hiper_hae/core_hae.py`` (``HAEConfig``,
``compute_hae_advantage``) and ``hiper_hae/hier_mask.py`` in the current version;
``hier_gae/core_hgae.py`` (``HGAEConfig``, ``compute_hgae_advantage``) and ``hier_gae/hier_mask.py``
in the earlier one (commit 2ee6abfe); the run script ``example_scripts/HiPER_trainer/run_alfworld.sh``
(commit aa46b433) sets ``algorithm.hae.bootstrap_truncated=True``, ``keep_penalty=-0.3``,
``keep_consistency_penalty=-0.3`` and ``invalid_action_penalty_coef=0.1``. The earlier files were
read at 2ee6abfe; the current ``core_hae.py`` was read from a copy of its text (the same two
recursions, the KEEP count starting at t=0, no ``keep_penalty_skip_first``). The two versions
compute the same advantages except for the KEEP penalty (see ``shaped_rewards``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agentrl.credit.base import Advantages, MissingInputError, ValueHeadSpec, register_estimator
from agentrl.credit.gae import last_rows
from agentrl.credit.ops import Layout, backward_recursion, check_choice, layout, next_in_traj, whiten
from agentrl.types import StepBatch

HEADS = ("high", "low", "switch")
TRUNCATED_BOOTSTRAPS = ("segment_high", "last_low")


def _heads(values: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(values, dict):
        raise ValueError(
            f"estimator 'hiper' takes values as a dict of per-row arrays with heads {list(HEADS)}"
        )
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
    keep_penalty_skip_first: bool = False,
) -> np.ndarray:
    """Env reward plus the HiPER code's shaping (``compute_hae_advantage``, normalized KEEP penalty).

    - ``-invalid_penalty`` on a row whose action was invalid;
    - ``-keep_penalty * (fraction of KEEP turns)`` spread evenly over the trajectory's KEEP turns,
      so never switching costs most. A KEEP turn is one whose tag is KEEP (or missing), t=0
      included: the current code (``hiper_hae/core_hae.py``) counts every turn, so each KEEP turn
      gets ``-keep_penalty / T``. ``keep_penalty_skip_first`` follows the earlier code's option of
      that name (``hier_gae/core_hgae.py``, default False there too): turns t >= 1 only, each KEEP
      turn gets ``-keep_penalty / (T-1)``. Both skip one-turn trajectories, as the code does;
    - ``-subgoal_change_penalty`` on a KEEP turn t >= 1 whose subgoal text differs from the
      previous turn's (keeping while rewriting the subgoal is an unannounced switch); t=0 has no
      previous subgoal and is never penalised, in both versions.
    """
    keep_tag = ~batch.column("switch")
    counted = keep_tag & (lay.pos > 0) if keep_penalty_skip_first else keep_tag
    n_turns = lay.lengths - 1 if keep_penalty_skip_first else lay.lengths
    n_keep = np.bincount(lay.slot, weights=counted, minlength=lay.n_traj)
    applies = (lay.lengths > 1) & (n_keep > 0)
    frac_keep = np.divide(n_keep, n_turns, out=np.zeros(lay.n_traj), where=applies)
    per_keep = np.divide(keep_penalty * frac_keep, n_keep, out=np.zeros(lay.n_traj), where=applies)
    keep = ~starts  # t >= 1 and not SWITCH
    prev_subgoal = np.empty_like(batch.subgoal)
    prev_subgoal[1:] = batch.column("subgoal")[:-1]
    prev_subgoal[lay.first] = batch.column("subgoal")[lay.first]
    changed = keep & (batch.subgoal != prev_subgoal)
    return (
        batch.reward
        - invalid_penalty * (~batch.valid)
        - per_keep[lay.slot] * counted
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
    # V_H is fitted on segment starts only; V_L reads the state right after </subgoal>
    value_heads={
        "high": ValueHeadSpec(target="target_high", applies="subgoal"),
        "low": ValueHeadSpec(target="target_low", reads_after="subgoal"),
        "switch": ValueHeadSpec(target="target_switch"),
    },
    spans=("switch", "subgoal", "action"),
    response_format="hiper",
    # measured on the maze family, 50 iterations: at the family's 1e-3 HiPER fell below its warm
    # start on seed 0 (43.1%) and stayed inside seed 1's interval (53.2%); at 5e-4 it gained beyond
    # both intervals on seeds 0, 1, 3 and 4 (+7.3 to +14.8 points), not on seed 2 (-1.5)
    # (docs/benchmarks.md, "HiPER's warm start")
    benchmark_lr_scale=0.5,
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
    keep_penalty_skip_first: bool = False,
    bootstrap_truncated: bool = True,
    truncated_bootstrap: str = "segment_high",
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
    Truncated trajectories (``bootstrap_truncated``, on by default as in the authors' run script):
    the executor continues from the last row's own (detached) V_L, as ``compute_hae_advantage``
    does; the planner and the switch returns continue from ``truncated_bootstrap``:
    ``"segment_high"`` (default, the code): V_H at the start of the last segment;
    ``"last_low"`` [ours, agentrl before issue 13]: the last row's V_L, the value of the state where
    the episode was cut, for all three recursions. Without ``bootstrap_truncated`` all three use 0.

    ``masks["subgoal"]`` marks the boundary rows; ``spans["subgoal"]`` is 0 elsewhere. With
    ``standardize`` each family is standardised over the batch (subgoal over boundary rows only;
    the code's ``norm_adv=True``: population std + eps; only centred when std <= eps [ours]).
    ``step`` = the action span. ``extras``: value targets A + V per head, before standardising
    (``target_high`` only means something on boundary rows), and the ``shaped_reward``.
    Defaults: gamma 1.0, lam_L 1.0, lam_H 0.95, shaping on (invalid 0.1, KEEP 0.3 counted from
    t=0, change 0.3), bootstrap_truncated on (the ALFWorld run script).
    """
    check_choice("truncated_bootstrap", truncated_bootstrap, TRUNCATED_BOOTSTRAPS)
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
            keep_penalty_skip_first=keep_penalty_skip_first,
        )
    else:
        reward = batch.reward.astype(np.float64)
    not_done = 1.0 - batch.done

    start_rows = np.flatnonzero(starts)
    seg_start_of_row = start_rows[np.cumsum(starts) - 1]
    cut = (batch.truncated & ~batch.done) if bootstrap_truncated else np.zeros(len(batch), dtype=bool)
    end_low = v_low * cut
    end_high = end_low if truncated_bootstrap == "last_low" else v_high[seg_start_of_row] * cut
    next_high = next_in_traj(lay, v_high)
    after_segment_low = np.where(is_last, end_low, next_high)
    after_segment_high = np.where(is_last, end_high, next_high)
    value_next = np.where(seg_end, after_segment_low, next_in_traj(lay, v_low))

    delta_low = reward + gamma * not_done * value_next - v_low
    adv_low = backward_recursion(lay, delta_low, gamma * lam_L * not_done * ~seg_end)

    seg_return = backward_recursion(
        lay, reward + gamma * not_done * after_segment_high * seg_end, gamma * ~seg_end
    )
    adv_switch = seg_return - v_switch

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
