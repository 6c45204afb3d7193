"""Turn-level rewards: MT-GRPO (critic-free) and MT-PPO (GAE over turns), Zeng/Wei et al. 2025.

Environments may emit a verifiable or judged ``turn_reward`` per step; these estimators combine
it with the trajectory outcome so that early turns are credited for what they achieved
themselves, not only for how the episode ended.
"""

from __future__ import annotations

import numpy as np

from agentrl.credit.base import FIELD_HINTS, Advantages, MissingInputError, ValueHeadSpec, register_estimator
from agentrl.credit.g_ra import gated_batch
from agentrl.credit.gae import gae_advantages, gae_result, last_rows, row_values
from agentrl.credit.ops import MODES, Layout, check_choice, factorize, group_mean_std, layout, normalize
from agentrl.types import StepBatch

VARIANTS = ("two_phase", "k_turn")
PAPER = (
    "Zeng/Wei et al. 2025, Reinforcing Multi-Turn Reasoning in LLM Agents via Turn-Level Credit Assignment, "
    "arXiv 2505.11821"
)


def _norm_traj(x_traj: np.ndarray, g_traj: np.ndarray, n_groups: int, mode: str, eps: float) -> np.ndarray:
    """norm_G over trajectories (each counted once), unbiased std as in the MT-GRPO code."""
    mean, std, _ = group_mean_std(x_traj, g_traj, n_groups, ddof=1)
    return normalize(x_traj, mean[g_traj], std[g_traj], mode, eps)


def _first_tool_pos(lay: Layout, tool_call: np.ndarray) -> np.ndarray:
    """Per trajectory: position of its first tool turn, or the trajectory length if none.

    A tool turn is one whose tool result follows it in the trajectory: ``tool_call`` (the env
    answered with a result) on any row but the last, whose result no later turn sees. This is the
    reference's ``_find_result_positions`` (an assistant message followed by a user message holding
    ``<result>``); its env appends no result after the final turn (``MultiTurnEnv.step`` stops once
    ``is_completed``, e.g. at ``max_steps`` tool calls).
    """
    turn = tool_call & (lay.pos < lay.lengths[lay.slot] - 1)
    first = lay.lengths.astype(np.int64).copy()
    np.minimum.at(first, lay.slot[turn], lay.pos[turn])
    return first


