"""The Policy protocol, sampling settings, generation results and the policy registry.

A policy turns a batch of chat prompts into responses. Every backend returns the prompt and
response token ids with the sampling log-probs, so the trainer can recompute log-probs from ids
whatever produced them (in-process transformers, vLLM or an OpenAI-compatible server).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from agentrl.registry import Registry

__all__ = ["POLICIES", "Generation", "Messages", "Policy", "SamplingParams", "make_policy", "register_policy"]

Messages = list[dict[str, Any]]


MAX_TOP_LOGPROBS = 20  # the OpenAI API's limit


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature == 0`` is greedy decoding.

    ``seed`` makes a call reproducible (same prompts, same seed -> same responses on the same
    device) without touching the global RNG. ``stop``: strings after which a response ends
    (kept in the response). ``top_logprobs``: also return, per generated token, the ``k`` largest
    log-probs of the distribution it was drawn from (``Generation.top_logprobs``; vLLM's
    ``logprobs=k``), e.g. for entropy-triggered branching.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        if not (
            isinstance(self.temperature, (int, float))
            and math.isfinite(self.temperature)
            and self.temperature >= 0
        ):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not (isinstance(self.top_logprobs, int) and 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS):
            raise ValueError(
                f"top_logprobs must be an int in 0..{MAX_TOP_LOGPROBS}, got {self.top_logprobs!r}"
            )
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a tuple of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))


@dataclass
class Generation:
    """One sampled response.

    ``logprobs[i]`` is the log-probability of ``response_ids[i]`` under the model at the sampling
    temperature, before top-p truncation (at temperature 0 or 1: the model's own distribution).
    ``finish_reason``: "stop" (end-of-turn token or a stop string) or "length".
    ``top_logprobs[i]``: with ``SamplingParams.top_logprobs`` k, the k largest log-probs of that
    same distribution at token i, in decreasing order (None when not asked for or not given).
    """

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: Literal["stop", "length"]
    info: dict[str, Any] = field(default_factory=dict)
    top_logprobs: list[list[float]] | None = None


@runtime_checkable
class Policy(Protocol):
    """What rollout needs from a policy backend."""

    def generate(self, prompts: Sequence[Messages], params: SamplingParams) -> list[Generation]:
        """One response per chat prompt, in order."""
        ...

    def prompt_ids(self, messages: Messages) -> list[int]:
        """The token ids the policy feeds for a chat prompt (chat template + generation prompt)."""
        ...


POLICIES: Registry[Callable[..., Policy]] = Registry("policy")


def register_policy(name: str) -> Callable[[Callable[..., Policy]], Callable[..., Policy]]:
    """Decorator: register a policy factory (a class or a function returning a Policy) under ``name``."""
    return POLICIES.decorator(name)


def make_policy(name: str, **kwargs: Any) -> Policy:
    """Build the policy registered as ``name`` (KeyError lists the known names)."""
    return POLICIES.get(name)(**kwargs)


def check_prompts(
    prompt_ids: Sequence[Sequence[int]], params: SamplingParams, limit: int | None, limit_name: str
) -> None:
    """Refuse a call before sampling: params of the wrong type, an empty prompt, or one that with
    ``max_new_tokens`` would not fit in ``limit`` positions (``limit_name`` says whose limit)."""
    if not isinstance(params, SamplingParams):
        raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
    for i, p in enumerate(prompt_ids):
        if not len(p):
            raise ValueError(f"prompt {i} is empty")
        if limit is not None and len(p) + params.max_new_tokens > limit:
            raise ValueError(
                f"prompt {i} has {len(p)} tokens; with max_new_tokens={params.max_new_tokens} it exceeds {limit_name} "
                "(shorten the history window or max_new_tokens)"
            )
