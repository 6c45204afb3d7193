"""Token samples: one (prompt ids, response ids) sample per step row, and credit spread over its tokens.

Rows follow ``StepBatch.from_trajectories`` order, so sample k is batch row k. Most estimators give
one advantage per row, broadcast to every response token. Estimators that declare ``spans`` route
one advantage to each part of the response (HiPER: switch, subgoal, action tokens, found with
``response_token_masks``); the other tokens of a well-formed response are not trained. A malformed
response has no parts: all its tokens take the last span's advantage (HiPER: the action's, which
carries the invalid-action penalty [ours]). Estimators registered ``per_token`` (KTAE) give one
advantage per response token (``Advantages.token``), used as given on every token. Advantage
channels (``EstimatorInfo.channels``, for a channel loss) are per-row, broadcast like ``step``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from agentrl.agents import parse_response, response_token_masks
from agentrl.credit import RESPONSE_END, Advantages, ValueHeadSpec
from agentrl.policies.logprobs import PackedBatch, pack_samples
from agentrl.types import Step, Trajectory, TrajectoryGroup

__all__ = [
    "TokenSamples",
    "build_samples",
    "channel_advantages",
    "collate",
    "steps_in_row_order",
    "token_advantages",
]


def steps_in_row_order(trajectories: Iterable[Trajectory | TrajectoryGroup]) -> list[Step]:
    """Steps in the row order of ``StepBatch.from_trajectories`` on the same input."""
    trajs: list[Trajectory] = []
    for t in trajectories:
        trajs.extend(t.trajectories if isinstance(t, TrajectoryGroup) else [t])
    return [s for t in trajs if t.steps for s in t.steps]


@dataclass
class TokenSamples:
    """Training samples, one per step row.

    ``parts[k]``: bool mask per response token for each response part (empty unless built with
    ``parts=True``). ``value_offset[head][k]``: index into the response whose hidden state (after
    reading that token) the value head reads; -1 = the last prompt token, i.e. before the response.
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    parts: list[dict[str, np.ndarray]] = field(default_factory=list)
    value_offset: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompt_ids)


def build_samples(
    steps: Sequence[Step],
    *,
    tokenizer: Any = None,
    parts: bool = False,
    response_format: str = "hiper",
    value_heads: Mapping[str, ValueHeadSpec] | Sequence[str] = (),
) -> TokenSamples:
    """Samples from steps that kept their token ids (rollout does).

    ``parts``: locate the response parts of ``response_format`` (HiPER: switch/subgoal/action tokens;
    needs ``tokenizer``). Value heads read the last prompt token, except a head whose spec names
    ``reads_after``: it reads the last token of that part (HiPER's V_L: right after ``</subgoal>``),
    or the last prompt token when the response has no such part; ``reads_after="response"``: the
    response's last token (SPA-RL's progress head). Head names alone read the prompt.
    """
    prompts, responses = [], []
    for k, s in enumerate(steps):
        if s.prompt_ids is None or s.response_ids is None:
            raise ValueError(
                f"step row {k} has no token ids; training needs steps recorded by rollout (prompt_ids, response_ids)"
            )
        if not s.prompt_ids:
            raise ValueError(f"step row {k} has an empty prompt")
        prompts.append([int(i) for i in s.prompt_ids])
        responses.append([int(i) for i in s.response_ids])
    part_masks: list[dict[str, np.ndarray]] = []
    if parts:
        if tokenizer is None:
            raise ValueError("routing advantages to response parts needs the tokenizer")
        for s, ids in zip(steps, responses):
            parsed = parse_response(s.response, response_format)
            part_masks.append(response_token_masks(tokenizer, ids, parsed) if parsed.valid else {})
    heads = value_heads if isinstance(value_heads, Mapping) else dict.fromkeys(value_heads)
    offsets: dict[str, np.ndarray] = {}
    for head, spec in heads.items():
        off = np.full(len(steps), -1, dtype=np.int64)
        after = spec.reads_after if spec is not None else None
        if after == RESPONSE_END:
            off = np.array([len(r) - 1 for r in responses], dtype=np.int64)  # empty: -1, the prompt
        elif after is not None and part_masks:
            for k, m in enumerate(part_masks):
                if after in m and m[after].any():
                    off[k] = int(np.flatnonzero(m[after])[-1])
        offsets[head] = off
    return TokenSamples(prompts, responses, part_masks, offsets)


