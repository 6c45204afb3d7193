"""Data-parallel training on 2 CPU processes (gloo), launched the way users launch it
(``torchrun``, ``accelerate launch``): the same steps as one process, one run directory,
exact resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from agentrl.distributed import SINGLE, Dist
from agentrl.trainers.metrics import read_metrics

WORKER = Path(__file__).with_name("dist_update_worker.py")
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def model_dir(small_maze_model_dir):
    return small_maze_model_dir


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    return {**env, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def test_share_and_gather_are_inverse_and_single_is_a_no_op():
    items = list(range(7))
    shares = [Dist(rank=r, world=3).share(items) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert (
        SINGLE.share(items) == items and SINGLE.gather(items) == items and SINGLE.main and not SINGLE.active
    )
    assert SINGLE.sum_stats({"loss": 1.5}) == {"loss": 1.5}


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    """Hardware stand-in (named as such): torch.cuda reports one GPU while the launcher started 2 processes."""
    from agentrl.distributed import init_distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(
        ValueError, match="process 1 on this machine has no GPU of its own .1 visible.*model.device=cpu"
    ):
        init_distributed("cuda")


def test_one_process_runs_plainly_and_an_unknown_strategy_is_refused():
    from agentrl.trainers.parallel import Parallel, make_parallel

    for strategy in ("ddp", "allreduce", "fsdp"):  # one process: no wrapper, no collective, no padding
        engine = make_parallel(strategy, object(), [], SINGLE)
        assert type(engine) is Parallel and engine.micro_batch_count(5, 2, 5) == 3
    with pytest.raises(ValueError, match="must be one of ddp, allreduce, fsdp, got 'zero3'"):
        make_parallel("zero3", object(), [], SINGLE)


def test_a_run_resumes_under_another_strategy(tmp_path):
    """Every strategy writes the same checkpoint (the replicated adapter, rank 0's optimiser), so
    ``distributed`` is the one section a resume may change."""
    from agentrl.config import dump_config, load_config
    from agentrl.trainers.loop import Trainer

    config = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
    (tmp_path / "config.yaml").write_text(dump_config(load_config(config)))
    for override, changed in (("distributed.strategy=fsdp", []), ("optim.lr=0.5", ["optim"])):
        assert Trainer(load_config(config, [override]), tmp_path)._sections_changed() == changed


@pytest.fixture(scope="module")
def single_process_update(model_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("world1")
    one = subprocess.run(
        [sys.executable, str(WORKER), str(model_dir), str(out)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    return torch.load(out / "ddp-world1-rank0.pt", weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy, engine",
    [
        ("ddp", "ReplicatedDDP"),
        ("allreduce", "Parallel"),
        ("fsdp", "ShardedBase"),
        ("fsdp:always", "ShardedBase"),
    ],
)
def test_two_processes_take_the_single_process_steps(
    model_dir, single_process_update, tmp_path, strategy, engine
):
    """GRPO, GAE (value head), SeeUPO, SPA-RL and UCAS updates on the same batch: 2 gloo processes end
    with the parameters 1 process gets (to float rounding), identical on both ranks, and the same
    statistics, through DDP, the flat all-reduce and FSDP. Minibatches of 5 rows in micro-batches of
    2 give the ranks 2 and 1 micro-batches (3 + 2 rows), and a minibatch of 1 row leaves rank 1
    none (``grpo_empty_share``), so ddp and fsdp run padding passes. ``fsdp:always`` keeps the base
    sharded while the ranks score their shares too (different numbers of passes, kept in step)."""
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            _free_port(),
            str(WORKER),
            str(model_dir),
            str(tmp_path),
            strategy,
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    single = dict(single_process_update)
    name = strategy.replace(":", "-")
    ranks = [torch.load(tmp_path / f"{name}-world2-rank{r}.pt", weights_only=False) for r in range(2)]
    half = (
        "DTensor",
        single["base_weight"][0][1],
        (single["base_weight"][0][1][0] // 2, *single["base_weight"][0][1][1:]),
    )
    for got in ranks:  # sums over buckets; a process without a gradient adds zeros
        assert [g.unique().tolist() for g in got.pop("loose_grads")] == [[2.0], [1.0], [3.0]]
        assert got.pop("engine") == engine
        outside, inside = got.pop("base_weight")
        full = single["base_weight"][0]
        if strategy == "fsdp:always":  # half the rows of each base weight on each process, always
            assert outside == inside == half
        elif strategy == "fsdp":  # sampling, scoring and evaluation see the whole weight; an update half
            assert outside == full and inside == half
        else:
            assert outside == inside == full
    for got in ranks:  # scores of a batch the ranks split unevenly (rank 0: 4 passes, rank 1: 2)
        for a, b in zip(got.pop("odd_scores"), single["odd_scores"], strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    if strategy == "fsdp:always":  # rank 1 ran one-token passes while rank 0 scored its second batch
        assert [got.pop("odd_filler_passes") for got in ranks] == [0, 2]
        assert sum(got.pop("filler_passes") for got in ranks) > 0  # the updates' scoring was uneven too
    for key in ("loose_grads", "engine", "base_weight", "odd_scores"):
        single.pop(key)
    for estimator, want in single.items():
        assert want["moved"] > 1e-3, f"{estimator}: the update did not move the adapter"
        for got in ranks:
            assert (
                got[estimator]["rows"] == want["rows"] == 27
            )  # 3 groups x 3 episodes x up to 3 turns, all rows
            for a, b in zip(got[estimator]["params"], want["params"]):
                # SeeUPO: one update per turn slot with GSPO's 3e-4/4e-4 clip band on sequence ratios, so
                # summation-order rounding compounds over the slots (1.9e-4 with the locked packages;
                # 2.7e-4 through DDP). SPA-RL and GAE: whitened advantages of order 1 on every row (the
                # untrained model fails every episode, so GRPO trains on the small invalid-action penalty
                # only); rounding shows more (5.2e-5 and 1.2e-5 measured; 8.7e-5 through DDP and FSDP)
                atol = {"seeupo": 5e-4, "spa_rl": 2e-4, "gae": 2e-4}.get(estimator, 5e-6)
                torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=lambda m, e=estimator: f"{e}: {m}")
            for k, v in want["stats"].items():
                assert got[estimator]["stats"][k] == pytest.approx(v, rel=1e-4, abs=1e-5), (estimator, k)
        for a, b in zip(ranks[0][estimator]["params"], ranks[1][estimator]["params"]):
            assert torch.equal(a, b)


def _launch(model_dir: Path, out: Path, **extra: str) -> subprocess.Popen:
    overrides = {
        "model.path": str(model_dir),
        "model.device": "cpu",
        "lora.r": 4,
        "lora.alpha": 8,
        "lora.dropout": 0.1,
        "env.kwargs": "{size: 2, n_doors: 1, max_steps: 4, num_tasks: 50}",
        "env.train_tasks.count": 20,
        "env.num_envs": 2,
        "rollout.groups": 3,
        "rollout.group_size": 2,
        "rollout.max_turns": 2,
        "rollout.max_new_tokens": 6,
        "rollout.history_k": 1,
        "optim.iterations": 3,
        "optim.lr": 0.01,
        "logging.tensorboard": "false",
        "algorithm.estimator": "gae",
        "algorithm.minibatch_size": 4,
        "algorithm.micro_batch_size": 2,
        "algorithm.kl_coef": 0.01,
        "model.torch_threads": 1,
        "sft.enabled": "false",
        "eval.enabled": "true",
        "eval.tasks.start": 30,
        "eval.tasks.count": 3,
        "eval.episodes_per_task": 1,
        **extra,
    }
    cmd = [
        str(BIN / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        _free_port(),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "agentrl.cli",
        "train",
        "configs/quickstart.yaml",
        *[f"{k}={v}" for k, v in overrides.items()],
        "--out",
        str(out),
    ]
    return subprocess.Popen(
        cmd,
        env=_env(),
        cwd=Path(__file__).parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _kill_all(proc: subprocess.Popen, marker: str) -> None:
    """kill -9 the launcher and every process of the run (torchrun starts workers in new sessions)."""
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if marker in cmdline and int(pid) != os.getpid():
                os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            continue
    proc.wait()


def _comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("time_") and k != "tokens_per_s"}


@pytest.mark.slow
@pytest.mark.parametrize("strategy, shard", [("ddp", "update"), ("fsdp", "update"), ("fsdp", "always")])
def test_accelerate_launch_trains_on_two_processes_and_resumes_exactly(model_dir, tmp_path, strategy, shard):
    """Rollout, update, evaluation and checkpoints on 2 processes; a run killed with -9 and resumed
    writes the uninterrupted run's records. Under fsdp the sampler and the evaluation generate while
    each process plays its own number of forward passes: with the unsharded model (``update``), or
    with the base sharded throughout (``always``: the processes keep their layer all-gathers in step)."""
    settings = {"distributed.strategy": strategy, "distributed.shard": shard}
    full = _launch(model_dir, tmp_path / "full", **settings)
    out, err = full.communicate(timeout=600)
    assert full.returncode == 0, err[-3000:]
    assert out.count("run directory:") == 1  # only rank 0 speaks
    assert "data-parallel over 2 processes (cpu)" in err and f"with {strategy};" in err
    records = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert all(r["episodes"] == 6 for r in records)  # both ranks' groups are in every record
    if shard == "always":  # the ranks generated different numbers of tokens; the short ones caught up
        assert sum(r["filler_passes"] for r in records) > 0
    else:
        assert "filler_passes" not in records[0]
    ckpt = tmp_path / "full" / "checkpoints" / "iter-000003"
    assert (ckpt / "rng-rank0.pt").exists() and (ckpt / "rng-rank1.pt").exists()
    assert json.loads((tmp_path / "full" / "run.json").read_text())["processes"] == 2
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["before"]["episodes"] == summary["after"]["episodes"] == 3
    assert len((tmp_path / "full" / "eval" / "after.jsonl").read_text().splitlines()) == 3

    killed = tmp_path / "killed"
    proc = _launch(model_dir, killed, **settings)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (killed / "metrics.jsonl").exists() and len(read_metrics(killed / "metrics.jsonl")) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    _kill_all(proc, f"--out {killed}")
    time.sleep(1.0)
    assert len(read_metrics(killed / "metrics.jsonl")) < 3
    resumed = _launch(model_dir, killed, **settings)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    again = read_metrics(killed / "metrics.jsonl")
    assert [_comparable(r) for r in again] == [_comparable(r) for r in records]


@pytest.mark.slow
def test_a_stateful_estimator_keeps_one_state_on_both_ranks(model_dir, tmp_path):
    """SPO's tracker is updated on every rank from the gathered batch; the trainer checks after every
    iteration that the ranks hold the same state (an error otherwise) and rank 0 checkpoints it."""
    run = _launch(
        model_dir,
        tmp_path / "run",
        **{"algorithm.estimator": "spo", "optim.iterations": "2", "eval.enabled": "false"},
    )
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    assert [r["episodes"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [6, 6]
    state = json.loads(
        (tmp_path / "run" / "checkpoints" / "iter-000002" / "estimator_state.json").read_text()
    )
    # 3 groups (3 tasks) per iteration; each visit of a task: alpha + beta <- 0.875 (alpha + beta) + 1
    assert 3 <= len(state["tasks"]) <= 6 and all(a + b > 1.0 for a, b in state["tasks"].values())


@pytest.mark.slow
def test_spo_with_kl_adaptive_rho_measures_one_drift_on_both_ranks_and_resumes_exactly(model_dir, tmp_path):
    """Each rank scores its share of the stored responses and gets every score, so the ranks measure the
    same drift and keep the same tracker (checked every iteration); a run stopped at its checkpoint and
    resumed on 2 processes writes the uninterrupted run's records."""
    opts = {
        "algorithm.estimator": "spo",
        "algorithm.options": "{rho_mode: kl}",
        "env.train_tasks.count": "4",  # 3 draws from 4 tasks per iteration: later iterations revisit
        "eval.enabled": "false",
    }
    run = _launch(model_dir, tmp_path / "full", **opts)
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    records = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert records[0]["drift_first_visit_frac"] == 1.0 and records[0]["drift_mean"] == 0.0
    assert any(r["drift_first_visit_frac"] < 1.0 and r["drift_mean"] > 0.0 for r in records[1:])
    saved = torch.load(
        tmp_path / "full" / "checkpoints" / "iter-000003" / "policy_drift.pt", weights_only=True
    )
    state = json.loads(
        (tmp_path / "full" / "checkpoints" / "iter-000003" / "estimator_state.json").read_text()
    )
    assert set(saved["tasks"]) == set(state["tasks"])

    part = _launch(model_dir, tmp_path / "part", **opts, **{"logging.checkpoint_every": "2"})
    part.communicate(timeout=600)
    (tmp_path / "part" / "checkpoints" / "iter-000003").rename(tmp_path / "part" / "dropped")
    resumed = _launch(model_dir, tmp_path / "part", **opts, **{"logging.checkpoint_every": "2"})
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert [_comparable(r) for r in read_metrics(tmp_path / "part" / "metrics.jsonl")] == [
        _comparable(r) for r in records
    ]


@pytest.mark.slow
def test_sft_on_two_processes_builds_one_tiny_model_and_takes_the_single_process_steps(tmp_path):
    """``agentrl sft`` under torchrun: rank 0 builds the tiny model, both ranks train on shares of
    every batch (5 demonstrations: 3 + 2), and the merged model equals the 1-process one."""
    from safetensors.torch import load_file

    overrides = [
        "model.tiny={vocab_size: 384, layers: 1, hidden: 32, heads: 4, kv_heads: 2, corpus_tasks: 10}",
        "model.torch_threads=1",
        "lora.r=4",
        "lora.alpha=8",
        "env.kwargs={size: 2, n_doors: 1, max_steps: 4, num_tasks: 50}",
        "sft.tasks.count=6",
        "sft.epochs=2",
        "sft.batch_size=5",
        "sft.lr=0.01",
    ]
    cli = ["-m", "agentrl.cli", "sft", "configs/quickstart.yaml", *overrides]
    root = Path(__file__).parents[1]
    one = subprocess.run(
        [sys.executable, *cli, "--out", str(tmp_path / "one")],
        env=_env(),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            _free_port(),
            *cli,
            "--out",
            str(tmp_path / "two"),
        ],
        env=_env(),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("sft model:") == 1 and two.stderr.count("sft epoch 2/2") == 1
    tiny = [load_file(tmp_path / d / "tiny-model" / "model.safetensors") for d in ("one", "two")]
    assert all(torch.equal(tiny[0][k], tiny[1][k]) for k in tiny[0])
    base, got, want = (
        tiny[0],
        *(load_file(tmp_path / d / "sft-model" / "model.safetensors") for d in ("two", "one")),
    )
    assert (
        max(float((want[k] - base[k]).abs().max()) for k in want if k in base) > 1e-3
    )  # SFT moved the weights
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=2e-5, rtol=0)
    losses = [
        [
            json.loads(line)["sft_loss"]
            for line in (tmp_path / d / "sft_metrics.jsonl").read_text().splitlines()
        ]
        for d in ("one", "two")
    ]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


