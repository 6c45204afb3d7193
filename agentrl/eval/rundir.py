"""Reading a run directory: the files training and evaluation leave behind, each one optional.

The contract: ``trajectories*.jsonl`` at the top, ``trajectories/*.jsonl`` (training rollouts
per iteration) and ``eval/*.jsonl`` (episodes), ``metrics.jsonl``
(one JSON object per training iteration), ``report.json`` (evaluation summary), ``summary.json``
(``{"before": {...}, "after": {...}}``) and ``config.yaml``. The viewer and the report both read
runs through here, so a missing file is an empty result and a corrupt line is reported by file
and line number instead of hiding the rest.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.types import Trajectory, TrajectoryFileError, read_trajectories

__all__ = [
    "TrajectorySource",
    "check_run_dir",
    "finite",
    "read_json_object",
    "read_records",
    "read_sources",
    "task_type",
    "trajectory_files",
]


@dataclass
class TrajectorySource:
    """The episodes of one JSONL file and the lines of it that could not be read."""

    path: Path
    trajectories: list[Trajectory] = field(default_factory=list)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)


def check_run_dir(run_dir: str | Path) -> Path:
    """The run directory as a Path; a clear error when it does not exist or is a file."""
    path = Path(run_dir)
    if not path.exists():
        raise FileNotFoundError(f"run directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{str(path)!r} is a file; pass the run directory that contains it")
    return path


def trajectory_files(run_dir: str | Path) -> list[Path]:
    """All episode files of a run, each kind sorted by name: ``trajectories*.jsonl`` at the top
    (an evaluation run), ``trajectories/*.jsonl`` (a training run's rollouts, one file per
    iteration), then ``eval/*.jsonl``."""
    root = Path(run_dir)
    return [
        p
        for pattern in ("trajectories*.jsonl", "trajectories/*.jsonl", "eval/*.jsonl")
        for p in sorted(root.glob(pattern))
        if p.is_file()
    ]


def read_sources(paths: list[Path]) -> list[TrajectorySource]:
    """Every file's readable trajectories; unreadable lines (or files) are listed, not raised."""
    sources = []
    for path in paths:
        try:
            sources.append(TrajectorySource(path, read_trajectories(path)))
        except TrajectoryFileError as e:
            sources.append(TrajectorySource(path, e.trajectories, e.bad_lines))
        except OSError as e:
            sources.append(TrajectorySource(path, [], [(0, f"cannot read the file: {e}")]))
    return sources


def read_records(path: Path) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """JSON objects of a JSONL file (e.g. metrics.jsonl) and the (line, reason) of bad lines."""
    if not path.is_file():
        return [], []
    records: list[dict[str, Any]] = []
    bad: list[tuple[int, str]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                bad.append((lineno, f"not JSON: {e}"))
                continue
            if isinstance(obj, dict):
                records.append(obj)
            else:
                bad.append((lineno, f"expected a JSON object, got {type(obj).__name__}"))
    return records, bad


def read_json_object(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(object, None) for a readable JSON object file, (None, reason) otherwise, (None, None) if absent."""
    if not path.is_file():
        return None, None
    try:
        obj = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except ValueError as e:
        return None, f"{path.name} is not valid JSON: {e}"
    if not isinstance(obj, dict):
        return None, f"{path.name} should hold a JSON object, got {type(obj).__name__}"
    return obj, None


def task_type(traj: Trajectory) -> str:
    """The task family of an episode, for per-type figures.

    ``info["task_type"]`` of the trajectory or of its first step when an env recorded it (ALFWorld
    does); else the ALFRED-style prefix of the task id before the first "-" (``pick_and_place_simple-
    Apple-...``); else "all".
    """
    for info in [traj.info] + ([traj.steps[0].info] if traj.steps else []):
        value = info.get("task_type") if isinstance(info, dict) else None
        if isinstance(value, str) and value:
            return value
    head = traj.task_id.split("/", 1)[0]
    return head.split("-", 1)[0] if "-" in head else "all"


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (bools excluded), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
