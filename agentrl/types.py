"""The one data model: Step -> Trajectory -> TrajectoryGroup, and StepBatch, its columnar view.

Environments and rollout produce ``Trajectory`` objects; credit estimators and trainers work on a
``StepBatch`` (numpy columns, one row per step). Trajectories are stored as JSON lines with an
exact round trip.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np

__all__ = [
    "Step",
    "StepBatch",
    "Trajectory",
    "TrajectoryFileError",
    "TrajectoryGroup",
    "iter_trajectories",
    "normalize_action",
    "read_trajectories",
    "stable_hash",
    "write_trajectories",
]


@dataclass
class Step:
    """One turn: what the agent saw, what it produced, and what the env answered.

    ``state_key`` is the raw env observation (no history, no prompt scaffolding, no step
    counter): steps with equal keys are treated as the same state by GiGPO, HGPO and SALT.
    ``info`` must be JSON-serialisable; the keys ``tool_call`` (bool: the env answered this turn
    with a tool result), ``switch`` ("KEEP"/"SWITCH") and ``subgoal`` (str) become StepBatch
    columns when present. In a branched trajectory the turns before its branch point are copies of
    its parent's: ``info["copy_of"]`` ("<traj_id>#<turn>") names the step that was sampled, and the
    StepBatch column ``node`` gives a step and its copies one id (trained once).
    """

    obs: str
    response: str = ""
    action: str = ""
    reward: float = 0.0
    valid: bool = True
    state_key: str | None = None
    turn_reward: float | None = None
    prompt: str | list[dict[str, Any]] | None = None
    prompt_ids: list[int] | None = None
    response_ids: list[int] | None = None
    response_logprobs: list[float] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trajectory:
    """One episode of one task. ``outcome`` defaults to the sum of step rewards.

    A branched trajectory (tree rollouts) continued ``parent_id``'s episode from its turn
    ``branch_turn``: its first ``branch_turn`` steps are copies of the parent's. Chain rollouts mark
    every trajectory with ``info["value_only"]``: True for the continuations that only estimate a
    value (never trained), False for the others (the ``StepBatch`` column ``value_only``)."""

    task_id: str
    group_id: str
    traj_id: str
    steps: list[Step] = field(default_factory=list)
    terminated: bool = False
    truncated: bool = False
    # None when built means "the sum of step rewards", filled in by __post_init__: a float after
    outcome: float = None  # type: ignore[assignment]
    success: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    parent_id: str | None = None
    branch_turn: int | None = None

    def __post_init__(self) -> None:
        if self.outcome is None:
            self.outcome = float(sum(s.reward for s in self.steps))

    def __len__(self) -> int:
        return len(self.steps)

    def to_dict(self) -> dict[str, Any]:
        """``dataclasses.asdict(self)``, built without deep-copying every token id and log-prob one by
        one (which made writing 1000 evaluation episodes take seconds)."""
        out = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "steps"}
        out["steps"] = [
            {f.name: _plain(getattr(s, f.name)) for f in (_STEP_FIELDS if type(s) is Step else fields(s))}
            for s in self.steps
        ]
        return {f.name: out[f.name] for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trajectory:
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        _check_keys(data, cls, "trajectory")
        raw_steps = data.get("steps", [])
        if not isinstance(raw_steps, list):
            raise ValueError("'steps' must be a list")
        steps = []
        for k, s in enumerate(raw_steps):
            if not isinstance(s, dict):
                raise ValueError(f"step {k} is not a JSON object")
            _check_keys(s, Step, f"step {k}")
            if "obs" not in s:
                raise ValueError(f"step {k} has no 'obs'")
            steps.append(Step(**s))
        for key in ("task_id", "group_id", "traj_id"):
            if key not in data:
                raise ValueError(f"missing {key!r}")
        return cls(**{**data, "steps": steps})


_ATOMS = frozenset({str, int, float, bool, type(None)})
_STEP_FIELDS = fields(Step)


def _plain(value: Any) -> Any:
    """What ``dataclasses.asdict`` makes of a field value: lists, tuples and dicts copied, dataclasses
    converted, anything else deep-copied; immutable atoms (and lists of them) are taken as they are."""
    kind = type(value)
    if kind in _ATOMS:
        return value
    if kind is list:
        return list(value) if _ATOMS.issuperset(map(type, value)) else [_plain(v) for v in value]
    if kind is dict:
        return {_plain(k): _plain(v) for k, v in value.items()}
    if kind is tuple:
        return tuple(_plain(v) for v in value)
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return copy.deepcopy(value)


def _check_keys(data: dict[str, Any], cls: type, what: str) -> None:
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"{what} has unknown field(s) {sorted(unknown)}")


@dataclass
class TrajectoryGroup:
    """N trajectories of one task started from an identical initial state (a group reset)."""

    task_id: str
    group_id: str
    trajectories: list[Trajectory]

    def __post_init__(self) -> None:
        for t in self.trajectories:
            if t.group_id != self.group_id or t.task_id != self.task_id:
                raise ValueError(
                    f"trajectory {t.traj_id!r} has task/group ({t.task_id!r}, {t.group_id!r}), "
                    f"expected ({self.task_id!r}, {self.group_id!r})"
                )

    def __len__(self) -> int:
        return len(self.trajectories)

    def __iter__(self) -> Iterator[Trajectory]:
        return iter(self.trajectories)

    @property
    def outcomes(self) -> np.ndarray:
        return np.array([t.outcome for t in self.trajectories], dtype=np.float64)

    @property
    def success_rate(self) -> float:
        return float(np.mean([t.success for t in self.trajectories])) if self.trajectories else 0.0


# ----------------------------------------------------------------------------- JSONL


class TrajectoryFileError(ValueError):
    """Raised when some lines of a trajectory file cannot be read.

    ``trajectories`` holds every line that could be read, ``bad_lines`` the (line number,
    reason) of the others, so nothing readable is lost.
    """

    def __init__(self, path: str, bad_lines: list[tuple[int, str]], trajectories: list[Trajectory]):
        self.path = path
        self.bad_lines = bad_lines
        self.trajectories = trajectories
        first = "; ".join(f"line {n}: {why}" for n, why in bad_lines[:3])
        more = f" (and {len(bad_lines) - 3} more)" if len(bad_lines) > 3 else ""
        super().__init__(
            f"{path}: {len(bad_lines)} unreadable line(s): {first}{more}; "
            f"{len(trajectories)} trajectories were read and are in .trajectories"
        )


def write_trajectories(
    path: str | os.PathLike[str], trajectories: Iterable[Trajectory], append: bool = False
) -> int:
    """Write one JSON object per line; returns the number written. Floats round-trip exactly."""
    n = 0
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for t in trajectories:
            f.write(json.dumps(t.to_dict(), ensure_ascii=False))
            f.write("\n")
            n += 1
    return n


def iter_trajectories(path: str | os.PathLike[str]) -> Iterator[tuple[int, Trajectory | Exception]]:
    """Yield (line number, trajectory or the error for that line), skipping blank lines."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, Trajectory.from_dict(json.loads(line))
            except (ValueError, TypeError) as e:
                yield lineno, e


