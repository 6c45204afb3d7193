"""The learner: scores samples (old and reference log-probs, value features) and runs PPO-style
updates with gradient accumulation and clipping.

Old log-probs are recomputed under the current weights (under the adapter that sampled, for an
overlapped rollout one update old: ``Learner.behaviour``), so every backend's samples train the
same way; the reference is the same model with the LoRA adapter switched off (no second copy).
One minibatch is one optimiser step; it is split into micro-batches whose gradients add up to the
minibatch's (losses are divided by minibatch counts, ``losses.LossInput``). With several processes
(``distributed.Dist``) each scores and trains its share of the rows and gradients are summed, so
the step is the single-process one; ``parallel`` says how (DDP, one all-reduce, or FSDP).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch

from agentrl.distributed import SINGLE, Dist
from agentrl.policies.precision import HALF_DTYPES, base_dtype
from agentrl.trainers.losses import CHANNEL_LOSSES, LOSSES, LossFn, LossInput, kl_k3, masked_sum
from agentrl.trainers.parallel import make_parallel
from agentrl.trainers.samples import TokenSamples, collate
from agentrl.trainers.values import ValueHead, gather_features

__all__ = ["Learner", "Scores", "TrainBatch", "UpdateSettings"]


@dataclass(frozen=True)
class UpdateSettings:
    """How one update runs (see the config's ``algorithm`` and ``optim`` sections)."""

    loss: str = "ppo_token_mean"
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    value_coef: float = 0.5
    epochs: int = 1
    minibatch_size: int = 64
    micro_batch_size: int = 16
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    # old log-probs scored in the update's own micro-batches ("update_batches"), in consecutive
    # chunks ("sequential"), or "auto": the former in a bf16/fp16 model, the latter in float32
    old_logprobs: str = "auto"

    def __post_init__(self) -> None:
        LOSSES.get(self.loss)
        if self.old_logprobs not in ("auto", "update_batches", "sequential"):
            raise ValueError(
                f"old_logprobs must be auto, update_batches or sequential, got {self.old_logprobs!r}"
            )
        for name in ("epochs", "minibatch_size", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


# one row's scores: log-probs, reference log-probs, entropies, features per head, token statistics
_RowScores = tuple[
    torch.Tensor, torch.Tensor | None, torch.Tensor | None, dict[str, torch.Tensor], dict[str, torch.Tensor]
]


@dataclass
class Scores:
    """Per sample (aligned with the rows scored): response-token log-probs under the current
    weights and the reference, entropies, value-head features per head, and the per-token
    statistics an estimator declared (``EstimatorInfo.token_stats``) by name."""

    rows: np.ndarray
    logp: list[torch.Tensor]
    ref_logp: list[torch.Tensor] | None = None
    entropy: list[torch.Tensor] | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    token_stats: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    layout: list[np.ndarray] | None = None  # the micro-batches scored in, when not consecutive chunks


@dataclass
class TrainBatch:
    """What one update trains on, entry i for scored row ``scores.rows[i]``: the token advantages
    (``adv_T[i]``: float[T_i] over the response), the trained-token masks, for a critic the value
    targets per head (target per scored row, rows where it applies) and, for a channel loss, each
    advantage channel's (weight, token advantages aligned like ``adv_T``)."""

    samples: TokenSamples
    scores: Scores
    adv_T: Sequence[np.ndarray]
    mask_T: Sequence[np.ndarray]
    value_targets: dict[str, tuple[np.ndarray, ...]] | None = None
    channels: Mapping[str, tuple[float, Sequence[np.ndarray]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.scores.rows)
        if not (len(self.adv_T) == len(self.mask_T) == n):
            raise ValueError(f"need one advantage and mask array per scored row ({n})")
        for name, (_, arrays) in self.channels.items():
            if len(arrays) != n:
                raise ValueError(f"advantage channel {name!r} needs one array per scored row ({n})")

    def __len__(self) -> int:
        return len(self.scores.rows)

    def token_count(self, entries: np.ndarray) -> float:
        """Trained tokens of ``entries`` (the minibatch's normaliser)."""
        return float(sum(int(np.asarray(self.mask_T[i]).sum()) for i in entries))

    def per_token(self, entries: np.ndarray, reference: bool) -> dict[str, list[np.ndarray | torch.Tensor]]:
        """Advantages, masks, old (and reference) log-probs of ``entries``, for ``collate``."""
        out: dict[str, list[np.ndarray | torch.Tensor]] = {
            "adv": [self.adv_T[i] for i in entries],
            "mask": [np.asarray(self.mask_T[i], dtype=np.float32) for i in entries],
            "old": [self.scores.logp[i] for i in entries],
        }
        if reference and self.scores.ref_logp is not None:
            out["ref"] = [self.scores.ref_logp[i] for i in entries]
        for name, (_, arrays) in self.channels.items():
            out[f"channel:{name}"] = [arrays[i] for i in entries]
        return out


def _chunks(rows: np.ndarray, size: int) -> list[np.ndarray]:
    return [rows[s : s + size] for s in range(0, len(rows), size)]


class Learner:
    """Owns the optimiser (LoRA parameters + optional value head) for one policy."""

    def __init__(
        self,
        policy,
        settings: UpdateSettings,
        *,
        lr: float,
        critic_lr: float | None = None,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        value_heads: Sequence[str] = (),
        dist: Dist = SINGLE,
        strategy: str = "ddp",
        shard: str = "update",
    ) -> None:
        """``strategy``: how several processes train (``trainers.parallel``: ddp, allreduce, fsdp);
        ``shard``: when fsdp shards the base (update, always)."""
        self.policy, self.settings, self.dist = policy, settings, dist
        self.params = policy.trainable_parameters()
        if not self.params:
            raise ValueError(
                "the policy has no trainable parameters; build it with a LoRA adapter (lora=...)"
            )
        groups = [{"params": self.params, "lr": lr}]
        self.value_head: ValueHead | None = None
        if value_heads:
            hidden = (
                policy.model.config.hidden_size
                if not hasattr(policy.model, "get_base_model")
                else policy.model.get_base_model().config.hidden_size
            )
            self.value_head = ValueHead(hidden, value_heads)
            groups.append(
                {
                    "params": list(self.value_head.parameters()),
                    "lr": critic_lr if critic_lr is not None else lr,
                }
            )
        self.optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay, betas=betas)
        self._base_lr = [float(g["lr"]) for g in self.optimizer.param_groups]
        half = base_dtype(policy.model) in HALF_DTYPES
        self.old_in_update_batches = settings.old_logprobs == "update_batches" or (
            settings.old_logprobs == "auto" and half
        )
        dist.broadcast_params([p for g in groups for p in g["params"]])
        self.parallel = make_parallel(strategy, policy, self.params, dist, shard)
        self._weights_changed()
        # the adapter that sampled the batch in hand when it is older than the current one (an
        # overlapped rollout): ``score`` then scores under it, so old log-probs are the behaviour
        # policy's and the PPO ratio is current / behaviour
        self.behaviour: list[torch.Tensor] | None = None

    def scale_lr(self, factor: float) -> None:
        """Every parameter group's learning rate = its base rate x ``factor`` (a schedule's value for
        this iteration; a function of the iteration alone, so a resumed run sets the same rates)."""
        for group, base in zip(self.optimizer.param_groups, self._base_lr):
            group["lr"] = base * factor

    def snapshot(self) -> list[torch.Tensor]:
        """A copy of the trained adapter weights (e.g. those a rollout is about to sample with)."""
        return [p.detach().clone() for p in self.params]

    @contextlib.contextmanager
    def weights(self, snapshot: Sequence[torch.Tensor] | None) -> Iterator[None]:
        """Inside this block the adapter holds ``snapshot`` (None: the current weights, unchanged);
        the current weights are put back exactly after it."""
        if snapshot is None:
            yield
            return
        if len(snapshot) != len(self.params):
            raise ValueError(f"a snapshot of {len(snapshot)} tensors for {len(self.params)} parameters")
        current = self.snapshot()
        try:
            with torch.no_grad():
                for p, w in zip(self.params, snapshot):
                    p.copy_(w)
            self._weights_changed()
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(self.params, current):
                    p.copy_(w)
            self._weights_changed()

    @property
    def device(self) -> torch.device:
        return self.policy.device

    # ------------------------------------------------------------------ scoring
    def update_layout(self, n: int, rng: np.random.Generator) -> list[np.ndarray] | None:
        """The micro-batches (positions 0..n-1 into the scored rows) that this process's first update
        epoch will train, drawn from a copy of ``rng`` (``update`` then draws the same permutation).

        Scoring old log-probs in them makes the first forward of each update row identical to its
        scoring forward: same rows, same padding, same kernels, so the ratio at unchanged weights is
        exactly 1. In bf16 another batching moves token log-probs by ~1e-3 (far beyond GSPO's
        3e-4 clip band); in float32 by ~1e-7. None when ``settings.old_logprobs`` (``auto``: in a
        half-precision model only, so float32 results stay what they were) says sequential chunks.
        """
        if not self.old_in_update_batches:
            return None
        s = self.settings
        perm = copy.deepcopy(rng).permutation(n)
        layout: list[np.ndarray] = []
        for mb in _chunks(perm, s.minibatch_size):
            layout.extend(
                _chunks(np.asarray(self.dist.share(mb.tolist()), dtype=np.int64), s.micro_batch_size)
            )
        return layout

    @torch.no_grad()
    def score(
        self,
        samples: TokenSamples,
        rows: Sequence[int] | np.ndarray | None = None,
        *,
        reference: bool = False,
        entropy: bool = False,
        features: bool = False,
        token_stats: Sequence[str] = (),
        layout: Sequence[np.ndarray] | None = None,
    ) -> Scores:
        """Log-probs of the samples' responses under the current weights (and the reference), and the
        per-token ``token_stats`` (``policies.logprobs.TOKEN_STATS``) from the same forward pass.

        ``layout``: the micro-batches to score in (positions into ``rows``; this process's, from
        ``update_layout``); default: consecutive chunks of ``micro_batch_size``. With several
        processes each scores its share; every process gets all scores."""
        rows = np.arange(len(samples)) if rows is None else np.asarray(rows, dtype=np.int64)
        stats = tuple(token_stats)
        if layout is None:
            positions = np.arange(len(rows))
            if self.dist.active:
                positions = np.asarray(self.dist.share(positions.tolist()), dtype=np.int64)
            batches = _chunks(positions, self.settings.micro_batch_size)
        else:
            batches = [np.asarray(b, dtype=np.int64) for b in layout]
        with self.weights(self.behaviour):
            per_row = self._score(samples, rows, batches, reference, entropy, features, stats)
        if self.dist.active:
            per_row = dict(self.dist.gather_all(list(per_row.items())))
        if sorted(per_row) != list(range(len(rows))):
            raise ValueError(f"the scoring layout covers {len(per_row)} of {len(rows)} rows (each once)")
        ordered = [per_row[i] for i in range(len(rows))]
        out = Scores(
            rows=rows,
            logp=[r[0] for r in ordered],
            ref_logp=[cast(torch.Tensor, r[1]) for r in ordered] if reference else None,
            entropy=[cast(torch.Tensor, r[2]) for r in ordered] if entropy else None,
            token_stats={k: [r[4][k] for r in ordered] for k in stats},
            layout=list(layout) if layout is not None else None,
        )
        if features and ordered:
            out.features = {h: torch.stack([r[3][h] for r in ordered]) for h in samples.value_offset}
        return out

    def _score(
        self,
        samples: TokenSamples,
        rows: np.ndarray,
        batches: Sequence[np.ndarray],
        reference: bool,
        entropy: bool,
        features: bool,
        token_stats: tuple[str, ...] = (),
    ) -> dict[int, _RowScores]:
        """Per position into ``rows`` scored here: (log-probs, reference, entropies, features per head,
        token statistics by name)."""
        out: dict[int, _RowScores] = {}
        heads = list(samples.value_offset) if features else []
        self.policy.model.eval()
        for batch in batches:
            if not len(batch):
                continue
            chunk = rows[batch]
            packed, _ = collate(samples, chunk, self.policy.pad_token_id, self.device)
            lp = self.policy.logprobs(
                packed.input_ids,
                packed.attention_mask,
                packed.response_mask,
                temperature=self.settings.temperature,
                with_entropy=entropy,
                return_hidden=features,
                **({"token_stats": token_stats} if token_stats else {}),
            )
            logp = [t.cpu() for t in packed.responses(lp.logprobs)]
            ents = [t.cpu() for t in packed.responses(lp.entropy)] if entropy else [None] * len(chunk)
            stats = {k: [t.cpu() for t in packed.responses(lp.stats[k])] for k in token_stats}
            feats = (
                gather_features(
                    lp.hidden, packed.response_mask, {h: samples.value_offset[h][chunk] for h in heads}
                )
                if features
                else {}
            )
            refs: list[torch.Tensor | None] = [None] * len(chunk)
            if reference:
                with self.policy.adapter_disabled():
                    ref = self.policy.logprobs(
                        packed.input_ids,
                        packed.attention_mask,
                        packed.response_mask,
                        temperature=self.settings.temperature,
                    )
                refs = [t.cpu() for t in packed.responses(ref.logprobs)]
            for k, pos in enumerate(batch.tolist()):
                out[pos] = (
                    logp[k],
                    refs[k],
                    ents[k],
                    {h: f[k] for h, f in feats.items()},
                    {name: v[k] for name, v in stats.items()},
                )
        return out

    def values(self, scores: Scores) -> dict[str, np.ndarray]:
        """Value-head predictions per head for the scored rows."""
        if self.value_head is None:
            raise ValueError("this learner has no value head")
        return self.value_head.values(scores.features)

    # ------------------------------------------------------------------ update
    def update(
        self,
        samples: TokenSamples,
        scores: Scores,
        token_adv: Sequence[np.ndarray],
        token_mask: Sequence[np.ndarray],
        *,
        value_targets: dict[str, tuple[np.ndarray, ...]] | None = None,
        channels: Mapping[str, tuple[float, Sequence[np.ndarray]]] | None = None,
        rng: np.random.Generator,
    ) -> dict[str, float]:
        """PPO epochs over ``scores.rows`` (token arrays aligned with them); returns mean statistics.

        ``value_targets[head] = (target per scored row, rows where it applies)`` fits the value head
        on the features kept by ``score(..., features=True)``. ``channels[name] = (weight, token
        advantages)``: the advantage channels a channel loss (``losses.CHANNEL_LOSSES``) trains on.
        """
        s = self.settings
        if s.loss in CHANNEL_LOSSES and not channels:
            raise ValueError(
                f"loss {s.loss!r} clips each advantage channel on its own; it needs the estimator's channels"
            )
        if channels and s.loss not in CHANNEL_LOSSES:
            raise ValueError(f"advantage channels were given but loss {s.loss!r} does not read them")
        batch = TrainBatch(samples, scores, token_adv, token_mask, value_targets, dict(channels or {}))
        loss_fn = LOSSES.get(s.loss)
        totals: dict[str, float] = {}
        steps = 0
        self.policy.model.train()
        try:
            with self.parallel.training():
                for _ in range(s.epochs):
                    for mb in _chunks(rng.permutation(len(batch)), s.minibatch_size):
                        stats = self._minibatch(batch, mb, loss_fn)
                        for k, v in stats.items():
                            totals[k] = totals.get(k, 0.0) + v
                        steps += 1
        finally:
            self.policy.model.eval()
        return {k: v / max(steps, 1) for k, v in totals.items()}

    def _minibatch(self, batch: TrainBatch, mb: np.ndarray, loss_fn: LossFn) -> dict[str, float]:
        """One optimiser step on entries ``mb`` of ``batch`` (this process's share, in micro-batches)."""
        s = self.settings
        n_tokens = batch.token_count(mb)
        n_seqs = float(len(mb))
        self.optimizer.zero_grad(set_to_none=True)
        stats = {"loss": 0.0, "pg_loss": 0.0, "clip_frac": 0.0, "ratio": 0.0, "kl_penalty": 0.0}
        micros = _chunks(np.asarray(self.dist.share(mb.tolist()), dtype=np.int64), s.micro_batch_size)
        par = self.parallel
        count = par.micro_batch_count(len(mb), s.micro_batch_size, sum(len(m) for m in micros))
        for k in range(count):
            padding = k >= len(micros)  # lockstep: a zero-weight pass over one row (trainers.parallel)
            micro = mb[:1] if padding else micros[k]
            with par.no_sync(last=k == count - 1):
                per_token = batch.per_token(micro, reference=bool(s.kl_coef))
                packed, t = collate(
                    batch.samples, batch.scores.rows[micro], self.policy.pad_token_id, self.device, per_token
                )
                lp = par.logprobs(
                    packed.input_ids,
                    packed.attention_mask,
                    packed.response_mask,
                    temperature=s.temperature,
                    with_entropy=bool(s.entropy_coef),
                    **({"return_hidden": True} if par.lockstep else {}),
                )
                out = loss_fn(
                    LossInput(
                        logp=lp.logprobs,
                        old_logp=t["old"],
                        adv=t["adv"],
                        mask=t["mask"],
                        n_tokens=n_tokens,
                        n_seqs=n_seqs,
                        clip_low=s.clip_low,
                        clip_high=s.clip_high,
                        channels=[(w, t[f"channel:{name}"]) for name, (w, _) in batch.channels.items()],
                    )
                )
                loss = out.loss
                kl = ent = None
                if "ref" in t:
                    kl = masked_sum(kl_k3(lp.logprobs, t["ref"]), t["mask"]) / max(n_tokens, 1.0)
                    loss = loss + s.kl_coef * kl
                if s.entropy_coef:
                    ent = masked_sum(lp.entropy, t["mask"]) / max(n_tokens, 1.0)
                    loss = loss - s.entropy_coef * ent
                if padding:
                    loss = loss * 0.0
                if par.lockstep and not loss.requires_grad and lp.hidden is not None:
                    # no scored token: still a backward through every layer, as the others run one
                    loss = loss + 0.0 * lp.hidden.sum()
                if loss.requires_grad:
                    loss.backward()
            if padding:
                continue
            if kl is not None:
                stats["kl_penalty"] += float(kl.detach())
            if ent is not None:
                stats["entropy_bonus"] = stats.get("entropy_bonus", 0.0) + float(ent.detach())
            stats["loss"] += float(loss.detach())
            stats["pg_loss"] += float(out.loss.detach())
            stats["clip_frac"] += float(out.clip_frac)
            stats["ratio"] += float(out.ratio)
        par.reduce()
        stats = self.dist.sum_stats(stats)
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, s.max_grad_norm))
        if self.value_head is not None and batch.value_targets:
            stats["value_loss"] = self._value_loss(batch.scores, mb, batch.value_targets)
        self.optimizer.step()
        self._weights_changed()
        return stats

    def _weights_changed(self) -> None:
        """Tell the policy its adapter was written (its sampling copy refreshes on this, not on
        tensor version counters, which a fused optimiser step leaves alone)."""
        changed = getattr(self.policy, "weights_changed", None)
        if changed is not None:
            changed()

    def _value_loss(
        self, scores: Scores, mb: np.ndarray, value_targets: dict[str, tuple[np.ndarray, ...]]
    ) -> float:
        """0.5 * mean squared error per head over the rows where its target applies (backward included).

        A head whose entry carries trajectory ids (``ValueHeadSpec.fit="trajectory_sum"``) is fitted
        by the sum of its predictions over each trajectory's rows, for the trajectories whose first
        row is in ``mb`` (each trajectory once per epoch; features of all rows are kept, detached)."""
        if self.value_head is None:
            raise RuntimeError("a value loss needs the value head the estimator declares")
        pred = self.value_head({h: f[mb] for h, f in scores.features.items()})
        pred_all: dict[str, torch.Tensor] | None = None
        terms = []
        for head, entry in value_targets.items():
            target, applies = entry[0], entry[1]
            if len(entry) > 2:
                if pred_all is None:
                    pred_all = self.value_head(dict(scores.features))
                term = _trajectory_sum_loss(pred_all[head], target, applies, entry[2], mb)
                if term is not None:
                    terms.append(term)
                continue
            use = torch.as_tensor(np.asarray(applies)[mb], dtype=torch.bool)
            if use.any():
                y = torch.as_tensor(np.asarray(target)[mb], dtype=torch.float32)
                terms.append(0.5 * ((pred[head] - y)[use] ** 2).mean())
        if not terms:
            return 0.0
        loss = self.settings.value_coef * torch.stack(terms).sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.value_head.parameters()), self.settings.max_grad_norm)
        return float(loss.detach())


def _trajectory_sum_loss(
    pred: torch.Tensor, target: np.ndarray, applies: np.ndarray, traj: np.ndarray, mb: np.ndarray
) -> torch.Tensor | None:
    """0.5 * mean over trajectories anchored in ``mb`` of (sum of the trajectory's predictions - target)^2;
    a trajectory's rows are those where ``applies``, its anchor and target its first such row."""
    rows = np.flatnonzero(np.asarray(applies, dtype=bool))
    if not rows.size:
        return None
    _, first, inv = np.unique(np.asarray(traj)[rows], return_index=True, return_inverse=True)
    anchored = np.isin(rows[first], mb)
    if not anchored.any():
        return None
    sums = torch.zeros(first.shape[0], dtype=pred.dtype).index_add(
        0, torch.as_tensor(inv.reshape(-1), dtype=torch.long), pred[torch.as_tensor(rows, dtype=torch.long)]
    )
    y = torch.as_tensor(np.asarray(target, dtype=np.float64)[rows[first]], dtype=pred.dtype)
    keep = torch.as_tensor(anchored)
    return 0.5 * ((sums - y)[keep] ** 2).mean()
