"""A LoRA-merged copy of a peft model for sampling.

Generation through a peft model pays for two extra matmuls per adapted layer at every decoding
step. The copy is a plain model whose adapted weights hold ``W + scale * B @ A``: the same
function, at the base model's cost. It is rebuilt from the untouched base weights, never merged
into them and out again (that round trip drifts in bf16), and refreshed only when an adapter
weight changed. Whoever writes the adapter says so (``mark_stale``: the learner after every
optimiser step, ``load_adapter``): version counters alone cannot be trusted, since a fused or
foreach optimiser, or a write through ``.data``, changes the weights without bumping them. They
are still compared, so an ordinary in-place write (``copy_`` under ``no_grad``) is seen as well.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

__all__ = ["MergedCopy"]


class MergedCopy:
    """``model`` (call ``current()``) holds the peft model's active adapter merged into its weights."""

    def __init__(self, peft_model: Any) -> None:
        from peft.tuners.lora import LoraLayer

        self.peft_model = peft_model
        self.layers: dict[str, Any] = {  # peft's LoraLayer is a mixin of torch modules
            name: module for name, module in peft_model.named_modules() if isinstance(module, LoraLayer)
        }
        if not self.layers:
            raise ValueError("the model has no LoRA layers to merge")
        prefix = "base_model.model."
        self.model = copy.deepcopy(peft_model).merge_and_unload()
        self.model.eval()
        self.model.requires_grad_(False)
        self.targets = {name: self.model.get_submodule(name.removeprefix(prefix)) for name in self.layers}
        self._versions: tuple[Any, ...] | None = None
        self.stale = True

    def mark_stale(self) -> None:
        """The adapter weights changed: rebuild the merged weights before the next use."""
        self.stale = True

    def _state(self) -> tuple[Any, ...]:
        """What the merged weights depend on: adapter weight versions, active adapters, on/off."""
        return tuple(
            (
                tuple(layer.active_adapters),
                bool(layer.disable_adapters),
                *(p._version for n, p in layer.named_parameters() if "lora_" in n),
            )
            for layer in self.layers.values()
        )

    @torch.no_grad()
    def current(self) -> Any:
        """The merged model for the adapter as it is now (refreshed when anything it depends on changed)."""
        state = self._state()
        if self.stale or state != self._versions:
            for name, layer in self.layers.items():
                target = self.targets[name]
                weight = layer.base_layer.weight.clone()
                if not layer.disable_adapters:
                    for adapter in layer.active_adapters:
                        if adapter in layer.lora_A:
                            weight += layer.get_delta_weight(adapter).to(weight.dtype)
                target.weight.copy_(weight)
            self._versions, self.stale = state, False
        return self.model
