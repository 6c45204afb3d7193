"""The evaluator: what an evaluation plays (``EvalSpec``), playing it (``play``) and its report
(``summarize``; ``evaluate`` does all three). Training's before/after evaluation and ``agentrl eval``
both go through here, so the same policy on the same spec plays the same episodes, on the same
prompts, and is reported under the same names.

Seeds: an evaluation plays ``spec.seeds`` rounds over its tasks. In round ``s`` every episode of
task ``k`` resets with env seed ``spec.seed + s * STRIDE + k``, and the policy samples from
``spec.seed + s`` (process ``rank`` from ``rank_seed(spec.seed + s, rank)``; the random policy's
generator is seeded with it too). A training run evaluates one round with ``spec.seed =
eval_seed(run seed)``; ``agentrl eval --seeds 3`` plays rounds 0, 1 and 2 from ``spec.seed = 0``.
With several processes each plays its share of the tasks with the seeds one process would give
them, and every process gets all the episodes.

The report: ``success_rate`` with its 95% Wilson interval (``ci_low``, ``ci_high``) over
``episodes``; ``per_type`` (each with its interval); ``reward_mean`` (the mean episode outcome)
and ``turns_mean`` with bootstrap intervals (``reward_mean_ci``, ``turns_mean_ci``);
``invalid_rate``; ``errors`` (episodes ended by an env or policy error); ``per_seed`` (success per
round) and ``seed_std``. Reports written before there was one evaluator call the mean outcome
``outcome_mean`` and the mean length ``mean_steps``; ``current_names`` reads them with today's names.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agentrl.agents import PromptSettings
from agentrl.distributed import SINGLE, Dist
from agentrl.policies.base import Policy, SamplingParams
from agentrl.rollout import ACTION_CHOICES, rollout
from agentrl.seeding import STRIDE, rank_seed
from agentrl.stats import Interval, bootstrap_mean, wilson
from agentrl.types import Step, Trajectory, write_trajectories

__all__ = [
    "RENAMED",
    "SCRIPTED",
    "EvalFigures",
    "EvalSpec",
    "current_names",
    "episode_figures",
    "evaluate",
    "finite",
    "play",
    "select_tasks",
    "summarize",
    "task_type",
]

SCRIPTED = ("random", "expert")  # policies played from the env's info instead of a model
RENAMED = {  # report keys of files written before there was one evaluator -> today's
    "outcome_mean": "reward_mean",
    "outcome_ci": "reward_mean_ci",
    "mean_steps": "turns_mean",
    "mean_steps_ci": "turns_mean_ci",
}


@dataclass(frozen=True)
class EvalSpec:
    """What an evaluation plays: tasks ``task_start .. task_start + task_count - 1`` of the env,
    each ``episodes_per_task`` times in each of ``seeds`` rounds (seeded from ``seed``), with these
    decoding and prompt settings. A training run builds its own from its config
    (``TrainConfig.eval_spec``), and ``agentrl eval`` on a run's checkpoint starts from that one."""

    task_start: int = 0
    task_count: int = 50
    episodes_per_task: int = 1
    seed: int = 0
    seeds: int = 1
    max_turns: int = 50
    temperature: float = 0.0
    max_new_tokens: int = 256
    prompt: PromptSettings = field(default_factory=PromptSettings)
    action_choice: str = "generate"  # rollout's: "admissible" picks among the env's admissible actions

    def __post_init__(self) -> None:
        if isinstance(self.prompt, Mapping):  # read back from JSON
            object.__setattr__(self, "prompt", PromptSettings(**self.prompt))
        for name in ("task_count", "episodes_per_task", "seeds", "max_turns", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.action_choice not in ACTION_CHOICES:
            raise ValueError(
                f"action_choice must be one of {', '.join(ACTION_CHOICES)}, got {self.action_choice!r}"
            )
        if self.task_start < 0 or self.temperature < 0:
            raise ValueError(
                f"task_start and temperature must be >= 0, got {self.task_start} and {self.temperature}"
            )

    def round_seeds(self) -> list[tuple[int, int]]:
        """Each round's (sampling seed, env seed of its first task)."""
        return [(self.seed + s, self.seed + s * STRIDE) for s in range(self.seeds)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def select_tasks(env: Any, spec: EvalSpec) -> list[str | None]:
    """The spec's task ids of ``env`` (cycling when it has fewer), or None per task for an env
    that lists no tasks (each episode's task then comes from its seed; scripted policies only)."""
    ids = list(env.task_ids())
    if not ids:
        return [None] * spec.task_count
    return [ids[(spec.task_start + k) % len(ids)] for k in range(spec.task_count)]


# ----------------------------------------------------------------------------- playing


def play(
    policy: Policy | str,
    envs: Any,
    tasks: Sequence[str | None],
    spec: EvalSpec,
    *,
    dist: Dist = SINGLE,
    id_prefix: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[list[Trajectory]]:
    """Play ``spec`` on ``tasks``: the episodes of each round, in task order.

    ``policy``: a model policy (rolled out on ``envs``, a list of envs or an env pool, by
    ``agentrl.rollout``) or "random" / "expert" (played on ``envs[0]``, in one process). Episode ids
    are ``{prefix}g{k}-{n}`` for the n-th episode of task k; the prefix is ``id_prefix`` (default
    ``s{round}-``, with ``s{round}-`` appended when given and there are several rounds) followed
    by ``r{rank}-`` on several processes."""
    if not tasks:
        raise ValueError("an evaluation needs at least one task")
    rounds: list[list[Trajectory]] = []
    for s, (sample_seed, env_seed) in enumerate(spec.round_seeds()):
        if id_prefix is None:
            prefix = f"s{s}-"
        else:
            prefix = id_prefix if spec.seeds == 1 else f"{id_prefix}s{s}-"
        if isinstance(policy, str):
            say = None if progress is None else (lambda line, s=s: progress(f"seed {s}: {line}"))
            trajs = _play_scripted(envs[0], policy, tasks, spec, sample_seed, env_seed, prefix, say)
        else:
            trajs = _play_policy(policy, envs, tasks, spec, sample_seed, env_seed, prefix, dist)
            if progress is not None:
                progress(f"seed {s}: {len(trajs)} episodes")
        rounds.append(trajs)
    return rounds


def _play_policy(
    policy: Policy,
    envs: Any,
    tasks: Sequence[str | None],
    spec: EvalSpec,
    sample_seed: int,
    env_seed: int,
    prefix: str,
    dist: Dist,
) -> list[Trajectory]:
    if any(t is None for t in tasks):
        raise ValueError(
            "the env does not list its tasks (task_ids() is empty); policy evaluation needs task ids"
        )
    params = SamplingParams(
        temperature=spec.temperature,
        max_new_tokens=spec.max_new_tokens,
        seed=rank_seed(sample_seed, dist.rank),
    )
    mine = dist.share(range(len(tasks)))
    groups = (
        rollout(
            policy,
            envs,
            [str(tasks[k]) for k in mine],
            spec.episodes_per_task,
            max_turns=spec.max_turns,
            params=params,
            builder=spec.prompt.builder(),
            seeds=[env_seed + k for k in mine],
            id_prefix=f"{prefix}r{dist.rank}-" if dist.active else prefix,
            action_choice=spec.action_choice,
        )
        if mine
        else []
    )
    return [t for g in dist.gather(groups) for t in g]


def _play_scripted(
    env: Any,
    kind: str,
    tasks: Sequence[str | None],
    spec: EvalSpec,
    sample_seed: int,
    env_seed: int,
    prefix: str,
    progress: Callable[[str], None] | None,
) -> list[Trajectory]:
    if kind not in SCRIPTED:
        raise ValueError(f"scripted policies are {', '.join(SCRIPTED)}; got {kind!r}")
    rng = np.random.default_rng(sample_seed)
    trajs = []
    for k, task in enumerate(tasks):
        for n in range(spec.episodes_per_task):
            trajs.append(
                _scripted_episode(env, kind, task, env_seed + k, spec.max_turns, rng, f"{prefix}g{k}", n)
            )
        if progress and (k + 1) % max(1, len(tasks) // 10) == 0:
            progress(f"{(k + 1) * spec.episodes_per_task}/{len(tasks) * spec.episodes_per_task} episodes")
    return trajs


def _scripted_episode(
    env: Any,
    kind: str,
    task_id: str | None,
    seed: int,
    max_turns: int,
    rng: np.random.Generator,
    group_id: str,
    n: int,
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
        group_id,
        f"{group_id}-{n}",
        steps,
        terminated=bool(terminated),
        truncated=not terminated,
        success=bool(info.get("success", False)),
        info=traj_info,
    )


# ----------------------------------------------------------------------------- figures


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (bools excluded), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


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


@dataclass
class EvalFigures:
    """The evaluation numbers of a set of episodes and where they came from."""

    success: Interval | None = None
    per_type: dict[str, Interval] = field(default_factory=dict)
    mean_steps: Interval | None = None
    outcome: Interval | None = None
    invalid_rate: float | None = None
    invalid_detail: str = ""
    sources: list[str] = field(default_factory=list)


def episode_figures(trajectories: Sequence[Trajectory]) -> EvalFigures:
    """Success (Wilson), per type (Wilson), mean steps and outcome (bootstrap), invalid-action rate."""
    figs = EvalFigures()
    if not trajectories:
        return figs
    n = len(trajectories)
    figs.success = wilson(sum(bool(t.success) for t in trajectories), n)
    by_type: dict[str, list[bool]] = defaultdict(list)
    for t in trajectories:
        by_type[task_type(t)].append(bool(t.success))
    figs.per_type = {k: wilson(sum(v), len(v)) for k, v in sorted(by_type.items())}
    figs.mean_steps = bootstrap_mean([len(t.steps) for t in trajectories])
    outcomes = [finite(t.outcome) for t in trajectories]
    if all(o is not None for o in outcomes):
        figs.outcome = bootstrap_mean([o for o in outcomes if o is not None])
    steps = sum(len(t.steps) for t in trajectories)
    invalid = sum(not s.valid for t in trajectories for s in t.steps)
    if steps:
        figs.invalid_rate = invalid / steps
        figs.invalid_detail = f"{invalid} of {steps} steps"
    return figs


def _interval(iv: Interval | None) -> dict[str, float] | None:
    return None if iv is None else {"value": iv.value, "ci_low": iv.low, "ci_high": iv.high}


def summarize(rounds: Sequence[Sequence[Trajectory]]) -> dict[str, Any]:
    """The report of an evaluation's episodes (one list per round; see the module docstring)."""
    trajs = [t for r in rounds for t in r]
    n = len(trajs)
    wins = sum(bool(t.success) for t in trajs)
    figs = episode_figures(trajs)
    success = wilson(wins, n)
    outcomes = [finite(t.outcome) for t in trajs]
    rates = {str(s): float(np.mean([bool(t.success) for t in r])) for s, r in enumerate(rounds) if r}
    report: dict[str, Any] = {
        "success_rate": wins / n if n else 0.0,
        "ci_low": success.low,
        "ci_high": success.high,
        "episodes": n,
        "per_type": {
            k: {"success_rate": v.value, "ci_low": v.low, "ci_high": v.high, "episodes": v.n}
            for k, v in figs.per_type.items()
        },
        # plain sums, as training's summary.json has always had them
        "reward_mean": sum(o for o in outcomes if o is not None) / n
        if n and figs.outcome is not None
        else None,
        "reward_mean_ci": _interval(figs.outcome),
        "turns_mean": sum(len(t) for t in trajs) / n if n else None,
        "turns_mean_ci": _interval(figs.mean_steps),
        "invalid_rate": figs.invalid_rate,
        "errors": sum("error" in t.info for t in trajs),
        "per_seed": rates,
        "seed_std": float(np.std(list(rates.values()), ddof=1)) if len(rates) > 1 else 0.0,
    }
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.items()}


def current_names(report: Mapping[str, Any]) -> dict[str, Any]:
    """A report read from a file, with the old names of renamed keys (``RENAMED``) read as today's."""
    out = dict(report)
    for old, new in RENAMED.items():
        if old in out and new not in out:
            out[new] = out.pop(old)
    return out


def evaluate(
    policy: Policy | str,
    envs: Any,
    tasks: Sequence[str | None],
    spec: EvalSpec,
    *,
    dist: Dist = SINGLE,
    episodes_path: str | os.PathLike[str] | None = None,
    id_prefix: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """``play`` then ``summarize``; the report also holds the spec it played (``settings``; no
    prompt for scripted policies) and its ``seconds``. ``episodes_path``: write the episodes there
    too (JSONL, for ``agentrl view``; rank 0 writes)."""
    start = time.perf_counter()
    rounds = play(policy, envs, tasks, spec, dist=dist, id_prefix=id_prefix, progress=progress)
    if episodes_path is not None and dist.main:
        Path(episodes_path).parent.mkdir(parents=True, exist_ok=True)
        write_trajectories(episodes_path, [t for r in rounds for t in r])
    report = summarize(rounds)
    settings = spec.to_dict()
    if isinstance(policy, str):
        settings["prompt"] = None
    report["settings"] = settings
    report["seconds"] = time.perf_counter() - start
    return report
