"""G-RA, Gated Reward Accumulation (Sun et al. 2025, "Stabilizing Long-term Multi-turn Reinforcement
Learning with Gated Rewards", arXiv 2508.10548).

Why: turn rewards summed into the return unconditionally (the paper's D-RA baseline) can be farmed
while the task itself fails; the paper's SWE agents trained that way collapsed. G-RA counts the
immediate rewards only on trajectories whose high-level outcome passes a threshold, so shaping
rewards never pay for a failed episode.

Formula [paper: abstract; the exact form via third-party summaries of the paper (emergentmind),
the PDF and any code were not in the store]:
``r~_t = r^low_t * 1[R^high >= Delta]`` and the gated return ``R~_i = R^high_i + sum_t r~_{i,t}``.
Here ``r^low`` is ``turn_reward`` and ``R^high`` the trajectory's outcome. ``g_ra`` then takes the
group baseline of GRPO on that return: ``A_i = (R~_i - mean_G R~) / (std_G R~ + eps)`` (unbiased
std, each trajectory counted once), broadcast to every row of i, minus the invalid-action penalty on
invalid rows (after normalising, as ``grpo``). The summaries call G-RA a reward transform that any
on-policy learner (PPO, GRPO) takes; a group-normalised GRPO return is our choice for the
critic-free estimator [inferred].

Gate (``gate``): ``"outcome"`` (default) is the paper's ``R^high >= threshold``; ``"success"`` opens it
on the trajectory's success flag (for envs whose outcome is not a pass/fail score) [ours]; ``"none"``
is D-RA, the paper's ungated baseline (every turn reward counts). ``threshold`` (Delta) defaults to
1.0 [inferred: the paper sets Delta per task, e.g. at a non-empty SWE submission; 1.0 is "the task
was solved" for agentrl's 0/1 outcomes]. A truncated trajectory is gated like any other, on its
outcome.

The gate is also offered to the other turn-reward estimators as a batch transform,
``gated_batch``: ``estimate("mt_ppo", gated_batch(batch), values=v)`` runs MT-PPO (or MT-GRPO) on
gated turn rewards, and ``gated_batch(batch, into="reward")`` adds them to the env reward for
``gae``, which reads no turn rewards (the card's "G-RA over mt_grpo / mt_ppo / gae returns").
"""

from __future__ import annotations

import dataclasses

import numpy as np

from agentrl.credit.base import Advantages, register_estimator
from agentrl.credit.grpo import episode_advantage
from agentrl.credit.ops import check_choice, check_finite, layout
from agentrl.types import StepBatch

GATES = ("outcome", "success", "none")
TARGETS = ("turn_reward", "reward")
PAPER = "Sun et al. 2025, Stabilizing Long-term Multi-turn RL with Gated Rewards (G-RA), arXiv 2508.10548"


def gate_open(batch: StepBatch, *, gate: str = "outcome", threshold: float = 1.0) -> np.ndarray:
    """bool per row: its trajectory's gate is open, so its turn rewards count.

    Every row of a trajectory carries the trajectory's outcome and success, so the gate is the
    same on all of them.
    """
    check_choice("gate", gate, GATES)
    check_finite("threshold", threshold)
    if gate == "outcome":
        return batch.outcome >= threshold
    if gate == "success":
        return batch.success.astype(bool)
    return np.ones(len(batch), dtype=bool)


def gated_turn_rewards(batch: StepBatch, *, gate: str = "outcome", threshold: float = 1.0) -> np.ndarray:
    """r~_t = turn_reward_t * 1[gate open]: the turn rewards that count under G-RA."""
    return np.where(gate_open(batch, gate=gate, threshold=threshold), batch.column("turn_reward"), 0.0)


def gated_batch(
    batch: StepBatch, *, gate: str = "outcome", threshold: float = 1.0, into: str = "turn_reward"
) -> StepBatch:
    """A copy of ``batch`` whose turn rewards are gated, for estimators that take turn rewards.

    into="turn_reward": the ``turn_reward`` column holds r~ (for ``mt_grpo`` / ``mt_ppo``, which add
    the outcome themselves). into="reward": r~ is added to the env ``reward`` column (for ``gae``,
    whose return is the env reward); ``turn_reward`` and ``outcome`` are left as they are.
    """
    check_choice("into", into, TARGETS)
    gated = gated_turn_rewards(batch, gate=gate, threshold=threshold)
    if into == "turn_reward":
        return dataclasses.replace(batch, turn_reward=gated)
    return dataclasses.replace(batch, reward=batch.reward + gated)


@register_estimator("g_ra", fields=("turn_reward",), paper=PAPER)
def g_ra(
    batch: StepBatch,
    *,
    gate: str = "outcome",
    threshold: float = 1.0,
    mode: str = "mean_std",
    eps: float = 1e-6,
    invalid_penalty: float = 0.1,
) -> Advantages:
    """GRPO on the gated return R^high + sum of the turn rewards that pass the outcome gate.

    ``mode``: "mean_std" (default), "mean" or "median", as ``grpo``.
    """
    check_finite("eps", eps, 0.0)
    check_finite("invalid_penalty", invalid_penalty)
    lay = layout(batch)
    gated = gated_turn_rewards(batch, gate=gate, threshold=threshold)
    total = np.bincount(lay.slot, weights=gated, minlength=lay.n_traj)
    gated_return = dataclasses.replace(batch, outcome=batch.outcome + total[lay.slot])
    step = episode_advantage(
        gated_return, lay, mode=mode, eps=eps, invalid_penalty=invalid_penalty, episode_stats="trajectories"
    )
    return Advantages(step=step)
