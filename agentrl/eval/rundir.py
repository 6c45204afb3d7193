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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from agentrl.evaluation import current_names, finite, task_type
from agentrl.types import Trajectory, TrajectoryFileError, read_trajectories

if TYPE_CHECKING:
    from agentrl.config import TrainConfig

__all__ = [
    "TrainingRun",
    "TrajectorySource",
    "check_run_dir",
    "find_training_run",
    "finite",
    "read_eval_report",
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


def read_eval_report(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``read_json_object`` for an evaluation report (``report.json``, ``eval_before.json``), with
    keys an older agentrl wrote under other names (``outcome_mean``, ``mean_steps``) read under
    today's (``reward_mean``, ``turns_mean``)."""
    obj, err = read_json_object(path)
    return (None if obj is None else current_names(obj)), err


@dataclass(frozen=True)
class TrainingRun:
    """A training run as ``agentrl eval`` evaluates it: its resolved config, the model its LoRA
    was trained on (``sft-model`` after a warm start, or the only model of an ``agentrl sft`` run;
    ``tiny-model`` on the tiny path, else ``model.path``) and the checkpoint whose adapter is
    evaluated (None: no iteration was saved, so the policy is the model it started from)."""

    run_dir: Path
    config: TrainConfig
    base_model: str
    checkpoint: Path | None

    @property
    def adapter(self) -> Path | None:
        return None if self.checkpoint is None else self.checkpoint / "adapter"


def find_training_run(path: str | Path) -> TrainingRun | None:
    """The training run ``path`` belongs to: a run directory (its newest complete checkpoint), a
    checkpoint ``RUN/checkpoints/iter-N`` or its ``adapter``; None for anything else (a model directory)."""
    from agentrl.config import ConfigError, config_from_dict
    from agentrl.trainers.checkpoint import latest_checkpoint

    p = Path(path)
    if not p.is_dir():
        return None
    if p.name == "adapter" and (p.parent / "state.json").is_file():
        checkpoint: Path | None = p.parent
    elif (p / "adapter").is_dir() and (p / "state.json").is_file():
        checkpoint = p
    elif (p / "config.yaml").is_file() and not (p / "config.json").exists():
        checkpoint = latest_checkpoint(p)
        run_dir = p
    else:
        return None
    if checkpoint is not None:
        if checkpoint.parent.name != "checkpoints":
            return None
        run_dir = checkpoint.parent.parent
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return None
    try:
        data = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{saved} is not valid YAML: {e}") from None
    cfg = config_from_dict(data if isinstance(data, dict) else {}, f" {saved}")
    sft_only = checkpoint is None and (run_dir / "sft-model" / "config.json").is_file()  # agentrl sft's run
    if cfg.sft.enabled or sft_only:
        base = str(run_dir / "sft-model")
    elif cfg.model.path is None:
        base = str(run_dir / "tiny-model")
    else:
        base = cfg.model.path
    return TrainingRun(run_dir, cfg, base, checkpoint)
