"""The training loop: ``train(config_path, out_dir, overrides) -> run dir``.

Per iteration: rollout -> StepBatch -> token samples -> update (the estimator's credit; SeeUPO's
per-turn schedule) -> metrics line -> checkpoint. Everything random in an iteration is drawn
from (seed, iteration), and checkpoints hold adapter, optimiser, value head and RNG states, so
a run killed at any point and started again with the same command continues exactly: the next
iteration's metrics equal an uninterrupted run's.

Launched on several processes (``accelerate launch``/``torchrun``; ``agentrl.distributed``) each
process rolls out a share of the groups and trains a share of every minibatch; rank 0 writes the
run directory and prints progress.

Run directory: ``config.yaml`` (resolved), ``run.json`` (seed, versions), ``metrics.jsonl``,
``checkpoints/``, the tiny model and SFT model when built, ``eval_before.json``, ``summary.json``
and the evaluation episodes ``eval/before.jsonl`` / ``eval/after.jsonl`` when evaluation is on, ``tensorboard/``, ``wandb/`` and ``tracking.json`` (W&B /
MLflow run ids) when enabled, ``served-adapter/`` when rollouts are sampled by a server.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import json
import os
import platform
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from agentrl.config import ConfigError, TrainConfig, dump_config, load_config
from agentrl.credit import Advantages, estimate, estimator_info
from agentrl.credit.base import DRIFT
from agentrl.distributed import SINGLE, init_distributed
from agentrl.envs import make
from agentrl.evaluation import evaluate
from agentrl.policies.base import SamplingParams
from agentrl.policies.hf import HFPolicy
from agentrl.policies.precision import HALF_DTYPES, enable_tf32, resolve_dtype
from agentrl.rollout import PromptBuilder, rollout
from agentrl.seeding import derive_rng, stream_seed
from agentrl.trainers.checkpoint import (
    latest_checkpoint,
    load_behaviour,
    load_checkpoint,
    load_estimator_state,
    save_checkpoint,
    settle_estimator_state,
)
from agentrl.trainers.drift import PolicyDrift
from agentrl.trainers.experts import get_expert
from agentrl.trainers.learner import Learner, UpdateSettings
from agentrl.trainers.metrics import MetricsWriter
from agentrl.trainers.samples import TokenSamples, build_samples, steps_in_row_order
from agentrl.trainers.schedule import merge_copies, run_update
from agentrl.trainers.sft import expert_demonstrations, expert_env, lr_factor, sft_train
from agentrl.trainers.starts import Starts, plain_episodes
from agentrl.trainers.values import value_heads_for
from agentrl.types import StepBatch, TrajectoryGroup, write_trajectories

__all__ = ["Trainer", "run_sft", "train"]


def train(
    config_path: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    *,
    stop_after: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Train from a YAML config with ``key=value`` overrides; returns the run directory.

    ``out_dir`` defaults to the config's ``out_dir``. A run directory that already holds a
    checkpoint of the same config is resumed. ``stop_after``: return once ``stop_after``
    iterations are done and checkpointed (as if the run had been stopped there). ``progress`` gets
    a line per stage, SFT epoch, evaluation and iteration (``agentrl train`` prints them).
    """
    return Trainer.from_config(config_path, out_dir, overrides).run(stop_after=stop_after, progress=progress)


def run_sft(
    config_path: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    progress: Callable[[str], None] | None = None,
) -> Path:
    """``agentrl sft``: only the SFT warm start of a train config (run even when ``sft.enabled`` is
    false); returns the merged model's directory, ``<run dir>/sft-model``."""
    trainer = Trainer.from_config(config_path, out_dir, overrides)
    get_expert(trainer.cfg.env.name)  # an env without an expert fails here, before any model is built
    if progress is not None and not trainer.cfg.sft.enabled:
        progress(
            "sft: the config has sft.enabled: false; running the warm start anyway (asked for by agentrl sft)"
        )
    return trainer.run_sft(progress)


