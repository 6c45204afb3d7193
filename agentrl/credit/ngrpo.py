"""NGRPO: GRPO whose group statistics include virtual maximum-reward samples (Nan et al. 2025).

A group whose trajectories all fail has zero spread, so GRPO gives it no signal. NGRPO adds ``m``
virtual samples with the maximum reward ``R_max`` to every group's statistics (never to the
trained rows), so such a group is pushed down while an all-successful one stays at 0:

    mu' = mean(R_G u {R_max} x m),  sigma' = std_unbiased(R_G u {R_max} x m)
    A_i = (R_i - mu') / (sigma' + eps)

Sources. Authors' code, nangongrui-ngr/NGRPO at e7a38041: ``verl/trainer/ppo/core_algos.py::
compute_ngrpo_outcome_advantage`` (the formula, unbiased ``torch.std``, eps 1e-6) and
``train_scripts/train_qwen2.5-math-7b_ngrpo.sh`` (``max_reward=1.0``, ``add_max_reward_num=1``, n 8).
The paper (arXiv 2509.18851) agrees: its worked case, one success in 8, gives 1.76 / -0.50 (GRPO
2.47 / -0.35), which needs the unbiased std over the 9 values.

Singletons (``singleton``): the code falls back to verl's generic ``mean 0, std 1`` branch for a
group of one, i.e. ``A = R/(1 + eps)`` (``"code"``). Default ``"virtual"`` [ours]: apply the formula
as for any group (one real plus ``m`` virtual samples), so a lone failure is still pushed down;
``"zero"`` gives 0 as this library's GRPO does.

Not estimator-side (trainer settings, see docs): the authors' loss uses asymmetric clipping,
``clip_low`` 0.16 / ``clip_high`` 0.24 (``algorithm.clip_low`` / ``clip_high`` here), KL 0, lr 1e-6, and
drops all-correct groups before the update (``filter_groups``, strategy ``all_correct``); this
library's trainer has no group filter, so those groups train with advantage 0 and only dilute the
token mean. ``R_max`` is the environment's best outcome: 1 for success/failure envs; rewards above it
get positive credit even in a group of equals (the formula assumes ``R <= R_max``).

Invalid actions: ``c_inv`` is subtracted from the invalid row after normalising, as in
``grpo``; it is not part of the group statistics.
"""

from __future__ import annotations

import numpy as np

from agentrl.credit.base import Advantages, register_estimator
from agentrl.credit.ops import centred_group_stats, check_choice, check_finite, layout
from agentrl.types import StepBatch

SINGLETON = ("virtual", "zero", "code")
PAPER = "Nan et al. 2025, NGRPO: Negative-enhanced Group Relative Policy Optimization, arXiv 2509.18851"


def ngrpo_traj_advantage(
    r: np.ndarray,
    g: np.ndarray,
    n_groups: int,
    *,
    max_reward: float,
    num_virtual: int,
    eps: float,
    singleton: str,
) -> np.ndarray:
    """Per-trajectory NGRPO advantage from outcomes ``r`` and group codes ``g`` (one entry per trajectory)."""
    count = np.bincount(g, minlength=n_groups)
    virtual_g = np.repeat(np.flatnonzero(count > 0), num_virtual)
    x = np.concatenate([r, np.full(virtual_g.shape[0], float(max_reward))])
    centred, std, _ = centred_group_stats(x, np.concatenate([g, virtual_g]), n_groups, ddof=1)
    a = centred[: r.shape[0]] / (std[g] + eps)
    alone = count[g] == 1
    if singleton == "zero":
        a[alone] = 0.0
    elif singleton == "code":
        a[alone] = r[alone] / (1.0 + eps)
    return a


@register_estimator("ngrpo", paper=PAPER)
def ngrpo(
    batch: StepBatch,
    *,
    max_reward: float = 1.0,
    num_virtual: int = 1,
    eps: float = 1e-6,
    invalid_penalty: float = 0.1,
    singleton: str = "virtual",
) -> Advantages:
    """GRPO with ``num_virtual`` virtual samples of reward ``max_reward`` in each group's mean and std."""
    check_finite("max_reward", max_reward)
    if isinstance(num_virtual, bool) or not isinstance(num_virtual, (int, np.integer)) or num_virtual < 0:
        raise ValueError(f"option num_virtual={num_virtual!r} must be an integer >= 0")
    check_finite("eps", eps, 0.0)
    if eps <= 0:
        raise ValueError(f"option eps={eps!r} must be > 0 (an all-R_max group has std 0)")
    check_finite("invalid_penalty", invalid_penalty)
    check_choice("singleton", singleton, SINGLETON)
    lay = layout(batch)
    a = ngrpo_traj_advantage(
        lay.per_traj(batch.outcome),
        lay.per_traj(batch.group_idx),
        batch.num_groups,
        max_reward=max_reward,
        num_virtual=int(num_virtual),
        eps=eps,
        singleton=singleton,
    )
    return Advantages(step=a[lay.slot] - invalid_penalty * (~batch.valid))
