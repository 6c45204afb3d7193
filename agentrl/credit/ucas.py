"""UCAS, Uncertainty-aware Advantage Shaping (Kuaishou, arXiv 2510.10649): GRPO's advantage scaled by
how certain the policy was of the whole response, then shifted token by token by how confident it was
of each token.

Formula, per group of rollouts i (trajectories of one task), response tokens t:

    SC_t   = logsumexp(z_t) - mean(z_t)            self-certainty, z_t = logits / temperature when scoring
    c_i    = mean_t SC_t                           over all of rollout i's response tokens
    c^_i   = (c_i - mean_G c) / (std_G c + eps)    group z-score (unbiased std, as torch.std)
    A_i    = (R_i - mean_G R) / (std_G R + eps)    GRPO
    m_i    = exp(-beta_pos c^_i) if R_i > mean_G R else exp(beta_neg c^_i)
    l~_t   = min-max normalised chosen-token logit (before temperature), over rollout i's tokens
    A_i,t  = A_i m_i - logit_coef l~_t

So a correct rollout the policy was already sure of gains less, a wrong one it was sure of loses more,
and within a rollout the tokens it was most confident of get slightly less credit (an entropy guard).

Source: the authors' code, github.com/xvolcano02/UCAS at commit f8db352:
``verl/trainer/ppo/core_algos.py::compute_ucas_advantage`` (the group statistics, the modifier with 0.25
on both sides, ``masked_minmax_normalize_2d`` per response with a range below 1e-8 taken as 1, the
coefficient 0.01, no clamp, the mean over the response's tokens), ``verl/workers/actor/dp_actor.py``
(both statistics come from the old-log-prob pass: the chosen token's logit gathered before the logits
are divided by the temperature, the self-certainty after) and ``verl/utils/torch_functional.py``
(``self_certainty_from_logits`` = logsumexp - mean). The learner computes them in the same pass
(``EstimatorInfo.token_stats``; ``policies.logprobs.token_stats_from_logits``).

Read with care, each named:
- the stored snapshot does not run as is: ``ray_trainer.compute_advantage`` passes
  ``token_level_certaintys=``/``token_level_logits=`` to a function whose parameters are named
  ``token_level_logp``/``token_logits``, and whose body forms mean_t(log(1/V) - x_t) with V = 151936
  hard-coded. We take c_i = mean_t SC_t, which is that expression for x = mean_v log p_v (KL(U || p));
  the constant log V cancels in the z-score. Higher c means more certain, as the paper reads it.
- the paper's text (as summarised in agentrl's method cards) gives beta_neg = 0.35, a 0.05 logit
  coefficient, batch-wide min-max and a clamp keeping A_i,t >= 0 when A_i m_i > 0; the code has
  0.25, 0.01, per-response and no clamp. Defaults follow the code; ``beta_neg=0.35, logit_coef=0.05,
  logit_norm="batch", clamp=True`` give the paper's.
- multi-turn [ours]: a rollout is a trajectory; c_i and the per-response min-max run over the response
  tokens of all its turns (``logit_norm="row"``: per turn instead).
- A_i is agentrl's GRPO (singleton group: 0, where the source gives R/(1 + eps) and then fails on
  the missing certainty statistics: we give c^ = 0 there). A trajectory without response tokens has
  no c_i: c^_i = 0 and it is left out of its group's certainty statistics.
- ``invalid_penalty`` (agentrl's; 0 = the source) is subtracted from every token of an invalid row,
  after the shaping. ``Advantages.step`` holds A_i m_i minus that penalty (the per-row summary).
"""

from __future__ import annotations

import numpy as np

from agentrl.credit.base import Advantages, MissingInputError, register_estimator
from agentrl.credit.ops import centred_group_stats, check_choice, check_finite, layout
from agentrl.types import StepBatch

PAPER = "Kuaishou 2025 (UCAS), arXiv 2510.10649; code xvolcano02/UCAS"
RANGE_EPS = 1e-8  # the source's masked_minmax_normalize_2d: a smaller range counts as 1


