"""Policy drift per task, for estimators that declare ``policy_drift`` (SPO's KL-adaptive rho).

The drift D of a task is the token mean of ``|log pi_then - log pi_now|`` over the task's last stored
response, scored when it was stored and again now; 0 for a task seen for the first time. A task's
response is its last trajectory in a batch: every turn's prompt and response token ids as the
learner scores them, and D averages over all its response tokens (the authors' response is one
multi-turn generation, averaged over its response mask).

Timing, as in the authors' ``_get_spo_rho`` (verl-recipe ``spo/spo_ray_trainer.py``): after the
iteration's update, one batched scoring pass through ``Learner.score`` (the path of the old
log-probs) rescores the stored responses of the batch's tasks and scores the batch's new ones
under the updated weights; D compares the former with their stored scores, and the new responses
with their scores replace the stored ones. So D at a visit spans the updates since the previous
visit's update, this visit's included. The weights are always the current ones (an overlapped
rollout's older behaviour adapter is not used here).

With several processes every process holds the same gathered batch and gets every score, so every
process keeps the same responses; rank 0 saves them in each checkpoint (``policy_drift.pt``), so a
resumed run goes on with exactly the responses and scores an uninterrupted one has.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentrl.trainers.learner import Learner
from agentrl.trainers.samples import TokenSamples
from agentrl.types import StepBatch

__all__ = ["DRIFT_FILE", "PolicyDrift", "StoredResponse"]

DRIFT_FILE = "policy_drift.pt"


@dataclass
class StoredResponse:
    """A task's last response: per turn, the prompt and response token ids and the response tokens'
    log-probs when it was stored."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    logp: list[torch.Tensor]


def token_mean_abs(then: list[torch.Tensor], now: list[torch.Tensor]) -> float:
    """Mean of ``|then - now|`` over all tokens of all turns (float64); 0 when there are none."""
    if not then:
        return 0.0
    a, b = torch.cat(then).double(), torch.cat(now).double()
    return float((a - b).abs().mean()) if a.numel() else 0.0


class PolicyDrift:
    """The stored response of each task seen so far, and the drift measured on them."""

    def __init__(self) -> None:
        self.responses: dict[str, StoredResponse] = {}

    def measure(
        self, learner: Learner, batch: StepBatch, samples: TokenSamples
    ) -> tuple[np.ndarray, dict[str, float]]:
        """After the update: D of each row's task (one value per batch row) and its statistics; each
        task's last trajectory in ``batch`` then becomes its stored response."""
        row_task = batch.task_names[batch.group_idx]
        tasks = list(dict.fromkeys(str(t) for t in row_task))
        last_traj = {str(t): int(i) for t, i in zip(row_task, batch.traj_idx)}  # the last one wins
        prompts: list[list[int]] = []
        responses: list[list[int]] = []
        old: dict[str, tuple[int, int]] = {}  # task -> (first scored row, rows) of its stored response
        new: dict[str, tuple[int, np.ndarray]] = {}  # task -> (first scored row, its batch rows)
        for task in tasks:
            stored = self.responses.get(task)
            if stored is not None:
                old[task] = (len(prompts), len(stored.prompt_ids))
                prompts += stored.prompt_ids
                responses += stored.response_ids
        for task in tasks:
            rows = np.flatnonzero(batch.traj_idx == last_traj[task])
            new[task] = (len(prompts), rows)
            prompts += [samples.prompt_ids[r] for r in rows]
            responses += [samples.response_ids[r] for r in rows]
        behaviour, learner.behaviour = learner.behaviour, None  # the current weights
        try:
            scores = learner.score(TokenSamples(prompts, responses))
        finally:
            learner.behaviour = behaviour
        drift = dict.fromkeys(tasks, 0.0)
        for task, (start, n) in old.items():
            drift[task] = token_mean_abs(self.responses[task].logp, scores.logp[start : start + n])
        for task, (start, rows) in new.items():
            self.responses[task] = StoredResponse(
                prompt_ids=[list(samples.prompt_ids[r]) for r in rows],
                response_ids=[list(samples.response_ids[r]) for r in rows],
                logp=[t.float().clone() for t in scores.logp[start : start + len(rows)]],
            )
        per_row = np.array([drift[str(t)] for t in row_task], dtype=np.float64)
        stats = {
            "drift_mean": float(np.mean([drift[t] for t in tasks])),
            "drift_first_visit_frac": 1.0 - len(old) / len(tasks),
            "drift_scored_rows": float(len(prompts)),
        }
        return per_row, stats

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: per task, the token ids (int32 tensors: a vocabulary fits, and a long
        multi-turn episode's prompts are most of the file) and the log-probs (float32)."""
        return {
            "tasks": {
                task: {
                    "prompt_ids": [torch.tensor(p, dtype=torch.int32) for p in s.prompt_ids],
                    "response_ids": [torch.tensor(r, dtype=torch.int32) for r in s.response_ids],
                    "logp": [t.detach().cpu() for t in s.logp],
                }
                for task, s in self.responses.items()
            }
        }

    def save(self, path: Path) -> None:
        torch.save(self.state(), path)

    @classmethod
    def load(cls, checkpoint: Path) -> PolicyDrift:
        """The responses kept in ``checkpoint``; a missing or malformed file is an error naming it (a
        resume without them would measure every task as a first visit and change the run)."""
        file = Path(checkpoint) / DRIFT_FILE
        if not file.exists():
            raise ValueError(
                f"checkpoint {checkpoint} has no {DRIFT_FILE}, but this run's estimator measures the policy "
                "drift from each task's stored response; resume from a checkpoint written by a run with the "
                "same options, or use a new run directory"
            )
        try:
            saved = torch.load(file, weights_only=True, map_location="cpu")
            out = cls()
            for task, s in saved["tasks"].items():
                stored = StoredResponse(
                    prompt_ids=[t.tolist() for t in s["prompt_ids"]],
                    response_ids=[t.tolist() for t in s["response_ids"]],
                    logp=list(s["logp"]),
                )
                lengths_ok = len(stored.prompt_ids) == len(stored.response_ids) == len(stored.logp) and all(
                    t.shape == (len(r),) for t, r in zip(stored.logp, stored.response_ids)
                )
                if not lengths_ok:
                    raise ValueError(f"task {task!r}: token ids and log-probs do not match")
                out.responses[str(task)] = stored
        except Exception as e:  # any unreadable content: the same clear refusal
            raise ValueError(
                f"checkpoint {checkpoint}: {DRIFT_FILE} is corrupt ({e}); resume from an earlier checkpoint "
                "(delete this one) or use a new run directory"
            ) from None
        return out