def read_trajectories(path: str | os.PathLike[str], errors: str = "raise") -> list[Trajectory]:
    """Read a JSONL trajectory file.

    errors="raise": any bad line raises TrajectoryFileError naming the file and the line(s),
    after the whole file was read; the good trajectories ride along on the exception.
    errors="skip": bad lines are reported with a warning and the good ones returned.
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    good: list[Trajectory] = []
    bad: list[tuple[int, str]] = []
    for lineno, item in iter_trajectories(path):
        if isinstance(item, Exception):
            bad.append((lineno, str(item) or type(item).__name__))
        else:
            good.append(item)
    if bad:
        err = TrajectoryFileError(os.fspath(path), bad, good)
        if errors == "raise":
            raise err
        warnings.warn(str(err), stacklevel=2)
    return good


# ----------------------------------------------------------------------------- StepBatch

_WS = re.compile(r"\s+")


def normalize_action(action: str) -> str:
    """Lower-case, trimmed, single-spaced: the form under which two actions count as equal."""
    return _WS.sub(" ", action.strip().lower())


def stable_hash(text: str) -> int:
    """A 64-bit hash of a string that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little", signed=True
    )


class _Hasher:
    """Memoised stable_hash: observations repeat a lot within a batch."""

    def __init__(self) -> None:
        self.cache: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        h = self.cache.get(text)
        if h is None:
            h = self.cache[text] = stable_hash(text)
        return h