def _versions() -> dict[str, str]:
    """Versions for run.json: an imported module's ``__version__``, else the installed distribution's
    metadata. Importing peft only to read its version imports transformers' model zoo with it,
    seconds of a run's start, more where no bytecode cache is written."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("agentrl", "torch", "transformers", "peft", "numpy"):
        version = getattr(sys.modules.get(name), "__version__", None)
        if version is None:
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                version = "unknown"
        out[name] = str(version)
    return out


def _rate(result: dict[str, Any]) -> str:
    return (
        f"success {100 * result['success_rate']:.1f}% (95% CI {100 * result['ci_low']:.1f}-{100 * result['ci_high']:.1f}%) "
        f"over {result['episodes']} episodes"
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fill_turn_rewards(groups: list[TrajectoryGroup], mode: str) -> None:
    """``valid``: a step without an env turn reward gets 1.0 when its action was parsed and accepted,
    else 0.0 (a verifiable per-turn score, so turn-level estimators run on any env)."""
    if mode != "valid":
        return
    for g in groups:
        for t in g:
            for s in t.steps:
                if s.turn_reward is None:
                    s.turn_reward = float(s.valid)


class Trainer:
    """One run: ``setup`` builds the model, envs and learner from a config, ``train`` runs the loop."""

    # built by setup()
    envs: list[Any]
    eval_envs: list[Any]
    train_tasks: list[str]
    eval_tasks: list[str]
    also_envs: dict[str, list[Any]]  # eval.also: each extra held-out set's envs (same task range)
    policy: HFPolicy
    learner: Learner
    sampler: Any  # the policy itself, or an OpenAI-compatible server's client
    metrics: MetricsWriter | None  # rank 0 only

    def __init__(self, cfg: TrainConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.dist = SINGLE
        self.say: Callable[[str], None] = lambda line: None
        self.estimator_state: dict[str, Any] | None = None  # a stateful estimator's, kept across iterations
        self.drift: PolicyDrift | None = None  # each task's last response, when the estimator reads ``drift``
        self.starts: Starts | None = None  # expert-prefix starts and hints (rollout.resets, rollout.hints)
        # rollout.overlap: the adapter the next rollout samples with (None: the current one) and
        # that rollout, running in a thread while the current iteration updates
        self.behaviour: list[torch.Tensor] | None = None
        self._next_rollout: concurrent.futures.Future[Any] | None = None
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None

    @classmethod
    def from_config(
        cls,
        config_path: str | os.PathLike[str] | None,
        out_dir: str | os.PathLike[str] | None = None,
        overrides: Iterable[str] = (),
    ) -> Trainer:
        """The trainer of a YAML config with ``key=value`` overrides, writing to ``out_dir`` (default: the config's)."""
        cfg = load_config(config_path, list(overrides))
        run_dir = Path(out_dir if out_dir is not None else cfg.out_dir)
        return cls(cfg.model_copy(update={"out_dir": str(run_dir)}), run_dir)

    # ------------------------------------------------------------------ setup
    def _sections_changed(self, sections: Iterable[str] | None = None) -> list[str]:
        """Config sections (all but ``out_dir`` and ``distributed`` when None: a checkpoint resumes under
        any strategy) that differ from the run dir's config.yaml, read back with today's defaults (a run
        saved before a newer setting existed, at its default, resumes)."""
        saved = self.run_dir / "config.yaml"
        if not saved.exists():
            return []
        try:
            old = load_config(saved).model_dump(mode="json")
        except ConfigError:  # no longer valid: compare as written, so the sections that differ are named
            old = yaml.safe_load(saved.read_text()) or {}
        new = self.cfg.model_dump(mode="json")
        keys = set(old) | set(new) if sections is None else set(sections)
        return sorted(k for k in keys - {"out_dir", "distributed"} if old.get(k) != new.get(k))

    def _check_resume(self) -> None:
        diff = self._sections_changed()
        if diff and latest_checkpoint(self.run_dir) is not None:
            raise ConfigError(
                f"{self.run_dir} holds a run with a different config (sections differ: {', '.join(diff)}); "
                "resume with the same config or choose another output directory"
            )

    def _write_run_files(self) -> None:
        if not self.dist.main:
            return
        (self.run_dir / "config.yaml").write_text(dump_config(self.cfg))
        info = {
            "seed": self.cfg.seed,
            "versions": _versions(),
            "argv": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch_threads": torch.get_num_threads(),
            "processes": self.dist.world,
        }
        (self.run_dir / "run.json").write_text(json.dumps(info, indent=1))

    def builder(self) -> PromptBuilder:
        return self.cfg.rollout.prompt_settings().builder()

    def task_ids(self, env: Any, start: int, count: int, what: str) -> list[str]:
        ids = list(env.task_ids())
        if start + count > len(ids):
            raise ConfigError(
                f"{what} asks for tasks {start}..{start + count - 1} but env {self.cfg.env.name!r} has {len(ids)} "
                "(raise env.kwargs.num_tasks or lower the range)"
            )
        return ids[start : start + count]

    def _model_path(self, env: Any) -> str | Path:
        """The configured model (a local directory or a hub id), or a tiny Qwen2 built in the run dir
        with a tokenizer trained on env text."""
        if self.cfg.model.path is not None:
            return self.cfg.model.path
        from agentrl.policies.tiny import build_tiny_model, env_corpus

        tiny = self.cfg.model.tiny
        out = self.run_dir / "tiny-model"
        if self.dist.main and not (out / "config.json").exists():
            tasks = self.task_ids(
                env,
                self.cfg.env.train_tasks.start,
                min(tiny.corpus_tasks, self.cfg.env.train_tasks.count),
                "model.tiny.corpus_tasks",
            )
            corpus = env_corpus(env, tasks, steps_per_task=10, seed=tiny.seed)
            tmp = self.run_dir / ".tmp-tiny-model"
            shutil.rmtree(tmp, ignore_errors=True)
            build_tiny_model(
                tmp,
                corpus,
                vocab_size=tiny.vocab_size,
                layers=tiny.layers,
                hidden=tiny.hidden,
                heads=tiny.heads,
                kv_heads=tiny.kv_heads,
                max_positions=tiny.max_positions,
                seed=tiny.seed,
                whole_words=tiny.whole_words,
                pretokenize=tiny.pretokenize,
                lowercase=tiny.lowercase,
            )
            os.replace(tmp, out)
        self.dist.barrier()
        return out

    def _sft(self, base: str | Path, env: Any, progress: Callable[[str], None] | None = None) -> Path:
        """Warm start on expert demonstrations; the result is saved (merged) as ``sft-model``.

        ``progress`` gets a line per stage and per epoch (the ``agentrl sft`` command prints them).
        """
        from transformers import AutoModelForCausalLM

        from agentrl.policies.tokenizer import load_tokenizer

        say = progress or (lambda line: None)
        out = self.run_dir / "sft-model"
        self.dist.barrier()
        if (out / "config.json").exists():
            say(f"sft: {out} exists; reusing it")
            return out
        s = self.cfg.sft
        tasks = self.task_ids(env, s.tasks.start, s.tasks.count, "sft.tasks")
        demo_env = expert_env(self.cfg.env.name, self.cfg.env.kwargs, env)
        try:  # episode n resets with seed + n, so a task's repeats differ where the expert is random
            demos = expert_demonstrations(
                self.cfg.env.name,
                demo_env,
                [t for _ in range(s.episodes_per_task) for t in tasks],
                self.builder(),
                seed=self.cfg.seed,
            )
        finally:
            if demo_env is not env:
                demo_env.close()
        won = len({d.task_id for d in demos if d.success})
        each = f", {s.episodes_per_task} expert episodes each" if s.episodes_per_task > 1 else ""
        say(f"sft: {len(demos)} expert steps from {len(tasks)} tasks ({won} won by the expert{each})")
        tokenizer = load_tokenizer(base)
        seed_everything(self.cfg.seed)
        device = self._device()
        dtype = resolve_dtype(self.cfg.model.dtype, device)  # model.dtype, as the RL policy loads it
        enable_tf32(device)
        # LoRA: the base in model.dtype (the float32 adapter runs under bf16 autocast in the scorer).
        # Full fine-tuning keeps float32 master weights and runs the forward under autocast instead.
        attn = self.cfg.model.attn_implementation
        model: Any = AutoModelForCausalLM.from_pretrained(
            base,
            dtype=torch.float32 if s.full_finetune else dtype,
            **({"attn_implementation": attn} if attn else {}),
        )
        model = model.to(device)
        if not s.full_finetune:
            from peft import get_peft_model

            model = get_peft_model(model, self.cfg.lora.to_peft())
        if self.cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        t0 = time.time()
        log_path = self.run_dir / "sft_metrics.jsonl"
        log_path.unlink(missing_ok=True)

        def log(record: dict[str, float]) -> None:
            record = {**record, "sft_seconds": time.time() - t0}
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            choice = f", choice loss {record['sft_choice_loss']:.4f}" if "sft_choice_loss" in record else ""
            say(
                f"sft epoch {int(record['sft_epoch']) + 1}/{s.epochs}: loss {record['sft_loss']:.4f}{choice} ({record['sft_seconds']:.1f} s)"
            )

        def step_line(step: int, steps: int, loss: float) -> None:
            say(f"sft step {step}/{steps}: loss {loss:.4f} ({time.time() - t0:.0f} s)")

        mixed = s.full_finetune and dtype in HALF_DTYPES
        with torch.autocast(device.type, dtype=dtype) if mixed else contextlib.nullcontext():
            stats = sft_train(
                model,
                tokenizer,
                demos,
                epochs=s.epochs,
                lr=s.lr,
                batch_size=s.batch_size,
                seed=self.cfg.seed,
                chunk_size=self.cfg.model.logprob_chunk_size,
                log=log if self.dist.main else None,
                dist=self.dist,
                lr_schedule=s.lr_schedule,
                warmup_ratio=s.warmup_ratio,
                pack_rows=self.cfg.model.packed_scoring,
                progress=step_line if self.dist.main else None,
                prompt_loss_weight=s.prompt_loss_weight,
                choice_weight=s.choice_weight,
            )
        stats["sft_seconds"] = time.time() - t0
        if not self.dist.main:
            self.dist.barrier()
            return out
        if not s.full_finetune:
            model = model.merge_and_unload()
        model = model.to(dtype)  # saved in model.dtype, which the RL stage loads it in
        tmp = self.run_dir / ".tmp-sft-model"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "sft_stats.json").write_text(json.dumps(stats, indent=1))
        os.replace(tmp, out)
        self.dist.barrier()
        return out

    def run_sft(self, progress: Callable[[str], None] | None = None) -> Path:
        """Only the SFT warm start (``agentrl sft``), whatever ``sft.enabled`` says; returns ``sft-model``.

        Writes ``config.yaml``, ``run.json`` and ``sft_metrics.jsonl`` in the run dir (and the tiny
        model when ``model.path`` is null). A run dir whose ``sft-model`` came from another config is refused.
        """
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.dist = init_distributed(cfg.model.device)
        if (self.run_dir / "sft-model" / "config.json").exists():
            diff = self._sections_changed(("seed", "model", "lora", "env", "rollout", "sft"))
            if diff:
                raise ConfigError(
                    f"{self.run_dir} holds an sft-model made with a different config (sections differ: "
                    f"{', '.join(diff)}); choose another output directory"
                )
        self._check_resume()
        self.dist.barrier()  # every process has read the old config.yaml before rank 0 rewrites it
        progress = progress if self.dist.main else None
        self._write_run_files()
        if cfg.model.torch_threads:
            torch.set_num_threads(cfg.model.torch_threads)
        seed_everything(cfg.seed)
        env = make(cfg.env.name, **cfg.env.kwargs)
        try:
            return self._sft(self._model_path(env), env, progress)
        finally:
            env.close()

    def _device(self) -> torch.device:
        from agentrl.policies.hf import pick_device

        if self.dist.active and self.dist.device is not None:
            return self.dist.device
        return pick_device(self.cfg.model.device)

    def _evaluate(self, name: str, also: str | None = None) -> dict[str, Any]:
        """Evaluate the current policy on the held-out tasks (``agentrl.evaluation``, as ``agentrl eval``
        does), or on the extra set ``also``; episodes go to ``eval/<name>[-<also>].jsonl``."""
        return evaluate(
            self.policy,
            self.eval_envs if also is None else self.also_envs[also],
            self.eval_tasks,
            self.cfg.eval_spec(),
            dist=self.dist,
            episodes_path=self.run_dir
            / "eval"
            / (f"{name}.jsonl" if also is None else f"{name}-{also}.jsonl"),
            id_prefix="eval-",
        )

    def _before_paths(self) -> dict[str | None, Path]:
        """Where each held-out set's before-RL report is kept (None: the first set)."""
        paths: dict[str | None, Path] = {None: self.run_dir / "eval_before.json"}
        paths.update({n: self.run_dir / f"eval_before-{n}.json" for n in self.cfg.eval.also})
        return paths

    # ------------------------------------------------------------------ run
    def setup(self, progress: Callable[[str], None] | None = None) -> None:
        """Start the processes and build what the loop uses, stored on the trainer: envs and task lists
        (training and evaluation), the model (tiny and SFT stages when configured), the policy, the
        learner with the estimator's value heads, the sampler and the metrics writer (rank 0)."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.dist = dist = init_distributed(cfg.model.device)
        self._check_resume()
        dist.barrier()  # every process has read the old config.yaml before rank 0 rewrites it
        self.say = say = progress if progress is not None and dist.main else (lambda line: None)
        if dist.active:
            say(
                f"data-parallel over {dist.world} processes ({getattr(dist.device, 'type', 'cpu')}) with "
                f"{cfg.distributed.strategy}; rank 0 writes {self.run_dir}"
            )
        self._write_run_files()
        if cfg.model.torch_threads:
            torch.set_num_threads(cfg.model.torch_threads)
        seed_everything(cfg.seed)
        n_envs = cfg.env_count(len(dist.share(range(cfg.rollout.groups))))
        self.envs = [make(cfg.env.name, **cfg.env.kwargs) for _ in range(n_envs)]
        self.train_tasks = self.task_ids(
            self.envs[0], cfg.env.train_tasks.start, cfg.env.train_tasks.count, "env.train_tasks"
        )
        self.eval_envs = self.envs
        if (
            cfg.eval.enabled and cfg.eval.env_kwargs
        ):  # e.g. {split: valid_unseen}: held-out tasks of another split
            self.eval_envs = [make(cfg.env.name, **cfg.eval_env_kwargs()) for _ in range(n_envs)]
        self.eval_tasks = (
            self.task_ids(self.eval_envs[0], cfg.eval.tasks.start, cfg.eval.tasks.count, "eval.tasks")
            if cfg.eval.enabled
            else []
        )
        self.also_envs = {}
        for name in cfg.eval.also if cfg.eval.enabled else ():
            self.also_envs[name] = [make(cfg.env.name, **cfg.eval_env_kwargs(name)) for _ in range(n_envs)]
            self.task_ids(
                self.also_envs[name][0], cfg.eval.tasks.start, cfg.eval.tasks.count, f"eval.also.{name}"
            )
        if (
            cfg.model.path is None
            and not (self.run_dir / "tiny-model" / "config.json").exists()
            and dist.main
        ):
            say("building the tiny model (tokenizer trained on env text, random-init Qwen2)")
        model_path = self._model_path(self.envs[0])
        if cfg.sft.enabled:
            model_path = self._sft(model_path, self.envs[0], say)
        seed_everything(cfg.seed)
        sharded_load = cfg.distributed.strategy == "fsdp" and cfg.distributed.shard == "always"
        self.policy = HFPolicy.from_pretrained(
            model_path,
            lora=cfg.lora,
            # shard: always: loaded on the CPU, then FSDP puts each process's shards on its device
            device=("cpu" if sharded_load else dist.device) if dist.active else cfg.model.device,
            dtype=cfg.model.dtype,
            max_batch_size=cfg.model.max_batch_size,
            logprob_chunk_size=cfg.model.logprob_chunk_size,
            merge_for_sampling=cfg.model.merge_lora_for_sampling,
            packed_scoring=cfg.model.packed_scoring,
            attn_implementation=cfg.model.attn_implementation,
        )
        if cfg.model.gradient_checkpointing:
            self.policy.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        a = cfg.algorithm
        clip_low, clip_high = a.clip_band
        settings = UpdateSettings(
            loss=a.resolved_loss,
            clip_low=clip_low,
            clip_high=clip_high,
            kl_coef=a.kl_coef,
            entropy_coef=a.entropy_coef,
            value_coef=a.value_coef,
            epochs=a.epochs,
            minibatch_size=a.minibatch_size,
            micro_batch_size=a.micro_batch_size,
            max_grad_norm=cfg.optim.max_grad_norm,
            temperature=cfg.rollout.temperature,
            old_logprobs=a.old_logprobs,
        )
        self.learner = Learner(
            self.policy,
            settings,
            lr=cfg.optim.lr,
            critic_lr=cfg.optim.critic_lr,
            weight_decay=cfg.optim.weight_decay,
            betas=cfg.optim.betas,
            value_heads=value_heads_for(a.estimator),
            dist=dist,
            strategy=cfg.distributed.strategy,
            shard=cfg.distributed.shard,
        )
        if cfg.rollout.overlap and dist.active:
            raise ConfigError(
                "rollout.overlap runs in one process; drop it or train without several processes"
            )
        self.sampler = self._sampler(self.policy, model_path)
        self.metrics = MetricsWriter.from_config(self.run_dir, cfg) if dist.main else None
        r = cfg.rollout
        if r.resets.enabled or r.hints.enabled:
            self.starts = Starts(
                cfg.env.name,
                expert_env(cfg.env.name, cfg.env.kwargs, self.envs[0]),
                seed=cfg.seed,
                group_size=r.group_size,
                max_turns=r.max_turns,
                response_format=r.response_format,
                resets=r.resets,
                hints=r.hints,
            )

    def train(self, stop_after: int | None = None) -> Path:
        """The loop after ``setup``: resume from the latest checkpoint, evaluate the starting policy,
        then per iteration sync the sampler, roll out and update, log and checkpoint; evaluate after."""
        cfg, dist, say, t_run = self.cfg, self.dist, self.say, time.time()
        try:
            start = 0
            ckpt = latest_checkpoint(self.run_dir)
            info = estimator_info(cfg.algorithm.estimator)
            stateful = info.stateful
            self.estimator_state = {} if stateful else None
            self.drift = PolicyDrift() if info.wants_drift(cfg.algorithm.options) else None
            if ckpt is not None:
                saved = load_checkpoint(ckpt, self.learner, dist)
                start = int(saved["iteration"])
                if self.starts is not None:
                    self.starts.load(saved)
                if stateful:
                    self.estimator_state = load_estimator_state(ckpt, cfg.algorithm.estimator)
                if self.drift is not None:
                    self.drift = PolicyDrift.load(ckpt)
                self.behaviour = load_behaviour(ckpt, self.policy.device) if cfg.rollout.overlap else None
            missing = {a: p for a, p in self._before_paths().items() if not p.exists()}
            if cfg.eval.enabled and missing:
                if start > 0:
                    raise RuntimeError(
                        f"{self.run_dir} resumes at iteration {start} but has no {', '.join(p.name for p in missing.values())}"
                    )
                for also, path in missing.items():
                    where = "" if also is None else f" ({also})"
                    say(
                        f"evaluating the starting policy on {len(self.eval_tasks) * cfg.eval.episodes_per_task} held-out episodes{where}"
                    )
                    before = self._evaluate("before", also)
                    if dist.main:
                        path.write_text(json.dumps(before, indent=1))
                    say(f"before{where}: " + _rate(before))
            elif start > 0:
                say(f"resuming at iteration {start} from {ckpt}")
            if self.metrics is not None:
                self.metrics.truncate_to(start)
            end = cfg.optim.iterations if stop_after is None else min(stop_after, cfg.optim.iterations)
            for it in range(start, cfg.optim.iterations):
                if stop_after is not None and it >= stop_after:
                    return self.run_dir
                if cfg.rollout.overlap:
                    record = self.overlapped_iteration(it, end)
                else:
                    self._sync_adapter()
                    record = self.iteration(it)
                if self.metrics is not None:
                    self.metrics.write(record)
                say(
                    f"iteration {it + 1}/{cfg.optim.iterations}: success {record['success_rate']:.2f} reward {record['reward_mean']:.2f} "
                    f"kl {record.get('kl', 0.0):.4f} ({record['time_iteration']:.1f} s; {time.time() - t_run:.0f} s so far)"
                )
                if (it + 1) % cfg.logging.checkpoint_every == 0 or it + 1 == cfg.optim.iterations:
                    save_checkpoint(
                        self.run_dir,
                        it + 1,
                        self.learner,
                        {
                            "last_metrics": record,
                            "processes": dist.world,
                            **(self.starts.state() if self.starts else {}),
                        },
                        keep=cfg.logging.keep_checkpoints,
                        dist=dist,
                        estimator_state=self.estimator_state,
                        behaviour=self.behaviour,
                        drift=self.drift,
                    )
            self._sync_adapter()
        finally:
            if self._threads is not None:  # after an error in the update: let the rollout thread finish
                self._threads.shutdown(wait=True, cancel_futures=True)
                self._threads, self._next_rollout = None, None
            if self.metrics is not None:
                self.metrics.close()
        if cfg.eval.enabled:
            self._summarise()
        say(f"done in {time.time() - t_run:.0f} s: {self.run_dir}")
        return self.run_dir

    def run(self, stop_after: int | None = None, progress: Callable[[str], None] | None = None) -> Path:
        """``setup`` then ``train``; returns the run directory."""
        self.setup(progress)
        return self.train(stop_after)

    def _summarise(self) -> None:
        """Evaluate the trained policy and write ``summary.json`` (before, after, the gain; under
        ``also`` the same for each extra held-out set of ``eval.also``)."""
        cfg, dist, say = self.cfg, self.dist, self.say
        dist.barrier()  # rank 0 has written the eval_before files
        parts: dict[str | None, dict[str, Any]] = {}
        for also, path in self._before_paths().items():
            before = json.loads(path.read_text())
            name = "before" if also is None else f"before-{also}"
            where = "" if also is None else f" ({also})"
            if (
                cfg.optim.iterations == 0
            ):  # no update: the same policy, tasks and seeds would give the same episodes
                after = before
                if dist.main and (self.run_dir / "eval" / f"{name}.jsonl").exists():
                    shutil.copyfile(
                        self.run_dir / "eval" / f"{name}.jsonl",
                        self.run_dir / "eval" / f"{name.replace('before', 'after', 1)}.jsonl",
                    )
            else:
                say(
                    f"evaluating the trained policy on {len(self.eval_tasks) * cfg.eval.episodes_per_task} held-out episodes{where}"
                )
                after = self._evaluate("after", also)
            parts[also] = {
                "before": before,
                "after": after,
                "improvement": after["success_rate"] - before["success_rate"],
                "significant": after["ci_low"] > before["ci_high"],
            }
        dist.barrier()
        main = parts.pop(None)
        summary = {
            "before": main["before"],
            "after": main["after"],
            "estimator": cfg.algorithm.estimator,
            "iterations": cfg.optim.iterations,
            "improvement": main["improvement"],
            "significant": main["significant"],
        }
        if parts:
            summary["also"] = parts
        if dist.main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        for also, part in [(None, main), *parts.items()]:
            where = "" if also is None else f" ({also})"
            say(f"before RL{where}: {_rate(part['before'])}")
            say(
                f"after RL{where}:  {_rate(part['after'])}"
                + ("  (gain beyond both 95% intervals)" if part["significant"] else "")
            )

    def _sampler(self, policy: HFPolicy, model_path: str | Path) -> Any:
        """What rollouts sample from: the in-process policy, an in-process vLLM engine on the same
        model (``rollout.engine: vllm``; its LoRA rank fits the trained adapter's), or an
        OpenAI-compatible server."""
        r = self.cfg.rollout
        if r.engine == "vllm":
            from agentrl.policies.vllm import VLLMPolicy, lora_rank_for

            options = {
                "max_lora_rank": lora_rank_for(self.cfg.lora.r),
                "dtype": self.cfg.model.dtype or "auto",
                "seed": self.cfg.seed + self.dist.rank,
                "chat_template": policy.chat_template,
                **r.vllm,
            }
            return VLLMPolicy.from_pretrained(os.fspath(model_path), **options)
        server = r.server
        if server.url is None:
            return policy
        urls = server.urls()
        if len(urls) > 1:
            from agentrl.policies.pool import ServerPool

            return ServerPool.connect(
                urls,
                server.model,
                concurrency=server.concurrency,
                tokenizer=policy.tokenizer,
                cooldown_s=server.cooldown_s,
                timeout=server.timeout_s,
            )
        from agentrl.policies.openai import OpenAIPolicy

        return OpenAIPolicy.connect(
            urls[0],
            server.model,
            concurrency=server.concurrency,
            tokenizer=policy.tokenizer,
            timeout=server.timeout_s,
        )

    def _sync_adapter(self, weights: list[torch.Tensor] | None = None) -> None:
        """Give a server sampler the current LoRA weights (or ``weights``, a ``Learner.snapshot``):
        save the adapter, load it there by name (rank 0 does it; every process samples from the
        server once it is done; several servers load it in parallel). An in-process vLLM engine
        gets them the same way, from a directory of its own process."""
        if self.sampler is self.policy:
            return
        if self.cfg.rollout.engine == "vllm":  # every process has its own engine
            self.sampler.push_adapter(self.policy, self.run_dir / "vllm-adapter" / f"rank{self.dist.rank}")
            return
        if self.dist.main:
            server = self.cfg.rollout.server
            directory = Path(server.sync_dir) if server.sync_dir else self.run_dir / "served-adapter"
            with self.learner.weights(weights):
                self.policy.save_adapter(directory)
            self.sampler.sync_adapter(directory, server.adapter_name)
        self.dist.barrier()
        if not self.dist.main:  # rank 0 loaded it; the other processes' clients sample with it too
            self.sampler.use_adapter(self.cfg.rollout.server.adapter_name)

    def _drift_state(
        self, batch: StepBatch, samples: TokenSamples, state: dict[str, Any], advantages: Advantages
    ) -> dict[str, float]:
        """After the update (the SPO authors' timing): the policy drift per task, then the estimator's
        state updated with it, in place (``EstimatorInfo.policy_drift``); returns the drift's statistics.

        The advantages were estimated before the update with ``drift`` 0; the estimator must give the
        same ones with the measured drift (``drift`` may change only its state)."""
        assert self.drift is not None
        a = self.cfg.algorithm
        drift, stats = self.drift.measure(self.learner, batch, samples)
        again, _ = merge_copies(
            batch, estimate(a.estimator, batch, **{**a.options, "state": state, DRIFT: drift})
        )
        first, second = advantages.arrays(), again.arrays()
        same = first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)
        if same and (advantages.token is None) != (again.token is None):
            same = False
        if same and advantages.token is not None and again.token is not None:
            same = all(np.array_equal(x, y) for x, y in zip(advantages.token, again.token))
        if not same:
            raise RuntimeError(
                f"estimator {a.estimator!r} gave other advantages with the measured policy drift than with "
                "drift 0; its policy_drift trait says drift changes only its state"
            )
        return stats

    def _task_probabilities(self) -> np.ndarray | None:
        """The estimator's draw over the train tasks (e.g. SPO's prioritised sampling); None: uniform."""
        a = self.cfg.algorithm
        weigh = estimator_info(a.estimator).task_weights
        if weigh is None or self.estimator_state is None:
            return None
        w = weigh(self.estimator_state, self.train_tasks, a.options)
        if w is None:
            return None
        w = np.asarray(w, dtype=np.float64)
        if w.shape != (len(self.train_tasks),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(
                f"estimator {a.estimator!r}: task_weights must give a finite weight >= 0 per task"
            )
        return w / w.sum()

    def iteration(self, it: int) -> dict[str, Any]:
        """One rollout (from the sampler) + update; returns the metrics record.

        With several processes each rolls out its share of the groups; all then hold the whole batch."""
        t_start = time.time()
        groups, info = self._rollout(it)
        return self._learn(it, groups, info, t_start, time.time() - t_start)

    def overlapped_iteration(self, it: int, end: int) -> dict[str, Any]:
        """``rollout.overlap``: iteration ``it``'s update while iteration ``it + 1``'s rollout runs in
        a thread (when ``it + 1 < end``), sampling with the adapter from before this update.

        Batch ``it`` was sampled by ``self.behaviour`` (None: the current adapter; the first
        iteration of a fresh run), so its old log-probs are scored under those weights and its
        ``staleness`` is 1 (else 0). A checkpoint keeps the next rollout's adapter; a resumed run
        samples that rollout again with it, as the uninterrupted run did."""
        t_start = time.time()
        if self._next_rollout is None:  # the first iteration of this process: sample now
            self._sync_adapter(self.behaviour)
            groups, info = self._rollout(it)
            t_rollout = time.time() - t_start
        else:
            groups, info, t_rollout = self._next_rollout.result()
            self._next_rollout = None
        t_wait = time.time() - t_start
        behaviour, self.behaviour = self.behaviour, self.learner.snapshot()
        if it + 1 < end:
            if behaviour is not None:  # the servers hold the older adapter that sampled this batch
                self._sync_adapter()
            if self._threads is None:
                self._threads = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="agentrl-rollout")
            self._next_rollout = self._threads.submit(self._timed_rollout, it + 1)
        self.learner.behaviour = behaviour
        try:
            record = self._learn(it, groups, info, t_start, t_rollout)
        finally:
            self.learner.behaviour = None
        record["staleness"] = 0 if behaviour is None else 1
        record["time_rollout_wait"] = t_wait
        return record

    def _timed_rollout(self, it: int) -> tuple[list[TrajectoryGroup], dict[str, Any], float]:
        t = time.time()
        groups, info = self._rollout(it)
        return groups, info, time.time() - t

    def _rollout(self, it: int) -> tuple[list[TrajectoryGroup], dict[str, Any]]:
        """Iteration ``it``'s episodes (every process's, gathered) and what the sampler reports about
        them (several servers: requests per server, failures)."""
        cfg, r, dist, train_tasks = self.cfg, self.cfg.rollout, self.dist, self.train_tasks
        rng = derive_rng(cfg.seed, it)
        picks = rng.choice(
            len(train_tasks),
            size=r.groups,
            replace=len(train_tasks) < r.groups,
            p=self._task_probabilities(),
        )
        seeds = rng.integers(0, 2**31 - 1, size=r.groups).tolist()
        params = SamplingParams(
            temperature=r.temperature,
            top_p=r.top_p,
            max_new_tokens=r.max_new_tokens,
            seed=stream_seed(cfg.seed, it, rank=dist.rank),
        )
        mine = dist.share(range(r.groups))
        starts, hints = (
            self.starts.plan(it, [train_tasks[picks[g]] for g in mine], [seeds[g] for g in mine], mine)
            if self.starts is not None
            else (None, None)
        )
        groups = (
            rollout(
                self.sampler,
                self.envs,
                [train_tasks[picks[g]] for g in mine],
                r.group_size,
                max_turns=r.max_turns,
                params=params,
                builder=self.builder(),
                seeds=[seeds[g] for g in mine],
                id_prefix=f"it{it}-r{dist.rank}-" if dist.active else f"it{it}-",
                branching=r.branching.build(),
                action_choice=r.action_choice,
                starts=starts,
                hints=hints,
            )
            if mine
            else []
        )
        groups = dist.gather(groups)
        take_stats = getattr(self.sampler, "take_stats", None)
        return groups, take_stats() if take_stats is not None else {}

    def _learn(
        self,
        it: int,
        groups: list[TrajectoryGroup],
        sampled: dict[str, Any],
        t_start: float,
        t_rollout: float,
    ) -> dict[str, Any]:
        """The update on iteration ``it``'s episodes; returns the metrics record."""
        cfg, r, dist = self.cfg, self.cfg.rollout, self.dist
        fill_turn_rewards(groups, r.turn_reward)
        if cfg.logging.save_trajectories and dist.main:
            (self.run_dir / "trajectories").mkdir(exist_ok=True)
            write_trajectories(
                self.run_dir / "trajectories" / f"iter-{it:06d}.jsonl", [t for g in groups for t in g]
            )
        trajs = [t for g in groups for t in g]
        plain = plain_episodes(trajs)  # expert starts and hinted episodes are counted apart
        steps = steps_in_row_order(groups)
        generated = sum(len(s.response_ids or ()) for s in steps)
        record: dict[str, Any] = {
            "iteration": it,
            "success_rate": float(np.mean([t.success for t in plain])) if plain else float("nan"),
            "reward_mean": float(np.mean([t.outcome for t in plain])) if plain else float("nan"),
            "turns_mean": float(np.mean([len(t) for t in plain])) if plain else float("nan"),
            "invalid_rate": float(np.mean([not s.valid for s in steps])) if steps else float("nan"),
            "errors": sum("error" in t.info for t in trajs),
            "episodes": len(trajs),
            "rows": len(steps),
            **sampled,
        }
        if r.branching.enabled:  # tree rollouts: branches, and the steps actually sampled (copies excluded)
            record["branches"] = sum(t.parent_id is not None for t in trajs)
            record["steps_sampled"] = sum("copy_of" not in s.info for s in steps)
            if r.branching.at == "chain":  # what the value-only continuations cost, in episodes and env steps
                value = [t for t in trajs if t.info.get("value_only")]
                record["value_episodes"] = len(value)
                record["value_steps"] = sum("copy_of" not in s.info for t in value for s in t.steps)
        if self.starts is not None:  # their metrics; the per-task hint counters move on
            record.update(self.starts.observe(groups))
        t_update = time.time()
        batch = StepBatch.from_trajectories(groups)
        if len(batch):
            a = cfg.algorithm
            info = estimator_info(a.estimator)
            samples = build_samples(
                steps,
                tokenizer=self.policy.tokenizer,
                parts=bool(info.spans),
                response_format=r.response_format,
                value_heads=info.value_heads,
            )
            update_rng = derive_rng(cfg.seed, it, 1)
            if cfg.optim.lr_schedule != "constant" or cfg.optim.warmup_ratio > 0:
                factor = lr_factor(cfg.optim.lr_schedule, cfg.optim.iterations, cfg.optim.warmup_ratio)(it)
                self.learner.scale_lr(factor)
                record["lr"] = cfg.optim.lr * factor
            options = dict(a.options)
            state: dict[str, Any] = {}
            if info.stateful:  # updated in place by the estimator, then kept as a checkpoint keeps it
                state = self.estimator_state if self.estimator_state is not None else {}
                options["state"] = state
            if self.drift is not None:  # D comes after the update: this call's state is dropped (see below)
                options["state"], options[DRIFT] = copy.deepcopy(state), np.zeros(len(batch))
            result = run_update(
                self.learner,
                batch,
                samples,
                a.estimator,
                options,
                rng=update_rng,
                seed=cfg.seed + it,
                order=a.seeupo_order,
            )
            record.update(result.stats)
            if self.drift is not None:
                t_drift = time.time()
                record.update(self._drift_state(batch, samples, state, result.advantages))
                record["time_drift"] = time.time() - t_drift
            if info.stateful:
                self.estimator_state = settle_estimator_state(state, dist)
        join = getattr(self.learner.parallel, "join", None)
        if join is not None:  # fsdp with shard: always: the one-token passes that kept ranks in step
            record["filler_passes"] = int(dist.sum_stats({"n": join.take_filler_passes()})["n"])
        t_end = time.time()
        record.update(
            {
                "tokens_generated": generated,
                "tokens_per_s": generated / max(t_rollout, 1e-9),
                "time_rollout": t_rollout,
                "time_update": t_end - t_update,
                "time_iteration": t_end - t_start,
            }
        )
        return record
