"""Per-token log-probs (and entropies) computed in chunks, never materialising full-vocabulary logits.

A forward pass of the transformer body gives hidden states; only the positions that predict a
response token go through the output layer, ``chunk_size`` tokens at a time. When gradients are
on, each chunk is checkpointed: its float32 logits are recomputed in the backward pass instead of
being kept, so peak memory holds one chunk of logits, not B x T x V.
Measured on CPU (vocab 151,936, 2,048 tokens, forward + backward): peak extra memory ~5 x chunk x
V x 4 bytes, i.e. 0.8 GB at chunk 256, 1.6 GB at 512, 3.0 GB at 1024, against 3.6 GB for the
full-logits computation at this length (it grows with T; chunks do not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from agentrl.policies.precision import autocast_for

__all__ = [
    "TOKEN_STATS",
    "PackedBatch",
    "TokenLogprobs",
    "pack_samples",
    "position_ids_from_mask",
    "split_causal_lm",
    "token_logprobs",
    "token_stats_from_logits",
]

# Per-token statistics of the full-vocabulary logits that estimators may declare (the names of
# ``agentrl.credit.TOKEN_STATS``); computed only when asked, in the same chunks as the log-probs.
TOKEN_STATS = ("self_certainty", "chosen_logit", "entropy")


@dataclass
class TokenLogprobs:
    """``logprobs[b, t] = log p(input_ids[b, t] | input_ids[b, :t])`` where ``response_mask``, else 0.

    ``entropy[b, t]``: entropy of the distribution that predicted position t (same mask), when asked.
    ``hidden``: the body's last hidden states, when asked (value heads share the forward pass).
    ``stats``: the asked ``TOKEN_STATS`` by name (same mask; no gradient), see ``token_stats_from_logits``.
    """

    logprobs: torch.Tensor  # float32[B, T]
    entropy: torch.Tensor | None = None  # float32[B, T]
    hidden: torch.Tensor | None = None  # [B, T, H], model dtype
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # float32[B, T] each


@dataclass
class PackedBatch:
    """prompt + response samples as one left-padded batch; ``response_mask`` marks the response tokens."""

    input_ids: torch.Tensor  # int64[B, T]
    attention_mask: torch.Tensor  # int64[B, T]
    response_mask: torch.Tensor  # bool[B, T]

    def responses(self, values_BT: torch.Tensor) -> list[torch.Tensor]:
        """Per-sample response slices of a [B, T] tensor (e.g. token log-probs), in order."""
        return [values_BT[b][self.response_mask[b]] for b in range(values_BT.shape[0])]


def pack_samples(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_token_id: int,
    device: torch.device | str | None = None,
) -> PackedBatch:
    """Left-pad (prompt + response) samples into tensors the scorer takes."""
    if len(prompt_ids) != len(response_ids) or not prompt_ids:
        raise ValueError(
            f"need the same non-zero number of prompts and responses, got {len(prompt_ids)} and {len(response_ids)}"
        )
    lengths = [(len(p), len(r)) for p, r in zip(prompt_ids, response_ids)]
    for i, (n_p, _n_r) in enumerate(lengths):
        if n_p == 0:
            raise ValueError(
                f"sample {i} has an empty prompt: its first response token would have no context"
            )
    width = max(n_p + n_r for n_p, n_r in lengths)
    ids = torch.full((len(lengths), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    resp = torch.zeros((len(lengths), width), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        start = width - len(p) - len(r)
        ids[i, start:] = torch.as_tensor([*p, *r], dtype=torch.long)
        mask[i, start:] = 1
        resp[i, width - len(r) :] = True
    return PackedBatch(ids.to(device), mask.to(device), resp.to(device))


def split_causal_lm(model: Any) -> tuple[torch.nn.Module, torch.nn.Module, Any]:
    """(transformer body, output layer, config) of a causal LM, unwrapping a peft model.

    LoRA layers are injected into the body in place, so the adapter still applies.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = base.get_decoder() if hasattr(base, "get_decoder") else None
    head = base.get_output_embeddings()
    if body is None or head is None:
        raise TypeError(f"{type(base).__name__} is not a causal LM with a decoder body and an output layer")
    return body, head, base.config


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_stats_from_logits(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Per-token statistics of ``logits`` (float[M, V], the model's output after any softcap, before
    temperature) at the positions predicting ``targets`` (int[M]), with z = logits / temperature:

    - ``self_certainty``: logsumexp(z) - mean(z) = KL(U || p) + log V, how far p is from uniform
      (Kang et al. 2025's self-certainty; UCAS's ``self_certainty_from_logits``);
    - ``chosen_logit``: the logit of the target token before temperature (UCAS's ``actual_token_logits``);
    - ``entropy``: H(p) of the distribution p = softmax(z).
    """
    unknown = sorted(set(names) - set(TOKEN_STATS))
    if unknown:
        raise ValueError(f"unknown token statistics {unknown}; choose from {', '.join(TOKEN_STATS)}")
    with torch.no_grad():
        raw = logits.detach().float()
        z = raw / temperature if temperature != 1.0 else raw
        lse = torch.logsumexp(z, dim=-1) if {"self_certainty", "entropy"} & set(names) else None
        out = {}
        for name in names:
            if name == "chosen_logit":
                out[name] = raw.gather(-1, targets[:, None]).squeeze(-1)
            elif name == "self_certainty":
                assert lse is not None
                out[name] = lse - z.mean(-1)
            else:
                assert lse is not None
                out[name] = lse - (torch.softmax(z, dim=-1) * z).sum(-1)
    return out


def _chunk_stats(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    softcap: float | None,
    with_entropy: bool,
    stats: dict[str, list[torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs (and entropies) of one chunk; ``stats``: lists to append its token statistics to."""
    logits = head(hidden).float()  # outside autocast: float32 from here (log-softmax, entropy)
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    if stats:
        for k, v in token_stats_from_logits(logits, targets, temperature, tuple(stats)).items():
            stats[k].append(v)
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - lse
    if not with_entropy:
        return logp, torch.zeros_like(logp)
    probs = torch.softmax(logits, dim=-1)
    return logp, lse - (probs * logits).sum(-1)


def token_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    chunk_size: int = 512,
    temperature: float = 1.0,
    with_entropy: bool = False,
    return_hidden: bool = False,
    token_stats: Sequence[str] = (),
    packed: bool = False,
) -> TokenLogprobs:
    """Log-probs of the response tokens of a left- or right-padded batch, differentiable.

    ``response_mask[b, t]`` says which tokens to score; position 0 has no context and cannot be
    scored. Equal to ``log_softmax(model(...).logits / temperature)`` gathered at the next
    tokens, computed ``chunk_size`` scored tokens at a time. ``token_stats``: names of
    ``TOKEN_STATS`` also computed from each chunk's logits (no gradient; ``TokenLogprobs.stats``).

    ``packed``: the body runs on the real tokens only, all rows concatenated into one sequence whose
    position ids restart at each row (transformers then masks attention to each row's own tokens:
    varlen kernels with ``attn_implementation="flash_attention_2"``, a block-diagonal mask with
    SDPA or eager). No projection or MLP work is spent on padding. With SDPA the attention itself
    is a dense N x N masked product over all N tokens, so packing pays only with flash attention.
    """
    if (
        input_ids.dim() != 2
        or attention_mask.shape != input_ids.shape
        or response_mask.shape != input_ids.shape
    ):
        raise ValueError(
            f"input_ids, attention_mask and response_mask must share one [B, T] shape, got "
            f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(response_mask.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to score tokens, got {temperature}")
    response_mask = response_mask.bool()
    if response_mask[:, 0].any():
        raise ValueError("response_mask marks position 0, which no earlier token predicts")
    if (response_mask & ~attention_mask.bool()).any():
        raise ValueError("response_mask marks padding (positions where attention_mask is 0)")
    body, head, config = split_causal_lm(model)
    positions = position_ids_from_mask(attention_mask)
    with autocast_for(model):  # a bf16 base: LoRA matmuls in bf16 too; nothing for a float32 model
        if packed:
            keep = attention_mask.bool()
            flat = body(
                input_ids=input_ids[keep][None],
                attention_mask=None,  # the restarting position ids delimit the rows
                position_ids=positions[keep][None],
                use_cache=False,
            ).last_hidden_state[0]
            hidden = flat.new_zeros(*input_ids.shape, flat.shape[-1])
            hidden[keep] = flat
        else:
            hidden = body(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions,
                use_cache=False,
            ).last_hidden_state
    scored = response_mask[:, 1:]
    hidden_M = hidden[:, :-1][scored]
    targets_M = input_ids[:, 1:][scored]
    softcap = getattr(config, "final_logit_softcapping", None)
    logps, ents = [], []
    stats: dict[str, list[torch.Tensor]] = {k: [] for k in token_stats}
    for s in range(0, hidden_M.shape[0], chunk_size):
        args = (
            head,
            hidden_M[s : s + chunk_size],
            targets_M[s : s + chunk_size],
            temperature,
            softcap,
            with_entropy,
        )
        if torch.is_grad_enabled() and hidden_M.requires_grad:
            lp, ent = checkpoint(_chunk_stats, *args, use_reentrant=False)
            if stats:  # statistics carry no gradient: one more pass of the output layer, outside the graph
                with torch.no_grad():
                    _chunk_stats(*args, stats=stats)
        else:
            lp, ent = _chunk_stats(*args, stats=stats)
        logps.append(lp)
        ents.append(ent)
    B, T = input_ids.shape
    empty = hidden.new_zeros(0, dtype=torch.float32)
    out = hidden.new_zeros(B, T, dtype=torch.float32)
    out[:, 1:][scored] = torch.cat(logps) if logps else empty
    entropy = None
    if with_entropy:
        entropy = hidden.new_zeros(B, T, dtype=torch.float32)
        entropy[:, 1:][scored] = torch.cat(ents) if ents else empty
    placed = {}
    for k, parts in stats.items():
        placed[k] = hidden.new_zeros(B, T, dtype=torch.float32)
        placed[k][:, 1:][scored] = torch.cat(parts) if parts else empty
    return TokenLogprobs(
        logprobs=out, entropy=entropy, hidden=hidden if return_hidden else None, stats=placed
    )
