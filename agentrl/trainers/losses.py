"""Policy losses (PPO-clip token-mean, PPO-clip seq-mean-token-mean, GSPO, PPO-clip per advantage
channel), the k3 KL and their registry.

A loss takes one micro-batch of ``[B, T]`` tensors and returns its contribution to the
minibatch loss, already divided by the minibatch's token or sequence count, so micro-batches
add up (gradient accumulation gives the same gradient as one big batch). A new loss is one
function registered in ``LOSSES``; the training loop looks it up by name. A loss registered with
``channels=True`` (in ``CHANNEL_LOSSES``) reads ``LossInput.channels``, the advantage channels an
estimator declares (``EstimatorInfo.channels``), which the trainer then spreads over tokens. A loss also declares its clip band (``LOSS_CLIP``): the
``algorithm.clip_low`` / ``clip_high`` a config gets when it leaves them out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from agentrl.registry import Registry

__all__ = [
    "CHANNEL_LOSSES",
    "LOSSES",
    "LOSS_CLIP",
    "LossInput",
    "LossOutput",
    "kl_k3",
    "masked_sum",
    "register_loss",
    "sequence_means",
]


@dataclass
class LossInput:
    """One micro-batch. ``mask`` marks trained response tokens; ``n_tokens`` / ``n_seqs`` are the
    counts of the whole minibatch (the normalisers), not of this micro-batch."""

    logp: torch.Tensor  # float32[B, T], current policy, differentiable
    old_logp: torch.Tensor  # float32[B, T], policy that sampled (recomputed before the update)
    adv: torch.Tensor  # float32[B, T], advantage per token
    mask: torch.Tensor  # float32[B, T], 1 where the token is trained
    n_tokens: float
    n_seqs: float
    clip_low: float = 0.2
    clip_high: float = 0.2
    # (weight, float32[B, T] advantage per token) per advantage channel; read by channel losses only
    channels: Sequence[tuple[float, torch.Tensor]] = ()


@dataclass
class LossOutput:
    """``loss``: differentiable contribution; ``clip_frac`` and ``ratio`` are contributions to the
    minibatch means (token-level for PPO, sequence-level for GSPO)."""

    loss: torch.Tensor
    clip_frac: torch.Tensor
    ratio: torch.Tensor


LossFn = Callable[[LossInput], LossOutput]
LOSSES: Registry[LossFn] = Registry("loss")
CHANNEL_LOSSES: Registry[bool] = Registry("channel loss")  # names of the losses that read channels
LOSS_CLIP: Registry[tuple[float, float]] = Registry("loss clip band")  # (clip_low, clip_high) per loss
PPO_CLIP = (0.2, 0.2)


def register_loss(
    name: str, *, channels: bool = False, clip: tuple[float, float] = PPO_CLIP
) -> Callable[[LossFn], LossFn]:
    """Register a loss; ``channels``: it reads ``LossInput.channels`` (the trainer must fill them);
    ``clip``: its default (clip_low, clip_high), where the ratio it clips lives on another scale than
    a token's (GSPO's length-normalised sequence ratio)."""

    def wrap(fn: LossFn) -> LossFn:
        LOSSES.register(name, fn)
        LOSS_CLIP.register(name, clip)
        if channels:
            CHANNEL_LOSSES.register(name, True)
        return fn

    return wrap


def masked_sum(x_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    return (x_BT * mask_BT).sum()


def sequence_means(x_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """Per-row mean over the masked tokens (0 for a row with none)."""
    return (x_BT * mask_BT).sum(-1) / mask_BT.sum(-1).clamp(min=1.0)


def _clipped_objective(
    ratio: torch.Tensor, adv: torch.Tensor, low: float, high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(-min(r A, clip(r, 1-low, 1+high) A), 1 where the clipped term was chosen)."""
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - low, 1.0 + high) * adv
    return -torch.minimum(unclipped, clipped), (clipped < unclipped).float()


