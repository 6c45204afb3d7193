"""Value heads: a small linear critic on the policy's last hidden state, with the heads an estimator
declares (``EstimatorInfo.value_heads``; GAE/MT-PPO: one head, HiPER: V_H, V_L, V_T).

The head reads hidden states the scorer already computes (``return_hidden``), at one position per
step row, and is fitted to the estimator's value targets. The features are detached: the critic
never pushes the policy's LoRA weights, so its learning rate can differ freely (HiPER's authors
train theirs at 10x the actor's learning rate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from agentrl.credit import Advantages, ValueHeadSpec, estimator_info

__all__ = ["ValueHead", "gather_features", "value_heads_for", "value_targets"]


def value_heads_for(estimator: str) -> tuple[str, ...]:
    """Head names the estimator's critic declares (none for critic-free estimators)."""
    return tuple(estimator_info(estimator).value_heads)


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


def gather_features(
    hidden_BTH: torch.Tensor, response_mask_BT: torch.Tensor, offsets: dict[str, Sequence[int]]
) -> dict[str, torch.Tensor]:
    """Hidden state per row at ``response start + offset`` (offset -1: the last prompt token), per head."""
    width = response_mask_BT.shape[1]
    start = width - response_mask_BT.long().sum(-1)  # responses sit at the right end (left padding)
    rows = torch.arange(hidden_BTH.shape[0], device=hidden_BTH.device)
    out = {}
    for head, off in offsets.items():
        pos = start + torch.as_tensor(np.asarray(off), dtype=torch.long, device=hidden_BTH.device)
        out[head] = hidden_BTH[rows, pos].detach().float().cpu()
    return out


def value_targets(
    adv: Advantages, heads: Mapping[str, ValueHeadSpec], traj: np.ndarray | None = None
) -> dict[str, tuple[np.ndarray, ...]]:
    """(target, rows where it applies) per head, read from the estimator's extras and masks as its
    ``ValueHeadSpec`` says (e.g. GAE: ``returns`` = A + V everywhere; HiPER's V_H: segment starts only).

    A head fitted by ``fit="trajectory_sum"`` gets a third array, the trajectory of each row
    (``traj``, e.g. ``StepBatch.traj_idx``, required then): its rows' predictions add up per trajectory.
    """
    n = adv.step.shape[0]
    everywhere = np.ones(n, dtype=bool)
    out: dict[str, tuple[np.ndarray, ...]] = {}
    for head, spec in heads.items():
        applies = adv.masks.get(spec.applies, everywhere) if spec.applies else everywhere
        if spec.fit == "row":
            out[head] = (adv.extras[spec.target], applies)
            continue
        if traj is None or np.asarray(traj).shape != (n,):
            raise ValueError(f"value head {head!r} is fitted per trajectory; pass one trajectory id per row")
        out[head] = (adv.extras[spec.target], applies, np.asarray(traj))
    return out
