"""Advantages, the estimator registry and ``estimate``: the one entry point of the credit module.

An estimator is a function ``fn(batch, **options) -> Advantages`` registered under a name with
the StepBatch fields and caller inputs it needs, and with everything a trainer must know to train
with it (value heads, span routing, update schedule, default loss, response format), so trainers
read these traits and never compare estimator names. ``estimate`` checks those, rejects unknown
options by name, hands the function a canonical batch (rows grouped by trajectory, ordered by
turn) and maps the results back to the caller's row order, so estimators never see positions
that differ from ids.

A stateful estimator (``stateful=True``) also keeps something across calls, e.g. a per-task
baseline: it takes a keyword ``state``, a JSON-serialisable dict owned by the caller, which it
reads and updates. A trainer keeps one such dict per run, passes it on every iteration and
checkpoints it; a caller that passes none (benchmarks, one-off calls) gets a fresh one per call.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agentrl.registry import Registry
from agentrl.types import StepBatch


@dataclass
class Advantages:
    """Per-row credit. ``step``: one float per row, in batch order.

    ``spans``: per-row arrays for methods that send different signals to different parts of a
    response (HiPER: "action", "subgoal", "switch"; MT-GRPO: "pre_tool"/"post_tool" are not
    needed, rows carry their turn's value). ``masks``: per-row booleans saying where a span is
    trained (absent = everywhere). ``extras``: other per-row outputs, e.g. value targets.
    ``token``: one float array per row, aligned with that row's response token ids, for methods whose
    credit differs from token to token (KTAE); the trainer uses it instead of broadcasting ``step``
    (which still holds a per-row summary, for logs). Only estimators registered ``per_token`` set it.
    """

    step: np.ndarray
    spans: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    token: list[np.ndarray] | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"step": self.step}
        out.update({f"spans.{k}": v for k, v in self.spans.items()})
        out.update({f"masks.{k}": v for k, v in self.masks.items()})
        out.update({f"extras.{k}": v for k, v in self.extras.items()})
        return out

    def permuted(self, perm: np.ndarray) -> Advantages:
        """Map results computed on ``batch.take(perm)`` back to the original row order."""

        def back(a: np.ndarray) -> np.ndarray:
            out = np.empty_like(a)
            out[perm] = a
            return out

        token = None
        if self.token is not None:
            token = [np.zeros(0)] * len(self.token)
            for i, row in zip(perm.tolist(), self.token):
                token[i] = row
        return Advantages(
            step=back(self.step),
            spans={k: back(v) for k, v in self.spans.items()},
            masks={k: back(v) for k, v in self.masks.items()},
            extras={k: back(v) for k, v in self.extras.items()},
            token=token,
        )


class MissingInputError(ValueError):
    """An estimator was called on a batch, or with inputs, that lack something it needs."""


FIELD_HINTS = {
    "state_key": "set Step.state_key (the raw env observation, e.g. info['state_key'])",
    "turn_reward": "set Step.turn_reward (a verifiable or judged per-turn score)",
    "tool_call": "set Step.info['tool_call'] = True on turns the env answered with a tool result "
    "(tool envs report it as info['tool_call'], which the rollout copies)",
    "switch": "set Step.info['switch'] to 'KEEP' or 'SWITCH' (HiPER response format)",
    "subgoal": "set Step.info['subgoal'] to the parsed subgoal text (HiPER response format)",
    "response_ids": "set Step.response_ids (the response's token ids; rollout records them)",
    "value_only": "roll out with Monte-Carlo value continuations: rollout.branching.enabled: true, "
    "at: chain, interval: k (Branching(at='chain', ...); they mark Trajectory.info['value_only'])",
}


VALUE_FITS = ("row", "trajectory_sum")
RESPONSE_END = "response"  # ``reads_after`` value: the response's own last token
TOKEN_STATS = ("self_certainty", "chosen_logit", "entropy")


@dataclass(frozen=True)
class ValueHeadSpec:
    """One value head of a critic estimator: what it is fitted to and where it reads the response.

    target: key of ``Advantages.extras`` holding the head's regression target.
    applies: key of ``Advantages.masks`` marking the rows where the target applies (None: every row;
    a mask the estimator did not return also means every row).
    reads_after: response part (of the estimator's response format) whose last token's hidden state
    the head reads; ``"response"`` (``RESPONSE_END``): the response's last token, whatever the format;
    None, or a response without that part (or an empty response): the last prompt token.
    fit: "row", each row's prediction regresses onto its own target; "trajectory_sum", the sum of
    the predictions over a trajectory's rows (where the target applies) regresses onto the target,
    read at the trajectory's first such row: the head learns per-step contributions that add up to
    a trajectory-level quantity (SPA-RL's progress head: sum of c_t onto the outcome).
    """

    target: str
    applies: str | None = None
    reads_after: str | None = None
    fit: str = "row"

    def __post_init__(self) -> None:
        if self.fit not in VALUE_FITS:
            raise ValueError(f"ValueHeadSpec.fit={self.fit!r}; choose one of {', '.join(VALUE_FITS)}")


# (state, train task ids, options) -> a weight per task, or None for a uniform draw
TaskWeights = Callable[[Mapping[str, Any], Sequence[str], Mapping[str, Any]], np.ndarray | None]
# options -> whether the trainer must supply the row input ``drift`` (see ``EstimatorInfo.policy_drift``)
PolicyDrift = Callable[[Mapping[str, Any]], bool]
DRIFT = "drift"


@dataclass(frozen=True)
class EstimatorInfo:
    """What the registry knows about an estimator, including what a trainer needs to train with it.

    value_heads: the critic's heads by name (none: no critic); their predictions reach the estimator
    as ``values`` (the array of a single head, a dict by head name for several).
    spans: response parts that take their own advantage (``Advantages.spans``) instead of ``step`` on
    every token; a response without these parts takes the last span's advantage on every token.
    schedule: the trainer's update schedule (``trainers.schedule.SCHEDULES``), e.g. "turn_slots".
    loss: the policy loss used when the config names none.
    response_format: the rollout response format the method needs (None: any).
    options_if_missing: options to train with when a StepBatch field is unavailable (field -> options).
    stateful: the function takes a keyword ``state`` (a JSON-serialisable dict, updated in place) that
    the trainer keeps across iterations and saves in every checkpoint (see the module doc).
    per_token: the estimator returns ``Advantages.token`` (one advantage per response token), which
    the trainer trains on as given; it reads the token ids from the field ``response_ids``.
    task_weights: how a stateful estimator wants the iteration's tasks drawn:
    ``task_weights(state, task_ids, options)`` gives a weight per train task (the trainer draws
    with probabilities proportional to them), or None for the trainer's uniform draw.
    token_stats: per-token learner outputs the estimator reads (names in ``TOKEN_STATS``: the
    scoring policy's "self_certainty" logsumexp(z) - mean(z), the "chosen_logit" z of the sampled token
    before temperature, the "entropy"; z the temperature-scaled logits). The trainer computes them in
    the scoring pass that gives the old log-probs, only when declared, and passes the input
    ``token_stats``: a dict by name of one float array per row, aligned with the field ``response_ids``.
    channels: advantage channels that a channel loss (``trainers.losses``, e.g. ``ppo_channels``) clips
    each on its own, then sums with their weights: ``Advantages.extras`` key -> weight, a number or the
    name of the option that holds it (HDPO: ``{"acc": 1.0, "eff": "eff_weight"}``). ``step`` stays the
    weighted sum, which every other loss trains on.
    policy_drift: ``policy_drift(options)`` says whether, under these options, the stateful estimator
    reads the row input ``drift``: per row, the policy drift D of its task, the token mean of
    ``|log pi_then - log pi_now|`` over the task's last stored response, scored when it was stored and
    again now (0 on a task's first visit). The trainer keeps one response per task for it. ``drift``
    may change only the state, never the advantages: the trainer measures D after the iteration's
    update, so it estimates before the update with ``drift`` 0 (that call's state is dropped) and
    calls again after it with the measured D, keeping that call's state (and checking that the
    advantages are the same).
    benchmark_lr_scale: the credit benchmark (``agentrl bench credit --part learning``) trains the
    method at this multiple of the family's policy learning rate; a measured setting, stated in its
    ``learning.md``. The trainer never rescales a config's ``optim.lr``.
    clip: the (clip_low, clip_high) band the method's authors trained with, where it is not their
    loss's own (``trainers.losses.LOSS_CLIP``): a config that leaves the band out gets this one.
    """

    name: str
    fn: Callable[..., Advantages]
    fields: tuple[str, ...]
    inputs: tuple[str, ...]
    row_inputs: tuple[str, ...]
    paper: str
    summary: str
    options: dict[str, Any]
    value_heads: Mapping[str, ValueHeadSpec] = field(default_factory=dict)
    spans: tuple[str, ...] = ()
    schedule: str = "standard"
    loss: str = "ppo_token_mean"
    response_format: str | None = None
    options_if_missing: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    stateful: bool = False
    per_token: bool = False
    task_weights: TaskWeights | None = None
    token_stats: tuple[str, ...] = ()
    channels: Mapping[str, float | str] = field(default_factory=dict)
    policy_drift: PolicyDrift | None = None
    benchmark_lr_scale: float = 1.0
    clip: tuple[float, float] | None = None

    def channel_weights(self, options: Mapping[str, Any]) -> dict[str, float]:
        """Each channel's weight under ``options`` (an option that names a weight falls back to its
        default)."""
        return {
            c: float(options.get(w, self.options[w]) if isinstance(w, str) else w)
            for c, w in self.channels.items()
        }

    def wants_drift(self, options: Mapping[str, Any]) -> bool:
        """Whether the trainer must measure the policy drift for a run with ``options``."""
        return self.policy_drift is not None and bool(self.policy_drift(options))

    def critic_input(self, values_by_head: Mapping[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        """The ``values`` input from predictions per head: one head's array, or the dict of several."""
        if len(self.value_heads) == 1:
            return values_by_head[next(iter(self.value_heads))]
        return {h: values_by_head[h] for h in self.value_heads}


ESTIMATORS: Registry[EstimatorInfo] = Registry("estimator")


def register_estimator(
    name: str,
    *,
    fields: tuple[str, ...] = (),
    inputs: tuple[str, ...] = (),
    row_inputs: tuple[str, ...] = (),
    paper: str = "",
    summary: str = "",
    value_heads: Mapping[str, ValueHeadSpec] | None = None,
    spans: tuple[str, ...] = (),
    schedule: str = "standard",
    loss: str = "ppo_token_mean",
    response_format: str | None = None,
    options_if_missing: Mapping[str, Mapping[str, Any]] | None = None,
    stateful: bool = False,
    per_token: bool = False,
    task_weights: TaskWeights | None = None,
    token_stats: tuple[str, ...] = (),
    channels: Mapping[str, float | str] | None = None,
    policy_drift: PolicyDrift | None = None,
    benchmark_lr_scale: float = 1.0,
    clip: tuple[float, float] | None = None,
) -> Callable[[Callable[..., Advantages]], Callable[..., Advantages]]:
    """Register ``fn(batch, *, option=default, ...) -> Advantages`` under ``name``.

    fields: optional StepBatch columns the method reads (e.g. "state_key").
    inputs: keyword arguments the caller must pass (e.g. "values").
    row_inputs: keyword arguments that hold per-row arrays (or dicts of them); ``estimate``
    reorders them together with the batch.
    The other keywords are the trainer's traits (``EstimatorInfo``); a critic (``value_heads``)
    goes with the ``values`` input. ``stateful``: ``fn`` takes a keyword-only ``state`` (not an
    option); it runs under a schedule that calls it once per iteration. ``per_token``: ``fn`` returns
    ``Advantages.token`` aligned with the field ``response_ids`` (which it must list in ``fields``).
    ``task_weights``: a stateful estimator's task sampler (see ``EstimatorInfo``).
    ``token_stats``: the learner's per-token outputs ``fn`` reads from its input ``token_stats`` (which
    it must list in ``inputs``), aligned with the field ``response_ids`` (listed in ``fields``).
    ``channels``: ``Advantages.extras`` keys that ``fn`` always returns, with their weights (see
    ``EstimatorInfo``); one advantage per row each, so not with ``spans`` or ``per_token``.
    ``policy_drift``: when the trainer supplies the row input ``drift`` (see ``EstimatorInfo``).
    ``benchmark_lr_scale``: the credit benchmark's rate for the method, as a multiple of the family's.
    ``clip``: the authors' (clip_low, clip_high) where it is not their loss's default band.
    """
    heads = dict(value_heads or {})
    if clip is not None and not (len(clip) == 2 and all(np.isfinite(c) and c >= 0 for c in clip)):
        raise ValueError(
            f"estimator {name!r}: clip must be two numbers >= 0 (clip_low, clip_high), got {clip!r}"
        )
    if not (np.isfinite(benchmark_lr_scale) and benchmark_lr_scale > 0):
        raise ValueError(
            f"estimator {name!r}: benchmark_lr_scale must be a positive number, got {benchmark_lr_scale!r}"
        )
    if task_weights is not None and not stateful:
        raise ValueError(
            f"estimator {name!r}: task_weights reads the estimator's state; declare stateful=True"
        )
    if bool(heads) != ("values" in inputs):
        raise ValueError(
            f"estimator {name!r}: value_heads and the input 'values' go together (a critic feeds its values)"
        )
    if stateful and schedule == "turn_slots":
        raise ValueError(
            f"estimator {name!r}: a stateful estimator cannot use the turn_slots schedule, which calls "
            "the estimator once per turn slot and would update the state several times an iteration"
        )

    if per_token and spans:
        raise ValueError(
            f"estimator {name!r}: per_token and spans both decide each token's advantage; declare one"
        )
    if per_token and "response_ids" not in fields:
        raise ValueError(
            f"estimator {name!r}: a per_token estimator aligns its output with the field 'response_ids'; "
            "list it in fields"
        )
    if per_token and schedule != "standard":
        raise ValueError(
            f"estimator {name!r}: per_token advantages are trained by the 'standard' schedule only"
        )
    stats = tuple(token_stats)
    unknown_stats = sorted(set(stats) - set(TOKEN_STATS))
    if unknown_stats:
        raise ValueError(
            f"estimator {name!r}: unknown token_stats {unknown_stats}; choose from {', '.join(TOKEN_STATS)}"
        )
    if bool(stats) != ("token_stats" in inputs):
        raise ValueError(
            f"estimator {name!r}: token_stats and the input 'token_stats' go together (the learner feeds them)"
        )
    if stats and ("response_ids" not in fields or schedule != "standard"):
        raise ValueError(
            f"estimator {name!r}: token_stats are aligned with the field 'response_ids' (list it in fields) "
            "and are computed by the 'standard' schedule only"
        )

    chans = dict(channels or {})
    if chans and (spans or per_token or schedule != "standard"):
        raise ValueError(
            f"estimator {name!r}: channels are per-row advantages trained by the 'standard' schedule; "
            "not with spans or per_token"
        )
    if policy_drift is not None and (not stateful or DRIFT not in row_inputs):
        raise ValueError(
            f"estimator {name!r}: policy_drift feeds the row input 'drift' to a stateful estimator; "
            "declare stateful=True and row_inputs=('drift', ...)"
        )
    if policy_drift is not None and (heads or stats):
        raise ValueError(
            f"estimator {name!r}: policy_drift's after-update call passes no critic values or token_stats; "
            "an estimator that reads them cannot declare it"
        )

    def wrap(fn: Callable[..., Advantages]) -> Callable[..., Advantages]:
        sig = inspect.signature(fn)
        options = {
            p.name: p.default
            for p in list(sig.parameters.values())[1:]
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        if stateful != ("state" in options):
            raise ValueError(
                f"estimator {name!r}: stateful=True and a keyword-only parameter 'state' go together"
            )
        options.pop("state", None)
        for channel, weight in chans.items():
            if isinstance(weight, str) and weight not in options:
                raise ValueError(
                    f"estimator {name!r}: channel {channel!r} weighs by {weight!r}, not an option"
                )
            if not isinstance(weight, str) and not np.isfinite(weight):
                raise ValueError(f"estimator {name!r}: channel {channel!r} has weight {weight!r}")
        ESTIMATORS.register(
            name,
            EstimatorInfo(
                name=name,
                fn=fn,
                fields=fields,
                inputs=inputs,
                row_inputs=row_inputs,
                paper=paper,
                summary=summary or (inspect.getdoc(fn) or "").split("\n")[0],
                options=options,
                value_heads=heads,
                spans=tuple(spans),
                schedule=schedule,
                loss=loss,
                response_format=response_format,
                options_if_missing={k: dict(v) for k, v in (options_if_missing or {}).items()},
                stateful=stateful,
                per_token=per_token,
                task_weights=task_weights,
                token_stats=stats,
                channels=chans,
                policy_drift=policy_drift,
                benchmark_lr_scale=float(benchmark_lr_scale),
                clip=None if clip is None else (float(clip[0]), float(clip[1])),
            ),
        )
        return fn

    return wrap


def available_estimators() -> list[str]:
    """Names accepted by ``estimate``."""
    return ESTIMATORS.names()


def estimator_info(name: str) -> EstimatorInfo:
    return ESTIMATORS.get(name)


def _as_row_array(name: str, value: Any, n: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"input {name!r} must have one value per row, shape ({n},); got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"input {name!r} contains NaN or inf")
    return arr


def _prepare_row_input(name: str, value: Any, n: int) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: _as_row_array(f"{name}[{k!r}]", v, n) for k, v in value.items()}
    return _as_row_array(name, value, n)


def _permute_input(value: Any, perm: np.ndarray) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: v[perm] for k, v in value.items()}
    return value[perm]


def estimate(name: str, batch: StepBatch, **cfg: Any) -> Advantages:
    """Run estimator ``name`` on ``batch``; returns advantages in the batch's row order.

    A stateful estimator's ``state`` (keyword; a fresh dict when absent or None) is updated in place
    only when the call succeeds: the estimator works on a copy, so a failed call leaves it as it was.
    """
    info = ESTIMATORS.get(name)
    state = cfg.pop("state", None)
    if state is not None and not info.stateful:
        raise ValueError(f"estimator {name!r} is not stateful; it takes no state")
    if state is not None and not isinstance(state, dict):
        raise TypeError(f"state of estimator {name!r} must be a dict, got {type(state).__name__}")
    missing = [f for f in info.fields if getattr(batch, f) is None]
    if missing:
        hints = "; ".join(f"StepBatch.{f}: {FIELD_HINTS.get(f, 'provide it')}" for f in missing)
        raise MissingInputError(f"estimator {name!r} needs {hints}")
    unknown = sorted(set(cfg) - set(info.options))
    if unknown:
        allowed = ", ".join(sorted(info.options)) or "(none)"
        raise ValueError(f"unknown option(s) {unknown} for estimator {name!r}; allowed: {allowed}")
    absent = [i for i in info.inputs if cfg.get(i) is None]
    if absent:
        raise MissingInputError(f"estimator {name!r} needs input(s) {absent}; pass them as keyword arguments")
    n = len(batch)
    for key in info.row_inputs:
        if key in cfg:
            cfg[key] = _prepare_row_input(key, cfg[key], n)
    if info.token_stats:
        cfg["token_stats"] = _prepare_token_stats(name, info, cfg["token_stats"], batch)
    if n == 0:
        return Advantages(step=np.zeros(0), token=[] if info.per_token else None)
    work: dict[str, Any] | None = None
    if info.stateful:
        cfg["state"] = work = {} if state is None else copy.deepcopy(state)
    if batch.is_canonical():
        adv = info.fn(batch, **cfg)
    else:
        perm = batch.canonical_order()
        for key in info.row_inputs:
            if key in cfg:
                cfg[key] = _permute_input(cfg[key], perm)
        if info.token_stats:
            cfg["token_stats"] = {k: [v[i] for i in perm.tolist()] for k, v in cfg["token_stats"].items()}
        adv = info.fn(batch.take(perm), **cfg).permuted(perm)
    for key, arr in adv.arrays().items():
        if arr.shape != (n,):
            raise RuntimeError(f"estimator {name!r} returned {key} with shape {arr.shape}, expected ({n},)")
        if arr.dtype != bool and not np.all(np.isfinite(arr)):
            raise RuntimeError(f"estimator {name!r} produced NaN or inf in {key}")
    _check_token(name, info, adv, batch)
    absent_channels = [c for c in info.channels if c not in adv.extras]
    if absent_channels:
        raise RuntimeError(
            f"estimator {name!r} declares channels {absent_channels} but returned no such extras"
        )
    if state is not None and work is not None:
        state.clear()
        state.update(work)
    return adv


def _prepare_token_stats(
    name: str, info: EstimatorInfo, value: Any, batch: StepBatch
) -> dict[str, list[np.ndarray]]:
    """The declared per-token statistics as float64 arrays, one per row with that row's number of
    response tokens, all finite; other statistics the caller passed are dropped."""
    if not isinstance(value, Mapping):
        raise ValueError(f"input 'token_stats' of estimator {name!r} must be a dict by statistic name")
    absent = [s for s in info.token_stats if s not in value]
    if absent:
        raise MissingInputError(
            f"estimator {name!r} needs token_stats {absent} (the learner computes them when scoring)"
        )
    n = len(batch)
    want = np.fromiter((len(t) for t in batch.column("response_ids")), np.int64, n)
    out: dict[str, list[np.ndarray]] = {}
    for stat in info.token_stats:
        rows = [
            a if type(a) is np.ndarray and a.dtype == np.float64 else np.asarray(a, np.float64)
            for a in value[stat]
        ]
        if len(rows) != n:
            raise ValueError(f"token_stats[{stat!r}] has {len(rows)} arrays for {n} rows")
        try:  # the quick check: 1-D rows of the right lengths concatenate into one 1-D array
            got = np.fromiter(map(len, rows), np.int64, n)
            flat = np.concatenate(rows) if n else np.zeros(0)
            ok = flat.ndim == 1 and np.array_equal(got, want)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            got = np.fromiter((a.shape[0] if a.ndim == 1 else -1 for a in rows), np.int64, n)
            r = int(np.flatnonzero(got != want)[0])
            raise ValueError(
                f"token_stats[{stat!r}]: row {r} has {want[r]} response tokens but shape {rows[r].shape}"
            )
        if not np.all(np.isfinite(flat)):
            raise ValueError(f"token_stats[{stat!r}] contains NaN or inf")
        out[stat] = rows
    return out


def _check_token(name: str, info: EstimatorInfo, adv: Advantages, batch: StepBatch) -> None:
    """Per-token output: present exactly for per_token estimators, one finite 1-D array per row whose
    length is that row's number of response tokens."""
    if adv.token is None:
        if info.per_token:
            raise RuntimeError(f"estimator {name!r} is registered per_token but returned no Advantages.token")
        return
    if not info.per_token:
        raise RuntimeError(
            f"estimator {name!r} returned Advantages.token but is not registered per_token=True"
        )
    n = len(batch)
    if len(adv.token) != n:
        raise RuntimeError(f"estimator {name!r} returned {len(adv.token)} per-token arrays for {n} rows")
    want = np.fromiter(map(len, batch.column("response_ids")), np.int64, n)
    try:  # the quick check: 1-D rows of the right lengths concatenate into one 1-D array
        flat = np.concatenate(adv.token) if n else np.zeros(0)
        ok = flat.ndim == 1 and np.array_equal(np.fromiter(map(len, adv.token), np.int64, n), want)
    except (TypeError, ValueError):
        ok = False
    if ok:
        if not np.all(np.isfinite(flat)):
            raise RuntimeError(f"estimator {name!r} produced NaN or inf in its per-token advantages")
        return
    got = np.fromiter((a.shape[0] if a.ndim == 1 else -1 for a in adv.token), np.int64, n)
    bad = np.flatnonzero(got != want)
    if bad.size:
        r = int(bad[0])
        raise RuntimeError(
            f"estimator {name!r}: row {r} has {want[r]} response tokens but per-token advantages of "
            f"shape {adv.token[r].shape} ({bad.size} row(s) mismatched)"
        )
    if n and not np.all(np.isfinite(np.concatenate(adv.token))):
        raise RuntimeError(f"estimator {name!r} produced NaN or inf in its per-token advantages")
