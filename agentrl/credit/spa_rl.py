"""SPA-RL, Stepwise Progress Attribution (Wang et al., arXiv 2505.20732): a progress estimator splits
the episode outcome into per-step contributions; each step's contribution plus a grounding bonus is
that step's reward for step-level PPO.

Formula, per trajectory i with turns t = 0..T-1 and outcome R_i:

    c_t  = w . h_t                     progress head, read at the last token of turn t's response
    fit:   (sum_t c_t - R_i)^2         one regression per trajectory (the sum, not each c_t, has a target)
    g_t  = grounding * [step t valid]  for t < T-1;  g_{T-1} = grounding   (``ground_last="always"``)
    r_t  = c_t + g_t
    A_t  = GAE over the turns of r_t with the critic V (``gae``'s recursion), returns A_t + V_t

Source: the authors' code, github.com/WangHanLinHenry/SPA-RL-Agent at commit 323964f:
``prm/train_our_progress_model.py`` (a linear layer read at the last token of each assistant turn, its
values summed over the trajectory, ``MSELoss`` against ``agent_final_reward``), ``prm/rl_data_org.py``
(``grounding_values``: 0.5 for turn j when the env reply that follows it does not contain "Nothing
happens", 0 when it does, and 0.5 for the last turn whatever happened; reward = turn value + grounding;
trajectories of 35 turns or more dropped) and ``ppo/step_ppo.py`` (TRL-style PPO with a value head on
the per-step rewards; its ``StepPPOTrainer`` and PPO config are not in the store).

The agentrl variant (named, [ours]):
- progress head: the published progress model is a separate LLM (the SFT'd agent + a linear layer on
  its vocabulary logits, trained offline on exploration rollouts). Here it is one more linear head on
  the policy's detached last hidden state at the turn's last response token (``ValueHeadSpec`` with
  ``reads_after="response"`` and ``fit="trajectory_sum"``), trained online next to the critic, on
  each iteration's trajectories; its predictions before the update are this iteration's c_t. The
  loss is agentrl's 0.5 * value_coef * mean squared error (the source: MSE, its own optimiser).
- ``progress="head"`` (default, the paper's c_t) or ``"loo_outcome"``: the stored ``rl_data_org.py``
  overwrites every turn's value with R_i minus the mean outcome of the other rollouts of the same task
  (R_i when it is alone) before adding grounding; that option reproduces it (the head still trains).
- "valid" is the step's ``valid`` flag (action parsed and accepted), ALFWorld's "Nothing happens" test
  generalised; ``ground_last="valid"`` grounds the last turn like the others instead.
- step-level PPO [inferred; the trainer is not in the store]: one value per turn read at the last
  prompt token, GAE over turns with agentrl's defaults gamma = lam = 1 (TRL's token-level GAE, lam 0.95
  over tokens, has no turn-level equivalent); ``whiten=True`` follows TRL's ``compute_advantages``,
  which always whitens the advantages. The env's own rewards are not used: the outcome reaches the
  policy through the progress head only, as in the source. KL stays in the loss (``algorithm.kl_coef``),
  not in the reward as TRL puts it. ``invalid_penalty`` (default 0, the source) is subtracted after the
  recursion, as in ``gae``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agentrl.credit.base import RESPONSE_END, Advantages, MissingInputError, ValueHeadSpec, register_estimator
from agentrl.credit.gae import gae_advantages, gae_result, last_rows
from agentrl.credit.ops import Layout, check_choice, check_finite, layout
from agentrl.types import StepBatch

PAPER = "Wang et al. 2025 (SPA-RL), arXiv 2505.20732; code WangHanLinHenry/SPA-RL-Agent"
HEADS = ("value", "progress")


def leave_one_out_outcome(batch: StepBatch, lay: Layout) -> np.ndarray:
    """R_i minus the mean outcome of the other trajectories of its group, per row (R_i when alone)."""
    r, g = lay.per_traj(batch.outcome), lay.per_traj(batch.group_idx)
    total = np.bincount(g, weights=r, minlength=batch.num_groups)
    count = np.bincount(g, minlength=batch.num_groups).astype(np.float64)
    others = count[batch.group_idx] - 1
    mean_others = np.divide(
        total[batch.group_idx] - batch.outcome, others, out=np.zeros(len(batch)), where=others > 0
    )
    return batch.outcome - mean_others


def grounding_bonus(batch: StepBatch, lay: Layout, grounding: float, ground_last: str) -> np.ndarray:
    """g_t per row: ``grounding`` on valid steps, 0 on invalid ones; the last turn per ``ground_last``."""
    g = grounding * batch.valid.astype(np.float64)
    if ground_last == "always":
        g = np.where(last_rows(lay), grounding, g)
    return g


def _heads(values: Any) -> tuple[np.ndarray, np.ndarray]:
    if values is None:
        raise MissingInputError(
            "estimator 'spa_rl' needs input(s) ['values']; pass values={'value': V, 'progress': c} per row"
        )
    if not isinstance(values, dict) or set(HEADS) - set(values):
        got = sorted(values) if isinstance(values, dict) else type(values).__name__
        raise ValueError(f"estimator 'spa_rl' takes values as a dict with heads {list(HEADS)}; got {got}")
    return values["value"], values["progress"]


@register_estimator(
    "spa_rl",
    inputs=("values",),
    row_inputs=("values",),
    value_heads={
        "value": ValueHeadSpec(target="returns"),
        "progress": ValueHeadSpec(target="progress_target", reads_after=RESPONSE_END, fit="trajectory_sum"),
    },
    paper=PAPER,
    summary="Step-level PPO on learnt per-turn progress (summing to the outcome) plus a grounding bonus",
)
def spa_rl(
    batch: StepBatch,
    *,
    values: dict[str, np.ndarray] | None = None,
    grounding: float = 0.5,
    ground_last: str = "always",
    progress: str = "head",
    gamma: float = 1.0,
    lam: float = 1.0,
    bootstrap_truncated: bool = False,
    whiten: bool = True,
    invalid_penalty: float = 0.0,
) -> Advantages:
    """GAE on r_t = c_t + g_t: the progress head's per-turn contribution plus the grounding bonus.

    ``values``: {"value": V per row, "progress": c per row}. Extras: ``returns`` (A + V, the critic's
    target), ``progress_target`` (the outcome, which each trajectory's sum of c_t is fitted to) and
    ``step_reward`` (r_t).
    """
    value, contribution = _heads(values)
    check_finite("grounding", grounding)
    check_finite("gamma", gamma, 0.0, 1.0)
    check_finite("lam", lam, 0.0, 1.0)
    check_finite("invalid_penalty", invalid_penalty)
    check_choice("ground_last", ground_last, ("always", "valid"))
    check_choice("progress", progress, ("head", "loo_outcome"))
    lay = layout(batch)
    c = contribution if progress == "head" else leave_one_out_outcome(batch, lay)
    reward = c + grounding_bonus(batch, lay, grounding, ground_last)
    adv = gae_advantages(
        batch, lay, reward, value, gamma=gamma, lam=lam, bootstrap_truncated=bootstrap_truncated
    )
    out = gae_result(adv, value, batch, invalid_penalty=invalid_penalty, whiten=whiten)
    out.extras["progress_target"] = batch.outcome.astype(np.float64)
    out.extras["step_reward"] = reward
    return out
