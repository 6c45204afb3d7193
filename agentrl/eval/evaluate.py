"""Evaluation-only mode: play a policy on an env's tasks and report success with honest intervals.

``agentrl eval`` plays ``episodes`` tasks under each of ``seeds`` seeds with one of:
``hf:PATH`` (a local model directory, optionally with a LoRA adapter), ``random`` (uniform over
admissible actions) or ``expert`` (the env's ``info["expert_action"]``, for envs built with
``expert=True``: ALFWorld, maze). It writes the episodes (``eval/episodes.jsonl``), ``report.json``
(success rate with a 95% Wilson interval, per task type, per seed, mean steps and outcome with
bootstrap intervals, invalid-action rate) and the Markdown + HTML report.

Launched on several processes (``torchrun``/``accelerate launch``), an ``hf:`` evaluation is
data-parallel: each process plays its share of the tasks (with the seeds one process would give
them) on its own GPU, and rank 0 writes the report over all episodes.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agentrl.distributed import SINGLE, Dist, init_distributed, launched_processes
from agentrl.envs import AgentEnv, make
from agentrl.eval.report import episode_figures, write_report
from agentrl.seeding import rank_seed, stream_seed
from agentrl.stats import Interval, wilson
from agentrl.types import Step, Trajectory, write_trajectories

SCRIPTED = ("random", "expert")
MODEL_POLICIES = ("hf", "vllm", "openai")


@dataclass(frozen=True)
class EvalConfig:
    """What ``evaluate`` plays. ``policy``: "hf:PATH", "vllm:PATH", "openai:URL", "random" or "expert".

    ``model``: for openai:URL, the served model (default: the first the server lists); the API key
    comes from ``$OPENAI_API_KEY``.
    """

    env: str
    policy: str
    episodes: int = 50
    seeds: int = 1
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    max_turns: int = 50
    adapter: str | None = None
    temperature: float = 0.0
    max_new_tokens: int = 256
    history_k: int = 2
    response_format: str = "think_action"
    num_envs: int = 4
    model: str | None = None
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.seeds < 1 or self.max_turns < 1 or self.num_envs < 1:
            raise ValueError("episodes, seeds, max_turns and num_envs must be >= 1")
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


def _tasks(env: AgentEnv, n: int) -> list[str | None]:
    """The first ``n`` task ids of the env (cycled when it has fewer), or None: task from the seed."""
    ids = list(env.task_ids())
    if not ids:
        return [None] * n
    return [ids[k % len(ids)] for k in range(n)]


def _play_scripted(
    env: AgentEnv,
    kind: str,
    task_id: str | None,
    seed: int,
    max_turns: int,
    rng: np.random.Generator,
    traj_id: str,
) -> Trajectory:
    options = {"task_id": task_id} if task_id is not None else None
    obs, info = env.reset(seed=seed, options=options)
    task = str(info.get("task_id", task_id if task_id is not None else f"seed-{seed}"))
    steps: list[Step] = []
    terminated = truncated = False
    while not (terminated or truncated) and len(steps) < max_turns:
        if kind == "random":
            actions = info.get("admissible_actions")
            if not actions:
                raise ValueError(
                    "the random policy needs info['admissible_actions'], which this env does not give"
                )
            action = str(actions[int(rng.integers(len(actions)))])
        else:
            if "expert_action" not in info:
                raise ValueError(
                    "the expert policy needs info['expert_action']: build the env with expert=True (ALFWorld, maze)"
                )
            action = info["expert_action"]
            if action is None:
                break
        next_obs, reward, terminated, truncated, next_info = env.step(action)
        steps.append(
            Step(
                obs=obs,
                response=action,
                action=action,
                reward=float(reward),
                valid=bool(next_info.get("valid", True)),
                state_key=info.get("state_key"),
                turn_reward=next_info.get("turn_reward"),
            )
        )
        obs, info = next_obs, next_info
    traj_info = {"task_type": info["task_type"]} if "task_type" in info else {}
    return Trajectory(
        task,
        traj_id,
        traj_id,
        steps,
        terminated=bool(terminated),
        truncated=not terminated,
        success=bool(info.get("success", False)),
        info=traj_info,
    )


def _load_policy(cfg: EvalConfig, dist: Dist = SINGLE) -> Any:
    from agentrl.policies import make_policy

    kind, _, arg = cfg.policy.partition(":")
    if kind == "openai":
        from agentrl.policies.openai import OpenAIPolicy

        return OpenAIPolicy.connect(arg, cfg.model, require_token_ids=False)
    kwargs: dict[str, Any] = {"adapter": cfg.adapter} if cfg.adapter else {}
    if dist.active:
        kwargs["device"] = dist.device
    return make_policy(kind, path=arg, **kwargs)


def _play_policy(
    cfg: EvalConfig,
    policy: Any,
    env_kwargs: dict[str, Any],
    tasks: list[str | None],
    seed: int,
    dist: Dist = SINGLE,
) -> list[Trajectory]:
    from agentrl.agents import StepPrompt
    from agentrl.policies.base import SamplingParams
    from agentrl.rollout import rollout

    if any(t is None for t in tasks):
        raise ValueError(
            f"env {cfg.env!r} does not list its tasks (task_ids() is empty); policy evaluation needs task ids"
        )
    mine = dist.share(range(len(tasks)))
    envs = [make(cfg.env, **env_kwargs) for _ in range(min(cfg.num_envs, max(len(mine), 1)))]
    params = SamplingParams(
        temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=rank_seed(seed, dist.rank)
    )
    builder = StepPrompt(
        history_k=cfg.history_k, response_format=cfg.response_format, system_prompt=cfg.system_prompt
    )
    try:
        groups = (
            rollout(
                policy,
                envs,
                [str(tasks[k]) for k in mine],
                1,
                max_turns=cfg.max_turns,
                params=params,
                builder=builder,
                seeds=[stream_seed(seed, k) for k in mine],
                id_prefix=f"s{seed}-r{dist.rank}-" if dist.active else f"s{seed}-",
            )
            if mine
            else []
        )
    finally:
        for env in envs:
            env.close()
    return [t for g in dist.gather(groups) for t in g]


def _interval(iv: Interval | None) -> dict[str, float] | None:
    return None if iv is None else {"value": iv.value, "ci_low": iv.low, "ci_high": iv.high}


def summarize(
    trajectories: list[Trajectory], seeds: dict[int, list[Trajectory]] | None = None
) -> dict[str, Any]:
    """report.json: success rate with its 95% Wilson interval, per task type and per seed, mean
    steps and mean outcome with bootstrap intervals, invalid-action rate, episodes with errors."""
    figs = episode_figures(trajectories)
    success = figs.success or wilson(0, 0)
    report: dict[str, Any] = {
        "success_rate": success.value if success.n else 0.0,
        "ci_low": success.low,
        "ci_high": success.high,
        "episodes": success.n,
        "per_type": {
            k: {"success_rate": v.value, "ci_low": v.low, "ci_high": v.high, "episodes": v.n}
            for k, v in figs.per_type.items()
        },
        "mean_steps": figs.mean_steps.value if figs.mean_steps else None,
        "mean_steps_ci": _interval(figs.mean_steps),
        "outcome_mean": figs.outcome.value if figs.outcome else None,
        "outcome_ci": _interval(figs.outcome),
        "invalid_rate": figs.invalid_rate,
        "errors": sum("error" in t.info for t in trajectories),
    }
    if seeds:
        rates = {str(s): float(np.mean([t.success for t in ts])) for s, ts in seeds.items() if ts}
        report["per_seed"] = rates
        report["seed_std"] = float(np.std(list(rates.values()), ddof=1)) if len(rates) > 1 else 0.0
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.items()}


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
    tasks = _tasks(env, cfg.episodes)
    start = time.perf_counter()
    by_seed: dict[int, list[Trajectory]] = {}
    policy = _load_policy(cfg, dist) if kind in MODEL_POLICIES else None
    for seed in range(cfg.seeds):
        if kind in SCRIPTED:
            rng = np.random.default_rng(seed)
            trajs = []
            for k, task in enumerate(tasks):
                trajs.append(
                    _play_scripted(env, kind, task, stream_seed(seed, k), cfg.max_turns, rng, f"s{seed}-{k}")
                )
                if progress and (k + 1) % max(1, len(tasks) // 10) == 0:
                    progress(f"seed {seed}: {k + 1}/{len(tasks)} episodes")
        else:
            trajs = _play_policy(cfg, policy, env_kwargs, tasks, seed, dist)
            if progress:
                progress(f"seed {seed}: {len(trajs)} episodes")
        by_seed[seed] = trajs
    env.close()
    trajectories = [t for ts in by_seed.values() for t in ts]
    report = summarize(trajectories, by_seed)
    report.update(
        env=cfg.env, policy=cfg.policy, seconds=round(time.perf_counter() - start, 3), processes=dist.world
    )
    if not dist.main:
        return report
    write_trajectories(out / "eval" / "episodes.jsonl", trajectories)
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