def token_advantages(
    samples: TokenSamples,
    adv: Advantages,
    rows: Sequence[int] | np.ndarray | None = None,
    *,
    spans: Sequence[str] = (),
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(advantage per response token, trained-token mask) for each sample in ``rows`` (default all).

    ``adv`` holds one entry per batch row. Without ``spans`` the row's ``adv.step`` goes to every
    token. With them (HiPER: switch, subgoal, action) the tokens of part p take ``adv.spans[p]`` on
    rows where ``adv.masks[p]`` is set (absent: every row); a response without parts takes the last
    span's advantage on every token. With ``adv.token`` (per-token estimators) row r's tokens take
    ``adv.token[r]``, whose length must be the response's.
    """
    rows = np.arange(len(samples)) if rows is None else np.asarray(rows, dtype=np.int64)
    if adv.token is not None and spans:
        raise ValueError("advantages are both per token and per span; an estimator declares one or the other")
    out_adv, out_mask = [], []
    for r in rows:
        n = len(samples.response_ids[r])
        if adv.token is not None:
            a = np.asarray(adv.token[r], dtype=np.float32)
            if a.shape != (n,):
                raise ValueError(
                    f"row {int(r)}: {a.shape[0] if a.ndim == 1 else a.shape} per-token advantages for a "
                    f"response of {n} tokens"
                )
            out_adv.append(a)
            out_mask.append(np.ones(n, dtype=bool))
            continue
        if not spans:
            out_adv.append(np.full(n, adv.step[r], dtype=np.float32))
            out_mask.append(np.ones(n, dtype=bool))
            continue
        part = samples.parts[r] if samples.parts else {}
        if not part:
            out_adv.append(np.full(n, adv.spans.get(spans[-1], adv.step)[r], dtype=np.float32))
            out_mask.append(np.ones(n, dtype=bool))
            continue
        a = np.zeros(n, dtype=np.float32)
        m = np.zeros(n, dtype=bool)
        for name in spans:
            if name not in part or name not in adv.spans:
                continue
            if name in adv.masks and not adv.masks[name][r]:
                continue
            a[part[name]] = adv.spans[name][r]
            m |= part[name]
        out_adv.append(a)
        out_mask.append(m)
    return out_adv, out_mask


def channel_advantages(
    samples: TokenSamples,
    adv: Advantages,
    channels: Sequence[str],
    rows: Sequence[int] | np.ndarray | None = None,
) -> dict[str, list[np.ndarray]]:
    """Per channel, its per-row advantage (``adv.extras[channel]``) on every response token of each
    sample in ``rows`` (default all), as ``token_advantages`` broadcasts ``adv.step``."""
    rows = np.arange(len(samples)) if rows is None else np.asarray(rows, dtype=np.int64)
    out: dict[str, list[np.ndarray]] = {}
    for channel in channels:
        if channel not in adv.extras:
            raise ValueError(f"advantage channel {channel!r} is not among the estimator's extras")
        values = adv.extras[channel]
        out[channel] = [
            np.full(len(samples.response_ids[r]), values[r], dtype=np.float32) for r in rows.tolist()
        ]
    return out


def collate(
    samples: TokenSamples,
    rows: Sequence[int] | np.ndarray,
    pad_token_id: int,
    device: torch.device | str,
    per_token: Mapping[str, Sequence[np.ndarray | torch.Tensor]] | None = None,
) -> tuple[PackedBatch, dict[str, torch.Tensor]]:
    """Pack the samples of ``rows`` (left padding) and place per-token arrays (aligned with ``rows``)
    on their response positions of a ``[B, T]`` float32 tensor (0 elsewhere)."""
    rows = [int(r) for r in rows]
    packed = pack_samples(
        [samples.prompt_ids[r] for r in rows], [samples.response_ids[r] for r in rows], pad_token_id, device
    )
    placed: dict[str, torch.Tensor] = {}
    for name, arrays in (per_token or {}).items():
        if len(arrays) != len(rows):
            raise ValueError(f"per-token array {name!r} has {len(arrays)} entries for {len(rows)} samples")
        flat = (
            torch.cat(
                [
                    torch.as_tensor(np.asarray(a, dtype=np.float32))
                    if not isinstance(a, torch.Tensor)
                    else a.float().cpu()
                    for a in arrays
                ]
            )
            if arrays
            else torch.zeros(0)
        )
        out = torch.zeros(packed.input_ids.shape, dtype=torch.float32)
        out[packed.response_mask.cpu()] = flat
        placed[name] = out.to(device)
    return packed, placed