@pytest.mark.slow
def test_eval_on_two_processes_plays_the_single_process_episodes(model_dir, tmp_path):
    """``agentrl eval --policy hf:`` under torchrun: each process plays half the tasks with the seeds
    one process gives them; rank 0's report covers all episodes and equals the 1-process one (greedy)."""
    from agentrl.types import read_trajectories

    args = [
        "-m",
        "agentrl.cli",
        "eval",
        "--env",
        "maze",
        "--policy",
        f"hf:{model_dir}",
        "--episodes",
        "7",
        "--seeds",
        "2",
        "-o",
        "size=2",
        "-o",
        "n_doors=1",
        "-o",
        "num_tasks=50",
        "--max-turns",
        "3",
        "--max-new-tokens",
        "6",
        "--num-envs",
        "2",
    ]
    one = subprocess.run(
        [sys.executable, *args, "--out", str(tmp_path / "one")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            _free_port(),
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("success ") == 1
    reports = [json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two")]
    assert reports[0]["processes"] == 1 and reports[1]["processes"] == 2
    for key in ("success_rate", "ci_low", "ci_high", "episodes", "per_seed", "invalid_rate", "turns_mean"):
        assert reports[1][key] == reports[0][key], key
    assert reports[1]["episodes"] == 14

    def played(d: str) -> list[tuple]:
        trajs = read_trajectories(tmp_path / d / "eval" / "episodes.jsonl")
        return sorted((t.traj_id.split("-")[0], t.task_id, tuple(s.action for s in t.steps)) for t in trajs)

    assert played("two") == played("one")


def test_scripted_eval_refuses_several_processes(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from agentrl.cli import app

    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(
        app, ["eval", "--env", "maze", "--policy", "random", "--episodes", "2", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "only hf: policies evaluate on several processes" in result.output


@pytest.mark.slow
def test_two_processes_sample_through_one_server(model_dir, tmp_path):
    """rollout.server.url with 2 learner processes: rank 0 loads the adapter into ``agentrl serve``
    before every rollout, both ranks sample their groups there, and the served adapter ends as the trained one."""
    from agentrl.policies.hf import HFPolicy, LoraSettings
    from agentrl.policies.openai import OpenAIPolicy
    from agentrl.policies.server import PolicyServer

    with PolicyServer(model_dir, served_model_name="tiny", device="cpu", batch_wait_s=0.01) as server:
        run = _launch(
            model_dir,
            tmp_path / "run",
            **{"rollout.server.url": server.url + "/v1", "optim.iterations": "2", "eval.enabled": "false"},
        )
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]
        records = read_metrics(tmp_path / "run" / "metrics.jsonl")
        assert [r["iteration"] for r in records] == [0, 1]
        assert all(r["episodes"] == 6 and r["tokens_generated"] > 0 for r in records)
        client = OpenAIPolicy(server.url, "agentrl-policy")
        assert "agentrl-policy" in client.models()
        trained = HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu")
        trained.load_adapter(tmp_path / "run" / "checkpoints" / "iter-000002" / "adapter")
        saved = HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu")
        saved.load_adapter(tmp_path / "run" / "served-adapter")
        for a, b in zip(trained.trainable_parameters(), saved.trainable_parameters()):
            assert torch.equal(a, b)
        assert any(
            float(p.detach().abs().max()) > 0 for n, p in trained.model.named_parameters() if "lora_B" in n
        )
