"""Numeric precision on the GPU path: the model dtype, TF32 and bf16 autocast.

A bf16 base model with a peft LoRA adapter keeps the adapter in float32, and peft casts each
adapted layer's input up to it: without autocast the LoRA matmuls (r=64 on every projection) run
in float32, the slowest path of an H100, and without TF32 that float32 is full IEEE precision.
``autocast_for`` runs the transformer body in the base model's half dtype (LoRA matmuls included;
the float32 master weights and their gradients stay float32), and the scorers keep the output
layer's logits, log-softmax, losses and KL in float32. A float32 model gets no autocast, so CPU
results are exactly what they were.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["HALF_DTYPES", "autocast_for", "enable_tf32", "resolve_dtype"]

HALF_DTYPES = (torch.bfloat16, torch.float16)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``dtype`` as a torch dtype; None: float32 on CPU, bfloat16 on a GPU."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'")
        return getattr(torch, dtype)
    return dtype


def enable_tf32(device: torch.device) -> bool:
    """Let CUDA float32 matmuls and convolutions use TF32 (what is left in float32 after autocast:
    optimiser-side work, a float32 model). Nothing changes on the CPU. Returns whether it was set."""
    if device.type != "cuda":
        return False
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision = "tf32"
        if conv is not None:
            conv.fp32_precision = "tf32"
    else:  # torch < 2.9
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return True


def base_dtype(model: Any) -> torch.dtype:
    """The dtype of the (base) model's weights: its input embeddings'."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    emb = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return emb.weight.dtype
    return next(model.parameters()).dtype


def autocast_for(model: Any) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` in the model's half dtype when its base weights are bf16/fp16 and some of
    its parameters are float32 (a LoRA adapter); else nothing (a float32 model, a merged bf16 copy)."""
    dtype = base_dtype(model)
    if dtype not in HALF_DTYPES or not any(p.dtype == torch.float32 for p in model.parameters()):
        return contextlib.nullcontext()
    device = next(model.parameters()).device
    return torch.autocast(device_type=device.type, dtype=dtype)
