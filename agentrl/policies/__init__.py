"""Policies: the Policy protocol, sampling settings, the registry, and the backends.

Importing this package does not import torch; ``hf`` (and the tiny-model builder) load it when used,
and ``vllm`` imports vLLM only when built.
"""

from __future__ import annotations

import os
from typing import Any

from agentrl.policies.base import (
    POLICIES,
    Generation,
    Messages,
    Policy,
    SamplingParams,
    make_policy,
    register_policy,
)

__all__ = ["POLICIES", "Generation", "Messages", "Policy", "SamplingParams", "make_policy", "register_policy"]


@register_policy("hf")
def _make_hf(path: str | os.PathLike[str], **kwargs: Any) -> Policy:
    """``make_policy("hf", path=..., lora={...})``: ``HFPolicy.from_pretrained`` (transformers + peft)."""
    from agentrl.policies.hf import HFPolicy

    return HFPolicy.from_pretrained(path, **kwargs)


@register_policy("openai")
def _make_openai(base_url: str, model: str, **kwargs: Any) -> Policy:
    """``make_policy("openai", base_url=..., model=..., api_key=...)``: any OpenAI-compatible server."""
    from agentrl.policies.openai import OpenAIPolicy

    return OpenAIPolicy(base_url, model, **kwargs)


@register_policy("vllm")
def _make_vllm(path: str | os.PathLike[str], **kwargs: Any) -> Policy:
    """``make_policy("vllm", path=..., adapter=...)``: ``VLLMPolicy.from_pretrained`` (vLLM, CUDA GPU)."""
    from agentrl.policies.vllm import VLLMPolicy

    return VLLMPolicy.from_pretrained(path, **kwargs)