@register_loss("ppo_token_mean")
def ppo_token_mean(x: LossInput) -> LossOutput:
    """PPO-clip per token, averaged over every trained token of the minibatch (long responses weigh more)."""
    ratio = torch.exp(x.logp - x.old_logp)
    pg, clipped = _clipped_objective(ratio, x.adv, x.clip_low, x.clip_high)
    n = max(x.n_tokens, 1.0)
    return LossOutput(
        masked_sum(pg, x.mask) / n,
        masked_sum(clipped, x.mask).detach() / n,
        masked_sum(ratio, x.mask).detach() / n,
    )


@register_loss("ppo_seq_mean_token_mean")
def ppo_seq_mean_token_mean(x: LossInput) -> LossOutput:
    """PPO-clip per token, averaged within each response, then over responses (each response counts once)."""
    ratio = torch.exp(x.logp - x.old_logp)
    pg, clipped = _clipped_objective(ratio, x.adv, x.clip_low, x.clip_high)
    n = max(x.n_seqs, 1.0)
    return LossOutput(
        sequence_means(pg, x.mask).sum() / n,
        sequence_means(clipped, x.mask).sum().detach() / n,
        sequence_means(ratio, x.mask).sum().detach() / n,
    )


@register_loss("gspo", clip=(3e-4, 4e-4))
def gspo(x: LossInput) -> LossOutput:
    """GSPO: one ratio per response, ``s = exp(mean_tokens(logp - old_logp))``, clipped like PPO,
    with the response's advantage = the mean of its token advantages; averaged over responses.

    Default clip band 3e-4 / 4e-4 (Zheng et al. 2025, arXiv 2507.18071, section 5.1; also verl's and
    SeeUPO's GSPO settings): a length-normalised ratio moves far less than a token's, so PPO's 0.2
    almost never binds (SeeUPO on the maze: clip fraction ~0 at 0.2, 5-15% at 3e-4)."""
    s = torch.exp(sequence_means(x.logp - x.old_logp, x.mask))
    adv = sequence_means(x.adv, x.mask)
    has_tokens = (x.mask.sum(-1) > 0).float()
    pg, clipped = _clipped_objective(s, adv, x.clip_low, x.clip_high)
    n = max(x.n_seqs, 1.0)
    return LossOutput(
        (pg * has_tokens).sum() / n,
        (clipped * has_tokens).sum().detach() / n,
        (s * has_tokens).sum().detach() / n,
    )


@register_loss("ppo_channels", channels=True)
def ppo_channels(x: LossInput) -> LossOutput:
    """PPO-clip per advantage channel, summed with the channels' weights, averaged over every trained
    token of the minibatch: ``sum_c w_c * -min(r A_c, clip(r) A_c)`` (HDPO's ``L_clip(A_acc) +
    w L_clip(A_eff)``). Each channel is clipped on its own, so where the channels disagree in sign
    and r left the clip range the one pulling r back keeps its gradient; inside the range it equals
    ``ppo_token_mean`` on the summed advantage. ``clip_frac``: tokens where any channel was clipped.
    ``x.adv`` is not read."""
    if not x.channels:
        raise ValueError("loss 'ppo_channels' needs advantage channels (an estimator that declares channels)")
    ratio = torch.exp(x.logp - x.old_logp)
    pg = torch.zeros_like(ratio)
    clipped = torch.zeros_like(ratio)
    for weight, adv in x.channels:
        term, was_clipped = _clipped_objective(ratio, adv, x.clip_low, x.clip_high)
        pg = pg + weight * term
        if weight:
            clipped = torch.maximum(clipped, was_clipped)
    n = max(x.n_tokens, 1.0)
    return LossOutput(
        masked_sum(pg, x.mask) / n,
        masked_sum(clipped, x.mask).detach() / n,
        masked_sum(ratio, x.mask).detach() / n,
    )


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Low-variance KL estimate per token (Schulman's k3): ``exp(ref - logp) - (ref - logp) - 1`` >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0
