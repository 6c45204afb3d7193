"""Evaluation-only mode: play a policy on an env's tasks and report success with honest intervals.

``agentrl eval`` plays an ``EvalSpec`` (``agentrl.evaluation``, the evaluator training uses for its
before/after evaluation) with one of: ``hf:PATH`` (a local model directory, optionally with a LoRA
adapter), ``vllm:PATH``, ``openai:URL``, ``random`` (uniform over admissible actions) or ``expert``
(the env's ``info["expert_action"]``, for envs built with ``expert=True``: ALFWorld, maze). It
writes the episodes (``eval/episodes.jsonl``), ``report.json`` (the evaluator's report: success
rate with a 95% Wilson interval, per task type, per seed, mean turns and reward with bootstrap
intervals, invalid-action rate; the settings played) and the Markdown + HTML report.

A training run's checkpoint (``hf:RUN``, ``hf:RUN/checkpoints/iter-N``, its ``adapter``, or
``--adapter`` pointing there) is evaluated as the run evaluated itself: the model its LoRA was
trained on, its prompts (prompt kind, ``history_k``, response format, system prompt), decoding,
env settings and held-out tasks and seeds (``TrainConfig.eval_spec``); options given explicitly win.

Launched on several processes (``torchrun``/``accelerate launch``), an ``hf:`` evaluation is
data-parallel: each process plays its share of the tasks (with the seeds one process would give
them) on its own GPU, and rank 0 writes the report over all episodes.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agentrl.distributed import SINGLE, Dist, init_distributed, launched_processes
from agentrl.envs import make
from agentrl.eval.report import write_report
from agentrl.eval.rundir import TrainingRun, find_training_run
from agentrl.evaluation import SCRIPTED, EvalSpec, select_tasks
from agentrl.evaluation import evaluate as play_and_summarize

__all__ = ["MODEL_POLICIES", "SCRIPTED", "EvalConfig", "eval_config", "evaluate"]

MODEL_POLICIES = ("hf", "vllm", "openai")
RUN_POLICIES = ("hf", "vllm")  # the policies that can load a training run's base model and adapter


@dataclass(frozen=True)
class EvalConfig:
    """What ``evaluate`` plays: ``policy`` ("hf:PATH", "vllm:PATH", "openai:URL", "random" or
    "expert") on ``env`` built with ``env_kwargs``, playing ``spec``.

    ``model``: for openai:URL, the served model (default: the first the server lists); the API key
    comes from ``$OPENAI_API_KEY``. ``policy_options``: more keyword arguments for the hf policy
    (a training run's dtype, batch size, LoRA merging). ``run``: the training run directory these
    settings were read from (``eval_config``), recorded in report.json.
    """

    env: str
    policy: str
    spec: EvalSpec = field(default_factory=EvalSpec)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    adapter: str | None = None
    num_envs: int = 4
    model: str | None = None
    policy_options: dict[str, Any] = field(default_factory=dict)
    run: str | None = None

    def __post_init__(self) -> None:
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {self.num_envs}")
        kind, _, arg = self.policy.partition(":")
        if (
            kind not in (*SCRIPTED, *MODEL_POLICIES)
            or (kind in MODEL_POLICIES and not arg)
            or (kind in SCRIPTED and arg)
        ):
            raise ValueError(
                f"policy must be hf:PATH, vllm:PATH, openai:URL, random or expert; got {self.policy!r}"
            )
        if kind == "openai" and not arg.startswith(("http://", "https://")):
            raise ValueError(
                f"openai:URL needs an http(s) URL, e.g. openai:http://127.0.0.1:8000/v1; got {self.policy!r}"
            )
        if self.adapter and kind == "openai":
            raise ValueError(
                "--adapter loads a LoRA into an hf or vllm policy; with openai:URL pick the served adapter with --model"
            )


def eval_config(
    policy: str,
    *,
    env: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    adapter: str | None = None,
    num_envs: int | None = None,
    model: str | None = None,
    prompt: dict[str, Any] | None = None,
    **spec: Any,
) -> EvalConfig:
    """The config of ``agentrl eval`` from its options (None: not given).

    Each setting is the option given, else — when the hf:/vllm: policy or ``adapter`` is a
    training run (its directory, a checkpoint or a checkpoint's adapter) — what the run's own
    evaluation used (``TrainConfig.eval_spec``, ``eval_env_kwargs``, ``env.num_envs``; its base
    model and the checkpoint's adapter; the tasks and seeds only when the run had ``eval.enabled``),
    else the default. ``env_kwargs`` are merged over the run's; ``prompt``: PromptSettings fields;
    ``spec``: other EvalSpec fields."""
    kind, _, arg = policy.partition(":")
    run: TrainingRun | None = None
    if kind in RUN_POLICIES and arg:
        run = find_training_run(arg)
        if run is not None:
            policy = f"{kind}:{run.base_model}"
            adapter = adapter or (str(run.adapter) if run.adapter else None)
    if run is None and adapter and kind in RUN_POLICIES:
        run = find_training_run(adapter)
        if run is not None:
            if run.adapter is None:
                raise ValueError(f"--adapter {adapter}: the training run {run.run_dir} has no checkpoint yet")
            adapter = str(run.adapter)
    base = EvalSpec()
    if run is not None:
        run_spec = run.config.eval_spec()
        if run.config.eval.enabled:
            base = run_spec
        else:  # a run without a held-out evaluation: its prompts and decoding, agentrl eval's tasks and seeds
            base = dataclasses.replace(
                run_spec,
                task_start=base.task_start,
                task_count=base.task_count,
                episodes_per_task=base.episodes_per_task,
                seed=base.seed,
            )
    given_prompt = {k: v for k, v in (prompt or {}).items() if v is not None}
    given = {k: v for k, v in spec.items() if v is not None}
    resolved = dataclasses.replace(base, prompt=dataclasses.replace(base.prompt, **given_prompt), **given)
    options: dict[str, Any] = {}
    if run is not None and kind == "hf":
        m = run.config.model
        options = {"max_batch_size": m.max_batch_size, "merge_for_sampling": m.merge_lora_for_sampling}
        if m.dtype:
            options["dtype"] = m.dtype
    env = env or (run.config.env.name if run is not None else None)
    if env is None:
        raise ValueError("--env is needed (it is read from the run only when the policy is a training run)")
    return EvalConfig(
        env=env,
        policy=policy,
        spec=resolved,
        env_kwargs={**(run.config.eval_env_kwargs() if run is not None else {}), **(env_kwargs or {})},
        adapter=adapter,
        num_envs=num_envs or (run.config.env_count() if run is not None else 4),
        model=model,
        policy_options=options,
        run=str(run.run_dir) if run is not None else None,
    )


def _load_policy(cfg: EvalConfig, dist: Dist = SINGLE) -> Any:
    from agentrl.policies import make_policy

    kind, _, arg = cfg.policy.partition(":")
    if kind == "openai":
        from agentrl.policies.openai import OpenAIPolicy

        return OpenAIPolicy.connect(arg, cfg.model, require_token_ids=False)
    kwargs: dict[str, Any] = {"adapter": cfg.adapter} if cfg.adapter else {}
    if kind == "hf":
        kwargs.update(cfg.policy_options)
    if dist.active:
        kwargs["device"] = dist.device
    return make_policy(kind, path=arg, **kwargs)


def evaluate(
    cfg: EvalConfig, out_dir: str | Path, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Play the evaluation, write episodes, report.json and the report; returns report.json's dict.

    Under a multi-process launcher only ``hf:`` policies run (data-parallel); rank 0 writes."""
    out = Path(out_dir)
    (out / "eval").mkdir(parents=True, exist_ok=True)
    kind = cfg.policy.partition(":")[0]
    if kind != "hf" and launched_processes() > 1:
        raise ValueError(
            f"only hf: policies evaluate on several processes; run {cfg.policy.partition(':')[0]} evaluation as one process"
        )
    dist = init_distributed() if kind == "hf" else SINGLE
    return _evaluate(cfg, out, kind, dist, progress if dist.main else None)


def _evaluate(
    cfg: EvalConfig, out: Path, kind: str, dist: Dist, progress: Callable[[str], None] | None
) -> dict[str, Any]:
    env_kwargs = dict(cfg.env_kwargs)
    if kind == "expert":
        env_kwargs.setdefault("expert", True)
    try:
        env = make(cfg.env, **env_kwargs)
    except TypeError as e:
        if kind == "expert" and "expert" in str(e):
            raise ValueError(
                f"env {cfg.env!r} has no step-wise expert; the expert policy needs an env that gives "
                "info['expert_action'] when built with expert=True (alfworld, maze)"
            ) from None
        raise ValueError(f"cannot build env {cfg.env!r} with {env_kwargs}: {e}") from None
    envs = [env]
    try:
        tasks = select_tasks(env, cfg.spec)
        if kind in SCRIPTED:
            policy: Any = kind
        else:
            if any(t is None for t in tasks):
                raise ValueError(
                    f"env {cfg.env!r} does not list its tasks (task_ids() is empty); policy evaluation needs task ids"
                )
            mine = len(dist.share(range(len(tasks))))
            envs += [make(cfg.env, **env_kwargs) for _ in range(min(cfg.num_envs, max(mine, 1)) - 1)]
            policy = _load_policy(cfg, dist)
        report = play_and_summarize(
            policy,
            envs,
            tasks,
            cfg.spec,
            dist=dist,
            episodes_path=out / "eval" / "episodes.jsonl",
            progress=progress,
        )
    finally:
        for each in envs:
            each.close()
    report.update(env=cfg.env, policy=cfg.policy, adapter=cfg.adapter, run=cfg.run, processes=dist.world)
    if not dist.main:
        return report
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out / "eval_config.json").write_text(
        json.dumps(
            {"config": asdict(cfg), "python": platform.python_version(), "agentrl": _version()}, indent=1
        ),
        encoding="utf-8",
    )
    write_report(out)
    return report


def _version() -> str:
    from agentrl import __version__

    return __version__
