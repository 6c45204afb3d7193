"""Metrics sinks: one JSON object per iteration in ``metrics.jsonl``, plus TensorBoard, W&B and MLflow.

``metrics.jsonl`` is always written. TensorBoard (``logging.tensorboard``, on by default) is used
when ``tensorboard`` imports and silently skipped otherwise. W&B (``logging.wandb.enabled``) and
MLflow (``logging.mlflow.enabled``) are used only when asked for, and then a missing package fails
at start with :class:`TrackingNotInstalledError` naming the pip extra (``agentrl[tracking]``).

The trackers get each iteration's finite numbers at ``step = iteration`` (NaN/inf, bools and
strings are left out; ``metrics.jsonl`` keeps every key, NaN as null) and the resolved config (W&B
config; MLflow params, flattened to dotted keys). ``close()`` ends the runs as finished, or as
failed when it runs while an exception propagates (the loop's ``finally``). The run ids are kept in
``tracking.json`` in the run directory, so a resumed run (same directory, same config) continues
the same W&B and MLflow runs; TensorBoard drops the events of rewound iterations (``purge_step``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import numbers
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from agentrl.config import LoggingConfig, TrainConfig

__all__ = ["MetricsWriter", "TrackingNotInstalledError", "read_metrics", "scalars"]

STATE_FILE = "tracking.json"
Status = Literal["finished", "failed", "killed"]


class TrackingNotInstalledError(ImportError):
    """A tracker the config enables is not installed."""


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's bool is no bool subclass


def _clean(value: Any) -> Any:
    """A JSON-ready value: numpy scalars as Python numbers, NaN/inf (which JSON lacks) as null."""
    if _is_bool(value):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        f = float(value)
        return f if math.isfinite(f) else None
    return value


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a record, without ``iteration``: what TensorBoard, W&B and MLflow get."""
    out = {}
    for k, v in record.items():
        if k == "iteration" or _is_bool(v) or not isinstance(v, numbers.Real):
            continue
        f = float(v)
        if math.isfinite(f):
            out[k] = f
    return out


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"optim.lr": "0.0001", ...} (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v)
    return out


