"""Value heads: a small linear critic on the policy's last hidden state (GAE/MT-PPO: one head;
HiPER: V_H "high", V_L "low", V_T "switch").

The head reads hidden states the scorer already computes (``return_hidden``), at one position per
step row, and is fitted to the estimator's value targets. The features are detached: the critic
never pushes the policy's LoRA weights, so its learning rate can differ freely (credit.md: critic
lr 10x the actor's for HiPER).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from agentrl.credit import Advantages

__all__ = ["ValueHead", "gather_features", "value_heads_for", "value_targets"]


def value_heads_for(estimator: str, needs_values: bool) -> tuple[str, ...]:
    """Head names an estimator needs: HiPER's three, one ``value`` head for other critics, none otherwise."""
    if not needs_values:
        return ()
    return ("high", "low", "switch") if estimator == "hiper" else ("value",)


class ValueHead(torch.nn.Module):
    """``V(h) = w . h + b`` per head, on float32 features."""

    def __init__(self, hidden_size: int, heads: Sequence[str]) -> None:
        super().__init__()
        if not heads:
            raise ValueError("a value head needs at least one head name")
        self.heads = tuple(heads)
        self.linear = torch.nn.Linear(hidden_size, len(self.heads))
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``features[head]``: float[R, H] -> value[R] for each head."""
        return {h: self.linear(features[h].float())[:, k] for k, h in enumerate(self.heads)}

    def values(self, features: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            return {h: v.double().numpy() for h, v in self(features).items()}


def gather_features(hidden_BTH: torch.Tensor, response_mask_BT: torch.Tensor, offsets: dict[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """Hidden state per row at ``response start + offset`` (offset -1: the last prompt token), per head."""
    width = response_mask_BT.shape[1]
    start = width - response_mask_BT.long().sum(-1)  # responses sit at the right end (left padding)
    rows = torch.arange(hidden_BTH.shape[0], device=hidden_BTH.device)
    out = {}
    for head, off in offsets.items():
        pos = start + torch.as_tensor(np.asarray(off), dtype=torch.long, device=hidden_BTH.device)
        out[head] = hidden_BTH[rows, pos].detach().float().cpu()
    return out


def value_targets(adv: Advantages, heads: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(target, rows where it applies) per head from an estimator's extras.

    GAE/MT-PPO: ``returns`` (A + V). HiPER: ``target_high`` on boundary rows only (masks["subgoal"]),
    ``target_low`` and ``target_switch`` everywhere.
    """
    n = adv.step.shape[0]
    out = {}
    for head in heads:
        if head == "value":
            out[head] = (adv.extras["returns"], np.ones(n, dtype=bool))
        elif head == "high":
            out[head] = (adv.extras["target_high"], adv.masks.get("subgoal", np.ones(n, dtype=bool)))
        else:
            out[head] = (adv.extras[f"target_{head}"], np.ones(n, dtype=bool))
    return out
