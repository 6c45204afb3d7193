"""Choosing among admissible actions: score each candidate response under the model, sample one.

Where an env lists its admissible actions, a policy need not write an action token by token: it
can score every admissible action's response (rendered in the run's response format) as a
continuation of the prompt and sample one in proportion to the probability that sampling token by
token at temperature T would write it: ``pi(c | s) = q_T(c | s) / sum_c' q_T(c' | s)`` with
``q_T(c | s) = prod_t softmax(logits_t / T)[c_t]`` (at T = 1 the model's own sequence
probability; T = 0 takes the most probable candidate). A small model then never writes an
invalid action or misspells an object it read, and the choice costs one forward pass over the
prompt plus one over the candidates (they share the prompt's KV cache) instead of one pass per
generated token. This is the action-scoring policy of the LLM-agent literature (SayCan, Ahn et al.
2022; GLAM, Carta et al. 2023, which trains it with PPO over the admissible set).

The sampled response is returned as an ordinary ``Generation`` (its token ids and per-token
log-probs at temperature T), so the trainer scores and trains it like a generated one: the PPO
ratio is the sequence's own probability ratio, without the set's normaliser. With advantages
that average zero over a group the policy gradient is unchanged by the normaliser in expectation
(``E[A grad log Z] = E[A] grad log Z``); the set-normalised log-prob is kept in
``info["choice_logprob"]`` for analysis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from agentrl.policies.precision import autocast_for

__all__ = ["CandidateScores", "candidate_logprobs", "pick", "score_candidates"]


@dataclass
class CandidateScores:
    """Per prompt, per candidate: the token log-probs of the candidate's ids (at temperature T)."""

    token_logprobs: list[list[list[float]]]  # [prompt][candidate][token]

    def sequence_logprobs(self, i: int) -> torch.Tensor:
        """float64[C]: each candidate's summed token log-probs for prompt ``i``."""
        return torch.tensor([sum(c) for c in self.token_logprobs[i]], dtype=torch.float64)


def _pad(rows: Sequence[Sequence[int]], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of ``rows`` padded to one width, on the left (prompts) or the right (candidates)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, cols] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


@torch.no_grad()
def score_candidates(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    candidate_ids: Sequence[Sequence[Sequence[int]]],
    *,
    pad_token_id: int,
    temperature: float = 1.0,
    max_rows: int = 256,
) -> CandidateScores:
    """Token log-probs of every candidate continuation of every prompt.

    The prompts run once (left-padded, with a KV cache); the cache rows are repeated for each
    prompt's candidates, which run right-padded in batches of at most ``max_rows``. The first
    candidate token is predicted by the prompt's last position. Equal to scoring each
    prompt + candidate sequence on its own (tested), up to float rounding.
    """
    if len(prompt_ids) != len(candidate_ids):
        raise ValueError(
            f"need one candidate list per prompt, got {len(candidate_ids)} for {len(prompt_ids)}"
        )
    for i, cands in enumerate(candidate_ids):
        if not cands or any(not c for c in cands):
            raise ValueError(f"prompt {i}: every candidate must be a non-empty list of token ids")
    temp = temperature if temperature > 0 else 1.0
    out: list[list[list[float]]] = [[] for _ in prompt_ids]
    # prompts in groups whose candidates fit in max_rows (one prompt alone may exceed it)
    start = 0
    while start < len(prompt_ids):
        stop, rows = start + 1, len(candidate_ids[start])
        while stop < len(prompt_ids) and rows + len(candidate_ids[stop]) <= max_rows:
            rows += len(candidate_ids[stop])
            stop += 1
        _score_group(model, prompt_ids[start:stop], candidate_ids[start:stop], pad_token_id, temp, out, start)
        start = stop
    return CandidateScores(out)


def _score_group(
    model: Any,
    prompts: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[Sequence[int]]],
    pad: int,
    temp: float,
    out: list[list[list[float]]],
    offset: int,
) -> None:
    owner = [p for p, cands in enumerate(candidates) for _ in cands]
    flat = [c for cands in candidates for c in cands]
    values = candidate_logprobs(model, prompts, candidates, pad_token_id=pad, temperature=temp).tolist()
    for r, (p, c) in enumerate(zip(owner, flat)):
        out[offset + p].append(values[r][: len(c)])


def candidate_logprobs(
    model: Any,
    prompts: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[Sequence[int]]],
    *,
    pad_token_id: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """float32[R, L]: the token log-probs of every candidate (rows in prompt order, then candidate
    order; right-padded with zeros), differentiable: the scorer of ``score_candidates`` and of SFT's
    choice loss (``trainers.sft``). The prompts run once with a KV cache whose rows are repeated for
    each prompt's candidates; the first candidate token is predicted by the prompt's last position.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    ids, mask = _pad(prompts, pad_token_id, left=True)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    cache = DynamicCache()
    with autocast_for(model):
        first = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,  # only the last position predicts (the first candidate token)
        )
    last_logp = torch.log_softmax(first.logits[:, -1, :].float() / temperature, dim=-1)  # [P, V]
    owner = [p for p, cands in enumerate(candidates) for _ in cands]
    flat = [c for cands in candidates for c in cands]
    index = torch.tensor(owner, dtype=torch.long, device=device)
    cache.batch_select_indices(index)  # each prompt's cache row, once per candidate
    cand_ids, cand_mask = _pad(flat, pad_token_id, left=False)
    cand_ids, cand_mask = cand_ids.to(device), cand_mask.to(device)
    full_mask = torch.cat([mask[index], cand_mask], dim=1)
    lengths = mask.sum(1)[index]
    cand_pos = lengths[:, None] + torch.arange(cand_ids.shape[1], device=device)[None, :]
    with autocast_for(model):
        second = model(
            input_ids=cand_ids,
            attention_mask=full_mask,
            position_ids=cand_pos,
            past_key_values=cache,
            use_cache=False,
        )
    logp = torch.log_softmax(second.logits[:, :-1, :].float() / temperature, dim=-1)  # predicts tokens 1..L-1
    rest = logp.gather(2, cand_ids[:, 1:, None]).squeeze(2) if cand_ids.shape[1] > 1 else logp[:, :0, 0]
    head = last_logp[index].gather(1, cand_ids[:, :1]).squeeze(1)
    return torch.cat([head[:, None], rest], dim=1) * cand_mask


def pick(
    seq_logprobs: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> tuple[int, float]:
    """Sample an index from ``softmax(seq_logprobs)`` (the log-probs are already at temperature T:
    ``sum log softmax(logits / T)``); greedy at temperature 0. Returns (index, its set log-prob)."""
    set_logp = torch.log_softmax(seq_logprobs, dim=0)
    if temperature == 0:
        k = int(torch.argmax(set_logp))
    else:
        k = int(torch.multinomial(set_logp.exp(), 1, generator=generator))
    return k, float(set_logp[k])