def _config_hash(config: Mapping[str, Any] | None) -> str | None:
    """A digest of the config without ``out_dir`` (a moved run directory is the same run)."""
    if config is None:
        return None
    body = {k: v for k, v in config.items() if k != "out_dir"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _require(module: str, package: str, section: str) -> ModuleType:
    """Import a tracker's package or fail with the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise TrackingNotInstalledError(
            f"logging.{section}.enabled is true but {package!r} cannot be imported ({e}); "
            f"install it with: pip install 'agentrl[tracking]' (or pip install {package}), "
            f"or set logging.{section}.enabled=false"
        ) from e


class _WandbSink:
    """One W&B run (a run of its own: ``reinit="create_new"`` leaves any other active run alone)."""

    name, module, package = "wandb", "wandb", "wandb"

    def __init__(
        self,
        settings: LoggingConfig.Wandb,
        run_dir: Path,
        config: Mapping[str, Any] | None,
        previous: Mapping[str, Any] | None,
        key: dict[str, Any],
    ) -> None:
        wandb = _require(self.module, self.package, self.name)
        resume_id = previous.get("id") if previous and previous.get("key") == key else None
        self.run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            mode=settings.mode,
            name=settings.name or run_dir.name,
            tags=list(settings.tags) or None,
            dir=str(run_dir),
            config=dict(config) if config is not None else None,
            id=resume_id,
            resume="allow" if resume_id else None,
            reinit="create_new",
            allow_val_change=bool(resume_id),
        )
        self.state = {"id": self.run.id, "key": key}

    def log(self, values: dict[str, float], step: int) -> None:
        if values:
            self.run.log(values, step=step)

    def close(self, status: Status) -> None:
        self.run.finish(exit_code=0 if status == "finished" else 1)


class _MlflowSink:
    """One MLflow run through ``MlflowClient`` (no global active run, so user code's own runs are untouched)."""

    name, module, package = "mlflow", "mlflow", "mlflow-skinny"
    PARAM_MAX = 500  # the value limit of older MLflow servers (newer allow 6000)
    BATCH = 100  # params per log_batch call that every MLflow server accepts

    def __init__(
        self,
        settings: LoggingConfig.Mlflow,
        run_dir: Path,
        config: Mapping[str, Any] | None,
        previous: Mapping[str, Any] | None,
        key: dict[str, Any],
    ) -> None:
        _require(self.module, self.package, self.name)
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self._metric = Metric
        self.client = MlflowClient(tracking_uri=settings.tracking_uri)
        key = {**key, "tracking_uri": self.client.tracking_uri}
        run_id: str | None = None
        if previous and previous.get("key") == key:
            try:
                run = self.client.get_run(previous["run_id"])
            except MlflowException:
                run = None
            if run is not None and run.info.lifecycle_stage == "active":
                run_id = run.info.run_id
                self.client.update_run(run_id, status="RUNNING")
        if run_id is None:
            experiment = self.client.get_experiment_by_name(settings.experiment)
            if experiment is not None and experiment.lifecycle_stage != "active":
                raise ValueError(
                    f"MLflow experiment {settings.experiment!r} at {self.client.tracking_uri} is deleted; restore it or set "
                    "logging.mlflow.experiment to another name"
                )
            exp_id = (
                experiment.experiment_id
                if experiment is not None
                else self.client.create_experiment(settings.experiment)
            )
            run = self.client.create_run(
                exp_id,
                run_name=settings.run_name or run_dir.name,
                tags={"agentrl.run_dir": str(run_dir.resolve())},
            )
            run_id = run.info.run_id
            params = [Param(k, v[: self.PARAM_MAX]) for k, v in _flatten(config or {}).items()]
            for s in range(0, len(params), self.BATCH):
                self.client.log_batch(run_id, params=params[s : s + self.BATCH])
        self.run_id: str = run_id
        self.state = {"run_id": self.run_id, "key": key}

    def log(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(k, v, now, step) for k, v in values.items()]
        for s in range(0, len(metrics), 1000):  # MLflow's limit of metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[s : s + 1000])

    def close(self, status: Status) -> None:
        self.client.set_terminated(self.run_id, status=status.upper())


class MetricsWriter:
    """Appends records to ``metrics.jsonl`` and mirrors their scalars to TensorBoard, W&B and MLflow.

    ``wandb`` / ``mlflow``: that section of the logging config; the tracker is used when it is given
    and ``enabled``. ``config``: the resolved config (a plain dict) the trackers record. Trackers
    start here, so a missing package or a bad tracking URI fails before any training.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool = True,
        wandb: LoggingConfig.Wandb | None = None,
        mlflow: LoggingConfig.Mlflow | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self.tb: Any = None
        self._tb_class: Any = None
        self._purge_step: int | None = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb_class = SummaryWriter
            except ImportError:
                self._tb_class = None
        wanted: list[tuple[Any, Any]] = [
            (cls, s) for cls, s in ((_WandbSink, wandb), (_MlflowSink, mlflow)) if s is not None and s.enabled
        ]
        for cls, _ in wanted:  # every missing package is named before any run starts
            _require(cls.module, cls.package, cls.name)
        state_path = self.run_dir / STATE_FILE
        previous = json.loads(state_path.read_text()) if state_path.exists() else {}
        digest = _config_hash(config)
        self.sinks: list[Any] = []
        try:
            for cls, settings in wanted:
                key = {**settings.model_dump(include={"project", "entity", "experiment"}), "config": digest}
                self.sinks.append(cls(settings, self.run_dir, config, previous.get(cls.name), key))
        except BaseException:
            self._close_sinks("failed")
            raise
        if self.sinks:
            state_path.write_text(json.dumps({s.name: s.state for s in self.sinks}, indent=1))
        self._closed = False

    @classmethod
    def from_config(cls, run_dir: str | Path, cfg: TrainConfig) -> MetricsWriter:
        """The writer a training config asks for (``cfg.logging``), recording the resolved config."""
        log = cfg.logging
        return cls(
            run_dir,
            tensorboard=log.tensorboard,
            wandb=log.wandb,
            mlflow=log.mlflow,
            config=cfg.model_dump(mode="json"),
        )

    def _tensorboard(self) -> Any:
        """The TensorBoard writer, opened on first use (with ``purge_step`` after a rewind)."""
        if self.tb is None and self._tb_class is not None:
            self.tb = self._tb_class(log_dir=str(self.run_dir / "tensorboard"), purge_step=self._purge_step)
        return self.tb

    def truncate_to(self, iteration: int) -> None:
        """Keep only records of iterations before ``iteration`` (a resumed run rewrites the rest).

        TensorBoard discards its events from ``iteration`` on. W&B and MLflow cannot delete logged
        points: an iteration logged before a crash and again after the resume appears twice in
        MLflow's history, and W&B keeps what its server accepts for a step it has already seen.
        """
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        self._purge_step = iteration
        if not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if r.get("iteration", -1) < iteration]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` to metrics.jsonl and log its scalars at step ``record["iteration"]``."""
        clean = {k: _clean(v) for k, v in record.items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
        values = scalars(record)
        step = int(record.get("iteration", 0))
        tb = self._tensorboard()
        if tb is not None:
            for k, v in values.items():
                tb.add_scalar(k, v, step)
            tb.flush()
        for sink in self.sinks:
            sink.log(values, step)

    def _close_sinks(self, status: Status) -> None:
        """End every tracker run; the first failure is raised after all were tried, unless an error is propagating."""
        errors = []
        for sink in self.sinks:
            try:
                sink.close(status)
            except Exception as e:  # one tracker failing to close must not leave the others open
                errors.append((sink.name, e))
        self.sinks = []
        if not errors:
            return
        if sys.exc_info()[0] is not None:
            for name, err in errors:
                warnings.warn(f"closing the {name} run failed: {err}", RuntimeWarning, stacklevel=3)
            return
        raise RuntimeError(f"closing the {errors[0][0]} run failed: {errors[0][1]}") from errors[0][1]

    def close(self, status: Status | None = None) -> None:
        """Flush TensorBoard and end the tracker runs (idempotent).

        ``status`` None: "failed" when called while an exception propagates (``finally`` after an
        error; "killed" for Ctrl-C), else "finished".
        """
        if self._closed:
            return
        self._closed = True
        if status is None:
            kind = sys.exc_info()[0]
            status = (
                "finished" if kind is None else "killed" if issubclass(kind, KeyboardInterrupt) else "failed"
            )
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        self._close_sinks(status)

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self.close(None if kind is None else "killed" if issubclass(kind, KeyboardInterrupt) else "failed")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (a torn last line from a killed run is ignored)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
