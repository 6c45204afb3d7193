"""Map character spans of a response onto its tokens.

Parsers report where the switch, subgoal and action sit in the response text; the trainer needs
the same parts as token positions (HiPER sends a different advantage to each). ``token_offsets``
recovers each token's character range from its ids by decoding prefixes, so it works for any
tokenizer, including byte-level BPE where one character may span several tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from agentrl.agents.formats import ParsedResponse, Span

__all__ = ["response_token_masks", "span_masks", "token_offsets", "token_spans"]


def token_offsets(tokenizer: Any, ids: Sequence[int], *, skip_special_tokens: bool = True) -> list[Span]:
    """Character range of every token in ``tokenizer.decode(ids, skip_special_tokens=...)``.

    Decode with the same ``skip_special_tokens`` the text was made with: skipped tokens get an
    empty range. Byte-level tokens that each hold part of one multi-byte character all get that
    character's range, so a span over the character selects every token it is made of.
    """
    ids = [int(i) for i in ids]
    if not ids:
        return []
    prefixes = [ids[: i + 1] for i in range(len(ids))]
    texts = tokenizer.batch_decode(
        prefixes, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
    )
    partial = [t.endswith("\ufffd") and i + 1 < len(ids) for i, t in enumerate(texts)]
    ends: list[int] = [0] * len(ids)
    nxt = len(texts[-1])
    for i in range(len(ids) - 1, -1, -1):  # a token ending mid-character ends where the character does
        ends[i] = nxt = min(nxt, len(texts[i])) if not partial[i] else nxt
    offsets: list[Span] = []
    for i, end in enumerate(ends):
        start = 0 if i == 0 else len(texts[i - 1].rstrip("\ufffd")) if partial[i - 1] else len(texts[i - 1])
        offsets.append((min(start, end), end))
    return offsets


def _check_offsets(offsets: Sequence[Sequence[int]]) -> np.ndarray:
    arr = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    if (arr[:, 1] < arr[:, 0]).any():
        raise ValueError("token offsets must be (start, end) pairs with start <= end")
    return arr


def span_masks(char_spans: Mapping[str, Span], offsets: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """bool[T] per span: the tokens whose characters overlap the span (empty tokens never do)."""
    arr = _check_offsets(offsets)
    masks = {}
    for name, (start, end) in char_spans.items():
        if end < start:
            raise ValueError(f"span {name!r} = ({start}, {end}) ends before it starts")
        masks[name] = (arr[:, 0] < end) & (arr[:, 1] > start) & (arr[:, 1] > arr[:, 0])
    return masks


def token_spans(char_spans: Mapping[str, Span], offsets: Sequence[Sequence[int]]) -> dict[str, Span]:
    """[first, last + 1) token index of every span's overlapping tokens; (0, 0) when none overlap."""
    out: dict[str, Span] = {}
    for name, mask in span_masks(char_spans, offsets).items():
        idx = np.flatnonzero(mask)
        out[name] = (int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, 0)
    return out


def response_token_masks(
    tokenizer: Any, response_ids: Sequence[int], parsed: ParsedResponse
) -> dict[str, np.ndarray]:
    """bool[len(response_ids)] per part of a parsed response (e.g. HiPER's switch/subgoal/action).

    ``parsed`` must come from ``tokenizer.decode(response_ids, skip_special_tokens=True)``, the
    text every policy returns; a malformed response has no spans and gets no masks.
    """
    return span_masks(parsed.spans, token_offsets(tokenizer, response_ids))