def _nodes(trajs: list[Trajectory], starts: np.ndarray) -> np.ndarray:
    """The ``node`` column: a sampled step's row index, given to it and to every copy of it. A copy
    whose original is not in the batch (nor the original's own original) stands for it."""
    row_of = {
        f"{t.traj_id}#{k}": int(starts[i]) + k for i, t in enumerate(trajs) for k in range(len(t.steps))
    }
    node = np.arange(sum(len(t.steps) for t in trajs), dtype=np.int64)
    first_copy: dict[str, int] = {}
    for i, t in enumerate(trajs):
        for k, s in enumerate(t.steps):
            ref = s.info.get("copy_of")
            if ref is None:
                continue
            r = int(starts[i]) + k
            if not isinstance(ref, str):
                raise ValueError(
                    f"trajectory {t.traj_id!r} step {k}: info['copy_of'] must be a str, got {ref!r}"
                )
            target = row_of.get(ref)
            node[r] = target if target is not None else first_copy.setdefault(ref, r)
    return node


@dataclass(frozen=True, eq=False)
class StepBatch:
    """Columnar view of many trajectories: numpy arrays with one entry per step row.

    Rows produced by ``from_trajectories`` are grouped by trajectory and ordered by turn, but
    nothing downstream relies on positions: every row carries its ids (``traj_idx`` indexes
    ``traj_names``, ``group_idx`` indexes ``group_names``), and ``take`` reorders rows keeping
    them. Optional columns are ``None`` when no step provided them.
    """

    traj_idx: np.ndarray  # int64[R]
    group_idx: np.ndarray  # int64[R]
    turn: np.ndarray  # int64[R]
    reward: np.ndarray  # float64[R], env reward after the step
    valid: np.ndarray  # bool[R]
    action_key: np.ndarray  # int64[R], hash of the normalised action
    outcome: np.ndarray  # float64[R], the trajectory's outcome on each of its rows
    success: np.ndarray  # bool[R]
    last: np.ndarray  # bool[R], last row of its trajectory
    done: np.ndarray  # bool[R], last row of a terminated trajectory
    truncated: np.ndarray  # bool[R], the row's trajectory was truncated
    traj_names: np.ndarray  # object[N], traj_id of each traj_idx
    group_names: np.ndarray  # object[G], group_id of each group_idx
    task_names: np.ndarray  # object[G], task_id of each group_idx
    action: np.ndarray  # object[R]
    state_key: np.ndarray | None = None  # int64[R], stable hash of Step.state_key
    state_text: np.ndarray | None = None  # object[R], Step.state_key itself
    turn_reward: np.ndarray | None = None  # float64[R]; 0.0 where a step had none
    tool_call: np.ndarray | None = None  # bool[R], from info["tool_call"]: the env returned a tool result
    switch: np.ndarray | None = None  # bool[R], info["switch"] == "SWITCH" (HiPER)
    subgoal: np.ndarray | None = None  # object[R], info["subgoal"] (HiPER)
    response_ids: np.ndarray | None = None  # object[R], int64 array per row: Step.response_ids (rollout)
    # int64[R]: one id per sampled step, shared by its copies in branched trajectories (info["copy_of"])
    node: np.ndarray | None = None
    # bool[R]: the row's trajectory only estimates a value (chain rollouts, Trajectory.info["value_only"])
    value_only: np.ndarray | None = None

    def column(self, name: str) -> np.ndarray:
        """An optional column that must be present (``state_key``, ``turn_reward``, ...): estimators
        read their declared inputs through this, so a batch without one fails by name."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"this StepBatch has no {name!r} column: no step provided it")
        return value

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_trajectories(cls, trajectories: Iterable[Trajectory | TrajectoryGroup]) -> StepBatch:
        """Flatten trajectories (or groups of them) into rows; trajectories with no steps are skipped."""
        trajs: list[Trajectory] = []
        for t in trajectories:
            if isinstance(t, TrajectoryGroup):
                trajs.extend(t.trajectories)
            else:
                trajs.append(t)
        trajs = [t for t in trajs if t.steps]
        seen: set[str] = set()
        for t in trajs:
            if t.traj_id in seen:
                raise ValueError(
                    f"duplicate traj_id {t.traj_id!r}: every trajectory in a batch needs its own id"
                )
            seen.add(t.traj_id)

        group_index: dict[str, int] = {}
        group_task: list[str] = []
        for t in trajs:
            if t.group_id not in group_index:
                group_index[t.group_id] = len(group_index)
                group_task.append(t.task_id)
            elif group_task[group_index[t.group_id]] != t.task_id:
                raise ValueError(
                    f"group {t.group_id!r} mixes tasks {group_task[group_index[t.group_id]]!r} and {t.task_id!r}"
                )

        lengths = np.array([len(t.steps) for t in trajs], dtype=np.int64)
        n_rows = int(lengths.sum())
        traj_idx = np.repeat(np.arange(len(trajs), dtype=np.int64), lengths)
        starts = (
            np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            if len(trajs)
            else np.zeros(0, np.int64)
        )
        turn = np.arange(n_rows, dtype=np.int64) - np.repeat(starts, lengths)
        last = np.zeros(n_rows, dtype=bool)
        last[np.cumsum(lengths) - 1] = True

        steps = [s for t in trajs for s in t.steps]
        hasher = _Hasher()
        reward = np.fromiter((s.reward for s in steps), np.float64, n_rows)
        valid = np.fromiter((bool(s.valid) for s in steps), bool, n_rows)
        action = np.empty(n_rows, dtype=object)
        action[:] = [s.action for s in steps]
        action_key = np.fromiter((hasher(normalize_action(a)) for a in action), np.int64, n_rows)

        state_key = state_text = None
        if any(s.state_key is not None for s in steps):
            state_text = np.empty(n_rows, dtype=object)
            state_text[:] = [s.state_key for s in steps]
            # A step without a state key never shares an anchor group: give it a private key.
            state_key = np.fromiter(
                (
                    hasher(k) if k is not None else stable_hash(f"\0no-state\0{r}")
                    for r, k in enumerate(state_text)
                ),
                np.int64,
                n_rows,
            )

        turn_reward = None
        if any(s.turn_reward is not None for s in steps):
            turn_reward = np.fromiter(
                (0.0 if s.turn_reward is None else s.turn_reward for s in steps), np.float64, n_rows
            )

        tool_call = switch = subgoal = None
        if any("tool_call" in s.info for s in steps):
            tool_call = np.fromiter((bool(s.info.get("tool_call", False)) for s in steps), bool, n_rows)
        if any("switch" in s.info for s in steps):
            switch = np.fromiter(
                (str(s.info.get("switch", "KEEP")).strip().upper() == "SWITCH" for s in steps), bool, n_rows
            )
        if any("subgoal" in s.info for s in steps):
            subgoal = np.empty(n_rows, dtype=object)
            subgoal[:] = [str(s.info.get("subgoal") or "") for s in steps]

        response_ids = None
        if any(s.response_ids is not None for s in steps):
            # Filled one by one: equal-length lists would otherwise become a 2-D array.
            response_ids = np.empty(n_rows, dtype=object)
            for r, s in enumerate(steps):
                response_ids[r] = np.asarray(s.response_ids or (), dtype=np.int64)

        node = None
        if any("copy_of" in s.info for s in steps):
            node = _nodes(trajs, starts)
        value_only = None
        if any("value_only" in t.info for t in trajs):
            per_traj_value = np.array([bool(t.info.get("value_only", False)) for t in trajs], dtype=bool)
            value_only = per_traj_value[traj_idx]

        per_traj_group = np.array([group_index[t.group_id] for t in trajs], dtype=np.int64)
        per_traj_outcome = np.array([t.outcome for t in trajs], dtype=np.float64)
        per_traj_success = np.array([bool(t.success) for t in trajs], dtype=bool)
        per_traj_term = np.array([bool(t.terminated) for t in trajs], dtype=bool)
        per_traj_trunc = np.array([bool(t.truncated) for t in trajs], dtype=bool)

        traj_names = np.empty(len(trajs), dtype=object)
        traj_names[:] = [t.traj_id for t in trajs]
        group_names = np.empty(len(group_index), dtype=object)
        group_names[:] = list(group_index)
        task_names = np.empty(len(group_task), dtype=object)
        task_names[:] = group_task

        return cls(
            traj_idx=traj_idx,
            group_idx=per_traj_group[traj_idx],
            turn=turn,
            reward=reward,
            valid=valid,
            action_key=action_key,
            outcome=per_traj_outcome[traj_idx],
            success=per_traj_success[traj_idx],
            last=last,
            done=last & per_traj_term[traj_idx],
            truncated=per_traj_trunc[traj_idx],
            traj_names=traj_names,
            group_names=group_names,
            task_names=task_names,
            action=action,
            state_key=state_key,
            state_text=state_text,
            turn_reward=turn_reward,
            tool_call=tool_call,
            switch=switch,
            subgoal=subgoal,
            response_ids=response_ids,
            node=node,
            value_only=value_only,
        )

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return int(self.traj_idx.shape[0])

    @property
    def num_rows(self) -> int:
        return len(self)

    @property
    def num_trajectories(self) -> int:
        return int(self.traj_names.shape[0])

    @property
    def num_groups(self) -> int:
        return int(self.group_names.shape[0])

    @property
    def traj_id(self) -> np.ndarray:
        """object[R]: the traj_id of each row."""
        return self.traj_names[self.traj_idx]

    @property
    def group_id(self) -> np.ndarray:
        """object[R]: the group_id of each row."""
        return self.group_names[self.group_idx]

    @property
    def task_id(self) -> np.ndarray:
        """object[R]: the task_id of each row."""
        return self.task_names[self.group_idx]

    def row_columns(self) -> list[str]:
        """Names of the per-row columns (present ones only)."""
        return [
            f.name
            for f in fields(self)
            if f.name not in ("traj_names", "group_names", "task_names") and getattr(self, f.name) is not None
        ]

    def take(self, rows: Sequence[int] | np.ndarray) -> StepBatch:
        """A batch of the given rows, in the given order; ids and name tables are kept."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = {name: getattr(self, name)[rows] for name in self.row_columns()}
        return StepBatch(
            **cols, traj_names=self.traj_names, group_names=self.group_names, task_names=self.task_names
        )

    def canonical_order(self) -> np.ndarray:
        """Row permutation that groups rows by trajectory index and sorts them by turn."""
        return np.lexsort((self.turn, self.traj_idx))

    def is_canonical(self) -> bool:
        """True when rows are grouped by trajectory (ascending index) and ordered by turn."""
        if len(self) < 2:
            return True
        same = self.traj_idx[1:] == self.traj_idx[:-1]
        return bool(
            np.all(self.traj_idx[1:] >= self.traj_idx[:-1])
            and np.all(self.turn[1:][same] > self.turn[:-1][same])
        )

    def summary(self) -> dict[str, float]:
        """Batch-level figures for logs: rows, trajectories, groups, success and invalid rates."""
        first = np.unique(self.traj_idx, return_index=True)[1]
        return {
            "rows": float(len(self)),
            "trajectories": float(first.size),
            "groups": float(np.unique(self.group_idx).size),
            "success_rate": float(self.success[first].mean()) if first.size else math.nan,
            "outcome_mean": float(self.outcome[first].mean()) if first.size else math.nan,
            "invalid_rate": float(1.0 - self.valid.mean()) if len(self) else math.nan,
        }
