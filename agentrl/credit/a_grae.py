"""A-GRAE: asymmetric group-relative advantages with a batch-accuracy curriculum (Yu et al. 2026).

GRPO's advantages are symmetric: within a group the positive and negative weights cancel, and over
groups they peak at medium difficulty. A-GRAE reweights each group's GRPO advantage by its success
rate and the batch's, and damps positive advantages while the batch is mostly failing:

    A^_i  = norm_G(R_i)                      p_g = mean of the group's rewards (in [0, 1])
    p_bar = mean of p_g over the batch's groups (each group once)
    A_hard = 0.5 A^ / (sqrt(p_g) + eps)      A_easy = 0.5 A^ / (1 - sqrt(p_g) + eps)
    A = (1 - p_bar) A_easy + p_bar A_hard;   if A > 0: A *= min(1, p_bar / alpha)

Early in training (p_bar small) easy groups (high p_g) weigh more and positives are suppressed
(exploration); as the batch gets solved the focus moves to hard groups. The curriculum lives in
p_bar, a statistic of the current batch, so no state across iterations is needed.

Sources. Authors' code, Yu7-code/A-GRAE at 53faba86: ``verl/trainer/ppo/core_algos.py::
compute_grpo_outcome_advantage`` with ``grpo_weight == 2.0`` (the formula above, unbiased
``torch.std``, eps 1e-6 everywhere, ``alpha = 1`` "for math, 0.5 for geo3k and med"; ``mode="mean"``
is its ``norm_adv_by_std_in_grpo=False`` branch), ``run_qwen2.5-math-7b-grpo-agrae.sh`` (n 8,
``grpo_weight=2.0``). Paper: arXiv 2602.05548 (p_bar is the batch mean reward).

Where we depart from that code, with the code's behaviour named:
- The stored ``ray_trainer.py`` passes ``grpo_weight = w + (step/T)(1 - w)`` (steps start at 1), so the
  ``== 2.0`` test that switches A-GRAE on never holds there and the stored scripts train plain GRPO.
  We follow the paper and the card: A-GRAE is always on (plain GRPO is the ``grpo`` estimator).
- Singletons (``singleton``): the code's fallback gives a group of one ``mean 0, std 1``, so
  ``A^ = R/(1 + eps)``, ``p_g = 0`` (also in p_bar) and ``A_hard = 0.5 A^/eps`` (``"code"``, huge).
  Default ``"zero"`` [ours]: such a row gets 0 and its group counts in p_bar with its own reward.
- Rewards must lie in [0, 1] (square roots of p_g). ``min_reward``/``max_reward`` map outcomes
  linearly onto [0, 1] (e.g. ``max_reward=10`` for ALFWorld's scale), and values outside the range
  are clipped [ours], so any reward gives finite credit.
- ``p_bar`` [ours]: a fixed value in [0, 1] instead of the batch's, e.g. to freeze the focus for an
  ablation or to feed a schedule over training progress. The trainer hands the same options to every
  iteration, so a per-iteration schedule would need trainer support that does not exist.

Invalid actions: ``c_inv`` is subtracted from the invalid row at the end, as in ``grpo``.
"""

from __future__ import annotations

import numpy as np

from agentrl.credit.base import Advantages, register_estimator
from agentrl.credit.ops import MODES, centred_group_stats, check_choice, check_finite, layout
from agentrl.types import StepBatch

SINGLETON = ("zero", "code")
PAPER = (
    "Yu et al. 2026, Unveiling Implicit Advantage Symmetry: Why GRPO Struggles with Exploration and "
    "Difficulty Adaptation (A-GRAE), arXiv 2602.05548"
)


def a_grae_traj_advantage(
    r: np.ndarray,
    g: np.ndarray,
    n_groups: int,
    *,
    mode: str,
    alpha: float,
    eps: float,
    singleton: str,
    p_bar: float | None,
) -> np.ndarray:
    """Per-trajectory A-GRAE advantage from rewards ``r`` in [0, 1] and group codes ``g``."""
    centred, std, count = centred_group_stats(r, g, n_groups, ddof=1)
    hat = centred / (std[g] + eps) if mode == "mean_std" else centred
    p = np.zeros(n_groups)
    p[g] = r - centred  # the group mean, exact for groups of equal rewards
    alone = count[g] == 1
    if singleton == "code":
        hat = np.where(alone, r / (1.0 + eps) if mode == "mean_std" else r, hat)
        p[count == 1] = 0.0
    else:
        hat = np.where(alone, 0.0, hat)
    p = np.clip(p, 0.0, 1.0)
    present = count > 0
    bar = float(np.mean(p[present])) if p_bar is None else float(p_bar)
    root = np.sqrt(p[g])
    hard = 0.5 * hat / (root + eps)
    easy = 0.5 * hat / (1.0 - root + eps)
    a = (1.0 - bar) * easy + bar * hard
    return np.where(a > 0, a * min(1.0, bar / alpha), a)


@register_estimator("a_grae", paper=PAPER)
def a_grae(
    batch: StepBatch,
    *,
    mode: str = "mean_std",
    alpha: float = 1.0,
    eps: float = 1e-6,
    min_reward: float = 0.0,
    max_reward: float = 1.0,
    p_bar: float | None = None,
    invalid_penalty: float = 0.1,
    singleton: str = "zero",
) -> Advantages:
    """GRPO advantages reweighted by group and batch success rate; positives damped while p_bar < alpha."""
    check_choice("mode", mode, MODES)
    check_choice("singleton", singleton, SINGLETON)
    check_finite("alpha", alpha, 0.0)
    if alpha <= 0:
        raise ValueError(f"option alpha={alpha!r} must be > 0")
    check_finite("eps", eps, 0.0)
    if eps <= 0:
        raise ValueError(f"option eps={eps!r} must be > 0 (groups with p_g = 0 or 1 divide by it)")
    check_finite("min_reward", min_reward)
    check_finite("max_reward", max_reward)
    if not max_reward > min_reward:
        raise ValueError(f"option max_reward={max_reward!r} must exceed min_reward={min_reward!r}")
    if p_bar is not None:
        check_finite("p_bar", p_bar, 0.0, 1.0)
    check_finite("invalid_penalty", invalid_penalty)
    lay = layout(batch)
    r = np.clip((lay.per_traj(batch.outcome) - min_reward) / (max_reward - min_reward), 0.0, 1.0)
    a = a_grae_traj_advantage(
        r,
        lay.per_traj(batch.group_idx),
        batch.num_groups,
        mode=mode,
        alpha=alpha,
        eps=eps,
        singleton=singleton,
        p_bar=p_bar,
    )
    return Advantages(step=a[lay.slot] - invalid_penalty * (~batch.valid))
