"""MatchTIR's dual-level advantage over matched turn rewards (Qu et al. 2026, arXiv 2601.10712).

MatchTIR scores each turn of a tool-use trajectory by matching its calls to gold calls (the reward
side lives with the envs: ``agentrl.envs.tools.matchtir``, ``BFCLMultiTurnEnv(turn_rewards="matchtir")``)
and trains on two advantages averaged per turn. With r_{i,j} the turn reward of turn j of
trajectory i (``turn_reward``) and G the group:

    A^g_i   = (sum_j r_{i,j} - mean_G) / (std_G + eps)              trajectory level
    G_{i,j} = sum_{k>=j} gamma^(k-j) r_{i,k}                         discounted turn return
    A^t_ij  = (G_{i,j} - mean_{G,j}) / (std_{G,j} + eps)             among the group's turn-j rows
    A_ij    = (A^g_i + A^t_ij) / 2                                   on every token of turn j

Source. The official repository (quchangle1/MatchTIR) in our code store has only its README and
evaluation; the formula above and its defaults follow the public re-implementation that registers
it as the verl advantage estimator ``"mathtir"`` (``compute_grpo_mathtir_outcome_advantage``; its
reward functions ``compute_process_KM`` / ``compute_process_ot`` put each turn's reward on the turn's
last token, so the per-trajectory score, the sum of token rewards, is the sum of turn rewards) [code]:
gamma (``lam`` there) 0.9, eps 1e-6, unbiased std (``torch.std``) in both terms, turns indexed by
their position in the trajectory, turn-level statistics keyed by (group, turn index), always
divided by the std; ``mode="mean"`` (``norm_adv_by_std_in_grpo=False``) drops the division in A^g
only, as there. Run scripts: n = 16 rollouts per task, 3 epochs [card M1].

Options and where they depart from that code:
- ``singleton``: a group (or a (group, turn) cell) of one member. ``"code"`` (default): verl's
  fallback mean 0, std 1, so the row keeps x/(1 + eps) (its raw sum or return); ``"zero"`` [ours]:
  such a term is 0, as ``grpo`` and ``gigpo`` treat lone members.
- ``outcome_weight`` [ours, default 0 = the code]: adds w times the episode outcome to the last
  turn's reward, for envs whose turn rewards do not already score the final answer (MatchTIR's
  answer turn earns its F1 as a turn reward).
- ``invalid_penalty`` [ours, default 0 = the code]: subtracted from invalid rows at the end
  (the ``c_inv`` of ``grpo``); MatchTIR's rewards already give an unreadable turn 0.
No row is special-cased for truncation (the code has no such case): a truncated trajectory simply
has fewer turns.
"""

from __future__ import annotations

import numpy as np

from agentrl.credit.base import Advantages, register_estimator
from agentrl.credit.ops import (
    MODES,
    check_choice,
    check_finite,
    discounted_returns,
    factorize,
    group_mean_std,
    layout,
)
from agentrl.types import StepBatch

SINGLETON = ("code", "zero")
PAPER = (
    "Qu et al. 2026, MatchTIR: Fine-Grained Supervision for Tool-Integrated Reasoning via Bipartite "
    "Matching, arXiv 2601.10712"
)


def _zscore(x: np.ndarray, g: np.ndarray, n: int, mode: str, eps: float, singleton: str) -> np.ndarray:
    """(x - mean)/(std + eps) within codes ``g`` (unbiased std); lone members by ``singleton``."""
    mean, std, count = group_mean_std(x, g, n, ddof=1)
    alone = count[g] == 1
    if singleton == "code":  # verl's fallback for a group of one: mean 0, std 1
        mean = np.where(count == 1, 0.0, mean)
        std = np.where(count == 1, 1.0, std)
    out = (x - mean[g]) / (std[g] + eps) if mode == "mean_std" else x - mean[g]
    return np.where(alone, 0.0, out) if singleton == "zero" else out


@register_estimator("matchtir", fields=("turn_reward",), paper=PAPER)
def matchtir(
    batch: StepBatch,
    *,
    gamma: float = 0.9,
    eps: float = 1e-6,
    mode: str = "mean_std",
    singleton: str = "code",
    outcome_weight: float = 0.0,
    invalid_penalty: float = 0.0,
) -> Advantages:
    """Mean of the group z-score of the summed turn rewards and the per-turn-index z-score of the
    discounted turn return."""
    check_finite("gamma", gamma, 0.0, 1.0)
    check_finite("eps", eps, 0.0)
    check_choice("mode", mode, MODES)
    check_choice("singleton", singleton, SINGLETON)
    check_finite("outcome_weight", outcome_weight)
    check_finite("invalid_penalty", invalid_penalty)
    lay = layout(batch)
    reward = batch.column("turn_reward").astype(np.float64)
    if outcome_weight:
        last = np.zeros(len(batch), dtype=bool)
        last[lay.first + lay.lengths - 1] = True
        reward = reward + outcome_weight * batch.outcome * last
    total = np.bincount(lay.slot, weights=reward, minlength=lay.n_traj)
    a_traj = _zscore(total, lay.per_traj(batch.group_idx), batch.num_groups, mode, eps, singleton)
    ret = discounted_returns(lay, reward, gamma)
    cell, n_cells = factorize(batch.group_idx, lay.pos)
    a_turn = _zscore(ret, cell, n_cells, "mean_std", eps, singleton)
    return Advantages(step=0.5 * (a_traj[lay.slot] + a_turn) - invalid_penalty * (~batch.valid))
