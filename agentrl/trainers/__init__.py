"""Trainers: token samples, losses, value heads, the learner, update schedules (SeeUPO), SFT,
checkpoints, metrics and the training loop (``train``).

``train`` and ``Trainer`` are imported on first use, so that the config module can look up the
loss registry without importing the whole loop.
"""

from typing import Any

__all__ = ["Trainer", "run_sft", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from agentrl.trainers import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'agentrl.trainers' has no attribute {name!r}")