# two_phase splits at the first tool result: without tool calls, train the k_turn variant
@register_estimator(
    "mt_grpo", fields=("turn_reward",), paper=PAPER, options_if_missing={"tool_call": {"variant": "k_turn"}}
)
def mt_grpo(
    batch: StepBatch,
    *,
    variant: str = "two_phase",
    lam: float = 1.0,
    eps: float = 1e-4,
    mode: str = "mean_std",
    gate: str = "none",
    gate_threshold: float = 1.0,
) -> Advantages:
    """Outcome advantage plus a turn-reward advantage for the turns that earned it.

    ``two_phase`` (the authors' code, SiliangZeng/Multi-Turn-RL-Agent, read at commit 7860de6e:
    ``verifiers/trainers/mt_grpo_env_trainer.py``, ``MTGRPOEnvTrainer``, ``advantage_est="aae"``;
    ``verifiers/envs/tool_env.py``, and ``multiturn_env.py`` at 13f32a97, for when a result is appended):
    ``A^O = norm_G(R^O_i)`` with R^O the outcome and ``A^T = norm_G(R^T_i)`` with R^T the sum of
    the trajectory's turn rewards. Tokens before the first tool result get ``A^O + lam*A^T``, later
    ones ``A^O`` (``_assign_advantages``): the result answers the first tool turn, so every turn up
    to AND INCLUDING it gets ``A^O + lam*A^T``. A tool turn is a turn the env answered with a tool
    result (``tool_call``) that is not the trajectory's last turn: the reference counts a turn only
    when a result follows it (``_find_result_positions``), and none follows the final turn. A
    trajectory without a tool turn gets ``norm_G(R^T + R^O)`` on all its rows. Group statistics
    always run over all trajectories of the group. Needs ``tool_call``.

    ``k_turn`` (our generalisation to K turns): ``A_{i,t} = A^O_i + lam*norm_{G_t}(r^T_{i,t})``
    where ``G_t`` = the rows of the same group at turn t (a trajectory shorter than t+1 is
    simply absent from G_t; a lone row normalises to 0).

    Defaults: lam 1.0, eps 1e-4, unbiased std; ``mode="mean"`` drops the division by the std.
    ``gate`` (``outcome`` with ``gate_threshold`` / ``success``; default ``none``): G-RA's gated
    reward accumulation (``agentrl.credit.g_ra``): turn rewards count only on trajectories whose gate
    is open.
    """
    batch = gated_batch(batch, gate=gate, threshold=gate_threshold) if gate != "none" else batch
    check_choice("variant", variant, VARIANTS)
    check_choice("mode", mode, MODES)
    lay = layout(batch)
    g_traj = lay.per_traj(batch.group_idx)
    outcome_traj = lay.per_traj(batch.outcome)
    adv_outcome_traj = _norm_traj(outcome_traj, g_traj, batch.num_groups, mode, eps)
    if variant == "k_turn":
        g_turn, n_g_turn = factorize(batch.group_idx, batch.turn)
        mean, std, _ = group_mean_std(batch.column("turn_reward"), g_turn, n_g_turn, ddof=1)
        adv_turn = normalize(batch.column("turn_reward"), mean[g_turn], std[g_turn], mode, eps)
        return Advantages(step=adv_outcome_traj[lay.slot] + lam * adv_turn)

    if batch.tool_call is None:
        raise MissingInputError(
            f"estimator 'mt_grpo' (variant 'two_phase') needs StepBatch.tool_call: {FIELD_HINTS['tool_call']}"
        )
    turn_sum_traj = np.bincount(lay.slot, weights=batch.turn_reward, minlength=lay.n_traj)
    adv_turn_traj = _norm_traj(turn_sum_traj, g_traj, batch.num_groups, mode, eps)
    adv_total_traj = _norm_traj(turn_sum_traj + outcome_traj, g_traj, batch.num_groups, mode, eps)
    first_tool = _first_tool_pos(lay, batch.tool_call)
    has_tool = first_tool < lay.lengths
    before_result = lay.pos <= first_tool[lay.slot]
    with_tool = adv_outcome_traj[lay.slot] + lam * adv_turn_traj[lay.slot] * before_result
    step = np.where(has_tool[lay.slot], with_tool, adv_total_traj[lay.slot])
    return Advantages(step=step)


@register_estimator(
    "mt_ppo",
    fields=("turn_reward",),
    inputs=("values",),
    row_inputs=("values",),
    paper=PAPER,
    value_heads={"value": ValueHeadSpec(target="returns")},
)
def mt_ppo(
    batch: StepBatch,
    *,
    values: np.ndarray | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    bootstrap_truncated: bool = False,
    whiten: bool = True,
    invalid_penalty: float = 0.1,
    gate: str = "none",
    gate_threshold: float = 1.0,
) -> Advantages:
    """GAE over turns with ``r_t = turn_reward_t``, plus the outcome added on the last row.

    Same options and defaults as ``gae`` (gamma 1.0, lam 1.0, whitened over the batch as verl's GAE
    does; the paper's own PPO trainer is not in reach); ``extras["returns"]`` = A + V.
    ``gate``/``gate_threshold``: G-RA's gate on the turn rewards, as in ``mt_grpo``.
    """
    batch = gated_batch(batch, gate=gate, threshold=gate_threshold) if gate != "none" else batch
    value = row_values("mt_ppo", values)
    lay = layout(batch)
    reward = batch.turn_reward + batch.outcome * last_rows(lay)
    adv = gae_advantages(
        batch, lay, reward, value, gamma=gamma, lam=lam, bootstrap_truncated=bootstrap_truncated
    )
    return gae_result(adv, value, batch, invalid_penalty=invalid_penalty, whiten=whiten)
