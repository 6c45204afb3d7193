"""Update schedules, looked up by the name an estimator declares (``EstimatorInfo.schedule``):
``standard``, one update on the whole batch, and ``turn_slots``, SeeUPO's one update per turn slot
in reverse order with correction factors keyed by trajectory id. A new schedule is one function
registered with ``register_schedule``.

Both score the samples first (old log-probs under the current weights, in the update's own
micro-batches where ``Learner.update_layout`` says so; reference log-probs with the adapter off
when KL is on; value features when the estimator has a critic; the per-token statistics it
declares), run the estimator, spread its credit over tokens and hand everything to the learner.
Under a channel loss (``losses.CHANNEL_LOSSES``) ``standard`` also spreads the advantage channels
the estimator declares (``EstimatorInfo.channels``), with their weights under the run's options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from agentrl.credit import Advantages, estimate, estimator_info
from agentrl.credit.seeupo import turn_slots, update_corrections
from agentrl.registry import Registry
from agentrl.trainers.learner import Learner, Scores
from agentrl.trainers.losses import CHANNEL_LOSSES, kl_k3
from agentrl.trainers.samples import TokenSamples, channel_advantages, token_advantages
from agentrl.trainers.values import value_targets
from agentrl.types import StepBatch

__all__ = [
    "SCHEDULES",
    "UpdateResult",
    "register_schedule",
    "run_update",
    "standard_update",
    "turn_slot_update",
]


@dataclass
class UpdateResult:
    """What one iteration's update produced: the advantages (per row) and statistics for logs."""

    advantages: Advantages
    stats: dict[str, float]


# fn(learner, batch, samples, estimator, options, *, rng, seed, order) -> UpdateResult
ScheduleFn = Callable[..., UpdateResult]
SCHEDULES: Registry[ScheduleFn] = Registry("update schedule")


def register_schedule(name: str) -> Callable[[ScheduleFn], ScheduleFn]:
    return SCHEDULES.decorator(name)


def run_update(
    learner: Learner,
    batch: StepBatch,
    samples: TokenSamples,
    estimator: str,
    options: dict[str, Any],
    *,
    rng: np.random.Generator,
    seed: int = 0,
    order: str = "reverse",
) -> UpdateResult:
    """One iteration's update through the estimator's schedule. ``rng`` draws minibatches; ``seed`` and
    ``order`` are for schedules that walk turn slots (the slot order, and its draw when "random")."""
    schedule = SCHEDULES.get(estimator_info(estimator).schedule)
    return schedule(learner, batch, samples, estimator, options, rng=rng, seed=seed, order=order)


def _entropy_mean(scores: Scores) -> float:
    if not scores.entropy:
        return float("nan")
    flat = torch.cat(scores.entropy)
    return float(flat.mean()) if flat.numel() else float("nan")


def _kl_mean(scores: Scores) -> float:
    """Token-mean k3 KL of the policy (before the update) from the adapter-off reference."""
    if not scores.ref_logp:
        return float("nan")
    logp, ref = torch.cat(scores.logp), torch.cat(scores.ref_logp)
    return float(kl_k3(logp, ref).mean()) if logp.numel() else float("nan")


def merge_copies(
    batch: StepBatch, adv: Advantages, channels: tuple[str, ...] = ()
) -> tuple[Advantages, np.ndarray | None]:
    """A sampled step and its copies in branched trajectories (``StepBatch.node``) are one sample:
    each takes the mean of the advantages they got (so the copies agree; also the ``extras`` named in
    ``channels``), and only the first row of each node is trained (the returned mask; None without
    copies). Rows of value-only trajectories (``StepBatch.value_only``: chain rollouts' Monte-Carlo
    continuations) are never trained and leave the mean of a node that has a trained row alone."""
    value_only = batch.value_only if batch.value_only is not None and batch.value_only.any() else None
    if batch.node is None and value_only is None:
        return adv, None
    node = batch.node if batch.node is not None else np.arange(len(batch), dtype=np.int64)
    _, first, code = np.unique(node, return_index=True, return_inverse=True)
    if value_only is None and first.size == len(batch):
        return adv, None
    keep = np.ones(len(batch), dtype=bool) if value_only is None else ~value_only
    # the rows that count in their node's mean: the trained ones (all, in a node that has none)
    weight = np.where(np.bincount(code, weights=keep)[code] > 0, keep, True).astype(np.float64)
    count = np.bincount(code, weights=weight)

    def mean(x: np.ndarray) -> np.ndarray:
        return (np.bincount(code, weights=x * weight) / count)[code]

    token = None
    if adv.token is not None:
        token = list(adv.token)
        for n in np.flatnonzero(np.bincount(code) > 1):
            rows = np.flatnonzero(code == n)
            counted = rows[weight[rows] > 0]
            avg = np.mean([np.asarray(adv.token[r], dtype=np.float64) for r in counted], axis=0)
            for r in rows:
                token[r] = avg
    merged = Advantages(
        step=mean(adv.step),
        spans={k: mean(v) for k, v in adv.spans.items()},
        masks=adv.masks,
        extras={k: mean(v) if k in channels else v for k, v in adv.extras.items()},
        token=token,
    )
    trained = np.zeros(len(batch), dtype=bool)
    kept = np.flatnonzero(keep)
    trained[kept[np.unique(code[kept], return_index=True)[1]]] = True
    return merged, trained


