"""LoRA hyper-parameters: the ``hf`` policy's adapter settings and the training config's ``lora`` section.

One pydantic model serves both, so the fields, defaults and checks are declared once. It imports
neither torch nor peft (the config loads it), only ``to_peft`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["DEFAULT_TARGET_MODULES", "LoraSettings"]

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraSettings(BaseModel):
    """LoRA hyper-parameters (peft ``LoraConfig``): rank, alpha, dropout and the modules it wraps."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES

    @field_validator("r")
    @classmethod
    def _rank(cls, v: int) -> int:
        if v < 1:
            raise ValueError("LoRA r must be an int >= 1")
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("LoRA alpha must be > 0")
        return v

    @field_validator("dropout")
    @classmethod
    def _dropout(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError("LoRA dropout must be in [0, 1)")
        return v

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("LoRA target_modules must be a non-empty list of module names")
        return v

    @classmethod
    def coerce(cls, value: LoraSettings | Mapping[str, Any]) -> LoraSettings:
        """Accept settings or a plain dict (from a YAML config); unknown keys are named."""
        if isinstance(value, LoraSettings):
            return value
        unknown = set(value) - set(cls.model_fields)
        if unknown:
            raise ValueError(
                f"unknown LoRA setting(s) {sorted(unknown)}; known: {', '.join(cls.model_fields)}"
            )
        return cls(**value)

    def to_peft(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,  # type: ignore[arg-type]  # peft annotates int; scaling = alpha / r takes a float
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            task_type="CAUSAL_LM",
            bias="none",
        )