def segment_minmax(x: np.ndarray, seg: np.ndarray, n_seg: int) -> np.ndarray:
    """(x - min) / (max - min) within each segment (``seg``: segment id per entry, sorted); a range
    below 1e-8 is taken as 1, as the source does."""
    if x.size == 0:
        return x.copy()
    starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
    lo = np.minimum.reduceat(x, starts)
    hi = np.maximum.reduceat(x, starts)
    rng = hi - lo
    rng = np.where(rng < RANGE_EPS, 1.0, rng)
    which = np.cumsum(np.r_[True, seg[1:] != seg[:-1]]) - 1
    return (x - lo[which]) / rng[which]


@register_estimator(
    "ucas",
    fields=("response_ids",),
    inputs=("token_stats",),
    per_token=True,
    token_stats=("self_certainty", "chosen_logit"),
    paper=PAPER,
    summary="GRPO scaled by the rollout's self-certainty, minus a per-token confidence term",
)
def ucas(
    batch: StepBatch,
    *,
    token_stats: dict[str, list[np.ndarray]] | None = None,
    beta_pos: float = 0.25,
    beta_neg: float = 0.25,
    logit_coef: float = 0.01,
    logit_norm: str = "trajectory",
    clamp: bool = False,
    eps: float = 1e-6,
    invalid_penalty: float = 0.1,
) -> Advantages:
    """Per-token A_i m_i - logit_coef l~_t (module doc); ``token_stats`` from the learner's scoring pass."""
    if token_stats is None:
        raise MissingInputError(
            "estimator 'ucas' needs input(s) ['token_stats']; the learner computes them when scoring"
        )
    for name, value in (("beta_pos", beta_pos), ("beta_neg", beta_neg), ("logit_coef", logit_coef)):
        check_finite(name, value, 0.0)
    check_finite("eps", eps, 0.0)
    check_finite("invalid_penalty", invalid_penalty)
    check_choice("logit_norm", logit_norm, ("trajectory", "row", "batch"))
    if not isinstance(clamp, bool):
        raise ValueError(f"option clamp={clamp!r} must be true or false")

    lay = layout(batch)
    n, n_traj = len(batch), lay.n_traj
    lengths = np.fromiter((len(t) for t in batch.column("response_ids")), np.int64, n)
    total = int(lengths.sum())
    row = np.repeat(np.arange(n), lengths)
    slot = lay.slot[row]
    sc = np.concatenate(token_stats["self_certainty"]) if total else np.zeros(0)
    logit = np.concatenate(token_stats["chosen_logit"]) if total else np.zeros(0)

    traj_group = batch.group_idx[lay.first]
    centred_r, std_r, _ = centred_group_stats(lay.per_traj(batch.outcome), traj_group, batch.num_groups)
    a = centred_r / (std_r[traj_group] + eps)  # GRPO; a singleton gives 0

    n_tok = np.bincount(slot, minlength=n_traj)
    has = n_tok > 0
    c = np.divide(np.bincount(slot, weights=sc, minlength=n_traj), n_tok, out=np.zeros(n_traj), where=has)
    c_hat = np.zeros(n_traj)
    if has.any():
        dense = np.unique(traj_group[has], return_inverse=True)[1].reshape(-1)
        centred_c, std_c, _ = centred_group_stats(c[has], dense, int(dense.max()) + 1)
        c_hat[has] = centred_c / (std_c[dense] + eps)
    m = np.where(centred_r > 0, np.exp(-beta_pos * c_hat), np.exp(beta_neg * c_hat))
    base = a * m

    seg = {"trajectory": slot, "row": row, "batch": np.zeros(total, np.int64)}[logit_norm]
    flat = base[slot] - logit_coef * segment_minmax(logit, seg, n)
    if clamp:
        flat = np.where(base[slot] > 0, np.maximum(flat, 0.0), flat)
    penalty = invalid_penalty * (~batch.valid)
    flat = flat - penalty[row]
    ends = np.cumsum(lengths).tolist()
    token = [flat[e - k : e] for e, k in zip(ends, lengths.tolist())]
    return Advantages(step=base[lay.slot] - penalty, token=token)