def _adv_stats(adv: Advantages) -> dict[str, float]:
    a = adv.step
    return {
        "adv_mean": float(a.mean()),
        "adv_std": float(a.std()),
        "adv_min": float(a.min()),
        "adv_max": float(a.max()),
        "adv_zero_frac": float(np.mean(a == 0.0)),
    }


@register_schedule("standard")
def standard_update(
    learner: Learner,
    batch: StepBatch,
    samples: TokenSamples,
    estimator: str,
    options: dict[str, Any],
    *,
    rng: np.random.Generator,
    seed: int = 0,
    order: str = "reverse",
) -> UpdateResult:
    """Score, estimate (with critic values when needed), route credit to tokens, update once
    (``seed`` and ``order`` are unused: there are no slots)."""
    info = estimator_info(estimator)
    critic = bool(info.value_heads)
    scores = learner.score(
        samples,
        reference=True,
        entropy=True,
        features=critic,
        token_stats=info.token_stats,
        layout=learner.update_layout(len(samples), rng),
    )
    cfg = dict(options)
    if critic:
        cfg["values"] = info.critic_input(learner.values(scores))
    if info.token_stats:
        cfg["token_stats"] = {k: [t.double().numpy() for t in v] for k, v in scores.token_stats.items()}
    weights = info.channel_weights(options) if learner.settings.loss in CHANNEL_LOSSES else {}
    adv, trained = merge_copies(batch, estimate(estimator, batch, **cfg), tuple(weights))
    token_adv, token_mask = token_advantages(samples, adv, spans=info.spans)
    if trained is not None:  # a step shared by several branches trains once
        token_mask = [m if keep else np.zeros_like(m) for m, keep in zip(token_mask, trained)]
    targets = value_targets(adv, info.value_heads, traj=batch.traj_idx) if critic else None
    spread = channel_advantages(samples, adv, tuple(weights))
    channels = {c: (w, spread[c]) for c, w in weights.items()}
    stats = learner.update(
        samples, scores, token_adv, token_mask, value_targets=targets, channels=channels or None, rng=rng
    )
    stats.update(_adv_stats(adv))
    stats["entropy"] = _entropy_mean(scores)
    stats["kl"] = _kl_mean(scores)
    stats["trained_tokens"] = float(sum(int(m.sum()) for m in token_mask))
    return UpdateResult(adv, stats)


@register_schedule("turn_slots")
def turn_slot_update(
    learner: Learner,
    batch: StepBatch,
    samples: TokenSamples,
    estimator: str,
    options: dict[str, Any],
    *,
    rng: np.random.Generator,
    seed: int = 0,
    order: str = "reverse",
) -> UpdateResult:
    """SeeUPO: for each turn slot t in ``order``, recompute old log-probs of B_t, take the
    per-turn advantages times the current M_i, update once, then ``M_i = clip(M_i * rho_i)`` with
    rho_i from the mean token log-ratio of trajectory i's turn-t response before/after the update.
    ``options["ended"]`` (estimator option) decides whether ended trajectories count in the later
    slots' statistics; either way slot t trains only the turn-t responses, each response once."""
    corrections: dict[str, float] = {}
    final = np.zeros(len(batch))
    totals: dict[str, float] = {}
    entropies, kls, trained, slots = [], [], 0.0, turn_slots(batch, order, seed)
    slot_adv_means = []
    for _, rows in slots:
        scores = learner.score(
            samples, rows, reference=True, entropy=True, layout=learner.update_layout(len(rows), rng)
        )
        adv = estimate(estimator, batch, correction=corrections, **options)
        final[rows] = adv.step[rows]
        slot_adv_means.append(float(adv.step[rows].mean()))
        token_adv = [np.full(len(samples.response_ids[r]), adv.step[r], dtype=np.float32) for r in rows]
        token_mask = [np.ones(len(samples.response_ids[r]), dtype=bool) for r in rows]
        stats = learner.update(samples, scores, token_adv, token_mask, rng=rng)
        after = learner.score(samples, rows, layout=scores.layout)  # before and after batched alike
        mean_log_ratio = np.array(
            [float((a - b).mean()) if a.numel() else 0.0 for a, b in zip(after.logp, scores.logp)]
        )
        corrections = update_corrections(corrections, batch.traj_id[rows], mean_log_ratio)
        for k, v in stats.items():
            totals[k] = totals.get(k, 0.0) + v
        entropies.append(_entropy_mean(scores))
        kls.append(_kl_mean(scores))
        trained += float(sum(len(samples.response_ids[r]) for r in rows))
    result = Advantages(step=final)
    stats = {k: v / max(len(slots), 1) for k, v in totals.items()}
    stats.update(_adv_stats(result))
    stats["entropy"] = float(np.nanmean(entropies)) if entropies else float("nan")
    stats["kl"] = float(np.nanmean(kls)) if kls else float("nan")
    stats["trained_tokens"] = trained
    stats["seeupo_slots"] = float(len(slots))
    # a slot whose trained rows are mostly one sign (late slots: the trajectories still running are
    # mostly failures) pushes the policy one way for a whole optimiser step
    stats["seeupo_slot_adv_mean_min"] = min(slot_adv_means) if slot_adv_means else 0.0
    stats["seeupo_slot_adv_mean_max"] = max(slot_adv_means) if slot_adv_means else 0.0
    stats["seeupo_slot_rows_min"] = float(min((len(r) for _, r in slots), default=0))
    stats["seeupo_correction_mean"] = float(np.mean(list(corrections.values()))) if corrections else 1.0
    return UpdateResult(result, stats)
