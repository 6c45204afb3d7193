"""Metrics sinks for real: TensorBoard event files, a W&B offline run, an MLflow run in a sqlite store.

W&B runs in offline mode (no network): its local ``run-<id>.wandb`` file is read back record by
record. MLflow writes to a sqlite database under the test's tmp dir and is queried with
MlflowClient. A missing package is simulated by putting None in ``sys.modules`` for it (Python
then refuses the import), since the packages are installed here.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agentrl.config import TrainConfig, config_from_dict
from agentrl.trainers.metrics import MetricsWriter, TrackingNotInstalledError, read_metrics, scalars

RECORDS = [
    {
        "iteration": 0,
        "success_rate": 0.25,
        "loss": 1.5,
        "invalid_rate": float("nan"),
        "note": "warmup",
        "ok": True,
    },
    {
        "iteration": 1,
        "success_rate": 0.5,
        "loss": np.float32(0.75),
        "invalid_rate": 0.1,
        "errors": np.int64(2),
    },
    {"iteration": 2, "success_rate": 0.75, "loss": float("inf"), "invalid_rate": 0.0},
]


def _config(tmp_path: Path, lr: float = 3e-4, **logging: Any) -> TrainConfig:
    return config_from_dict(
        {"out_dir": str(tmp_path / "run"), "optim": {"lr": lr}, "logging": {"tensorboard": False, **logging}}
    )


def test_scalars_keep_finite_numbers_only() -> None:
    assert scalars(RECORDS[0]) == {"success_rate": 0.25, "loss": 1.5}
    assert scalars(RECORDS[1]) == {"success_rate": 0.5, "loss": 0.75, "invalid_rate": 0.1, "errors": 2.0}
    assert scalars({"iteration": 3, "flag": np.bool_(True), "x": np.float64("nan"), "y": -np.inf}) == {}


def test_jsonl_keeps_every_key_with_nan_as_null(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        for r in RECORDS:
            w.write(r)
    got = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["iteration"] for r in got] == [0, 1, 2]
    assert got[0]["invalid_rate"] is None and got[0]["note"] == "warmup" and got[2]["loss"] is None
    assert not (tmp_path / "tracking.json").exists()


# ----------------------------------------------------------------------------- TensorBoard


def _tb_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_hold_the_scalars_and_a_resume_rewrites_rewound_steps(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path) as w:
        for r in RECORDS:
            w.write(r)
    got = _tb_scalars(tmp_path / "tensorboard")
    assert set(got) == {"success_rate", "loss", "invalid_rate", "errors"}
    assert got["success_rate"] == [(0, 0.25), (1, 0.5), (2, 0.75)]
    assert got["loss"] == [(0, 1.5), (1, 0.75)]  # inf skipped
    assert [s for s, _ in got["invalid_rate"]] == [1, 2]  # NaN skipped
    with MetricsWriter(tmp_path) as w:  # resumed from the checkpoint after iteration 0
        w.truncate_to(1)
        w.write({"iteration": 1, "success_rate": 0.125})
    got = _tb_scalars(tmp_path / "tensorboard")
    assert got["success_rate"] == [(0, 0.25), (1, 0.125)]
    assert [r["iteration"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1]


def test_tensorboard_missing_is_skipped_silently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated: None in sys.modules makes ``import torch.utils.tensorboard`` fail."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with MetricsWriter(tmp_path) as w:
        w.write(RECORDS[0])
    assert not (tmp_path / "tensorboard").exists()
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["success_rate"] == 0.25


# ----------------------------------------------------------------------------- missing trackers


@pytest.mark.parametrize(
    "section, module, package", [("wandb", "wandb", "wandb"), ("mlflow", "mlflow", "mlflow-skinny")]
)
def test_enabled_tracker_not_installed_fails_at_start_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str, module: str, package: str
) -> None:
    """Simulated: None in sys.modules makes the tracker's import fail as if it were not installed."""
    monkeypatch.setitem(sys.modules, module, None)
    cfg = _config(tmp_path, **{section: {"enabled": True}})
    with pytest.raises(TrackingNotInstalledError) as e:
        MetricsWriter.from_config(tmp_path / "run", cfg)
    msg = str(e.value)
    assert f"logging.{section}.enabled is true" in msg
    assert "pip install 'agentrl[tracking]'" in msg and f"pip install {package}" in msg


def test_a_missing_tracker_fails_before_any_other_run_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulated missing mlflow (None in sys.modules): no W&B run may have been created."""
    monkeypatch.setitem(sys.modules, "mlflow", None)
    cfg = _config(tmp_path, wandb={"enabled": True, "mode": "offline"}, mlflow={"enabled": True})
    with pytest.raises(TrackingNotInstalledError, match="mlflow"):
        MetricsWriter.from_config(tmp_path / "run", cfg)
    assert not (tmp_path / "run" / "wandb").exists()
    assert not (tmp_path / "run" / "tracking.json").exists()


def test_disabled_trackers_are_not_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated: both trackers 'not installed'; with enabled=false nothing asks for them."""
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    cfg = _config(tmp_path, wandb={"mode": "offline"}, mlflow={"tracking_uri": "sqlite:///x.db"})
    with MetricsWriter.from_config(tmp_path / "run", cfg) as w:
        w.write(RECORDS[0])
    assert w.sinks == []


# ----------------------------------------------------------------------------- W&B (offline)


def _wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a ``.wandb`` file (LevelDB log format: 32 KiB blocks, 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, out, block = 7, b"", [], 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def _wandb_run(run_dir: Path, run_id: str) -> dict[str, Any]:
    """History (step -> values), config and exit code of every local run dir of ``run_id``, oldest first.

    W&B's service process writes the run file; on a loaded machine its last records (the exit
    record) can land shortly after ``finish()`` returns, so a file without one is read again for
    up to 30 s before its exit code counts as missing."""
    runs = []
    for d in sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}")):
        records = _wandb_records(d / f"run-{run_id}.wandb")
        deadline = time.monotonic() + 30
        while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.monotonic() < deadline:
            time.sleep(0.5)
            records = _wandb_records(d / f"run-{run_id}.wandb")
        history, config, exit_code = {}, {}, None
        for rec in records:
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                history[items.pop("_step")] = {k: v for k, v in items.items() if not k.startswith("_")}
            elif kind == "run":
                config = {u.key: json.loads(u.value_json) for u in rec.run.config.update}
            elif kind == "exit":
                exit_code = rec.exit.exit_code
        runs.append({"history": history, "config": config, "exit_code": exit_code})
    return {"runs": runs}


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep W&B's settings and caches inside the test's tmp dir and its console output quiet."""
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)


@pytest.mark.usefixtures("wandb_env")
def test_wandb_offline_run_has_config_metrics_and_resumes_after_a_failure(tmp_path: Path) -> None:
    cfg = _config(tmp_path, wandb={"enabled": True, "mode": "offline", "tags": ["test"]})
    run_dir = tmp_path / "run"
    w = MetricsWriter.from_config(run_dir, cfg)
    with pytest.raises(RuntimeError, match="rollout died"):
        try:
            for r in RECORDS[:2]:
                w.write(r)
            raise RuntimeError("rollout died")
        finally:
            w.close()
    run_id = json.loads((run_dir / "tracking.json").read_text())["wandb"]["id"]
    w = MetricsWriter.from_config(run_dir, cfg)  # the same command again: the same W&B run
    try:
        w.truncate_to(1)
        for r in RECORDS[1:]:
            w.write(r)
    finally:
        w.close()
    assert json.loads((run_dir / "tracking.json").read_text())["wandb"]["id"] == run_id
    first, second = _wandb_run(run_dir, run_id)["runs"]
    assert first["exit_code"] == 1 and second["exit_code"] == 0
    assert first["config"]["optim"]["lr"] == 3e-4 and first["config"]["out_dir"] == str(run_dir)
    assert first["history"] == {
        0: {"success_rate": 0.25, "loss": 1.5},
        1: {"success_rate": 0.5, "loss": 0.75, "invalid_rate": 0.1, "errors": 2},
    }
    assert second["history"][2] == {"success_rate": 0.75, "invalid_rate": 0.0}
    assert math.isclose(second["history"][1]["loss"], 0.75)


# ----------------------------------------------------------------------------- MLflow (sqlite)


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the module: creating its tables takes MLflow several seconds."""
    return "sqlite:///" + str(tmp_path_factory.mktemp("mlflow") / "mlflow.db")


def _history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_mlflow_run_has_params_metric_history_and_status(tmp_path: Path, mlflow_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    cfg = _config(
        tmp_path, mlflow={"enabled": True, "tracking_uri": mlflow_uri, "experiment": "tracking-test"}
    )
    run_dir = tmp_path / "run"
    with MetricsWriter.from_config(run_dir, cfg) as w:
        run_id = w.sinks[0].run_id
        assert MlflowClient(mlflow_uri).get_run(run_id).info.status == "RUNNING"
        for r in RECORDS:
            w.write(r)
    client = MlflowClient(mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "tracking-test"
    assert run.data.params["optim.lr"] == "0.0003" and run.data.params["logging.mlflow.enabled"] == "true"
    assert run.data.params["out_dir"] == str(run_dir)
    assert _history(client, run_id, "success_rate") == [(0, 0.25), (1, 0.5), (2, 0.75)]
    assert _history(client, run_id, "loss") == [(0, 1.5), (1, 0.75)]
    assert _history(client, run_id, "invalid_rate") == [(1, 0.1), (2, 0.0)]
    assert "note" not in run.data.metrics and "ok" not in run.data.metrics

    w = MetricsWriter.from_config(run_dir, cfg)  # resumed: the same run, running again, then failing
    assert w.sinks[0].run_id == run_id and client.get_run(run_id).info.status == "RUNNING"
    with pytest.raises(ValueError):
        try:
            w.write({"iteration": 3, "success_rate": 1.0})
            raise ValueError("update diverged")
        finally:
            w.close()
    assert client.get_run(run_id).info.status == "FAILED"
    assert _history(client, run_id, "success_rate")[-1] == (3, 1.0)

    changed = _config(
        tmp_path, lr=1e-3, mlflow={"enabled": True, "tracking_uri": mlflow_uri, "experiment": "tracking-test"}
    )
    with MetricsWriter.from_config(run_dir, changed) as w:  # another config in the same dir: a new run
        new_id = w.sinks[0].run_id
    assert (
        new_id != run_id and json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"] == new_id
    )
    assert client.get_run(new_id).data.params["optim.lr"] == "0.001"
