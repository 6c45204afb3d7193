"""Credit benchmark, learning part: every method trains the same policy on the same tasks and seeds.

For each seed the tiny model and its SFT warm start are built once (a training run with
``optim.iterations=0``) and every method of that seed starts from them: only
``algorithm.estimator`` changes, plus what a method needs to run at all (``method_overrides``:
HiPER's response format, MT-GRPO's K-turn variant on envs without tool calls) and a rate the method
declares at registration (``benchmark_lr_scale``: HiPER trains at half the family's). HiPER writes
another response format, so it gets its own warm start, SFT on the same tasks in its format.

Per method and iteration the training rollouts' success (``metrics.jsonl``), pooled over seeds,
gets a 95% Wilson interval; the trainer's held-out evaluation (``summary.json``: before and
after RL) gets one too. ``credit_learning`` writes ``learning.md``, ``learning.json`` and
``learning.png`` and returns what it wrote to ``learning.json``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import shutil
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentrl.agents import get_format
from agentrl.config import ConfigError, TrainConfig, dump_config, load_config
from agentrl.credit import available_estimators, estimator_info
from agentrl.stats import t95, t_mean, wilson

__all__ = [
    "BUILTIN_CONFIG",
    "FAMILIES",
    "credit_learning",
    "draw_spread",
    "format_warm_start",
    "learning_markdown",
    "learning_plot",
    "merge_draws",
    "method_overrides",
    "paired_differences",
    "ranking",
    "seeds_needed",
    "trainable_estimators",
]

# Task families. Both are the maze with one key colour (a random-init tiny model cannot learn to copy
# a colour it read), the current observation only (history_k 0: with the last one shown too, the
# prompt holds two 'Exits:' lines and the tiny model copies a direction from the wrong one, which made
# SFT succeed or fail by seed and was why seeds 1 and 2 of the old 8-iteration config did not learn),
# and the env's verifiable turn rewards (first key, door, room) for the turn-level methods. The model,
# SFT and RL settings are the quickstart's (configs/quickstart.yaml, which learns on seeds 0-4): a
# 2-layer hidden-128 Qwen2, one SFT epoch over 1,600 expert plans, 50 iterations of 8 groups x 4. A
# hidden-64 model was tried and dropped: one SFT epoch left 40% of its actions invalid (10% success),
# three made it 86% successful and nearly deterministic, and 20-40 RL iterations from either moved
# held-out success by -7 to +9 points depending on the seed. One torch thread per run: on two cores,
# two runs of one thread each beat one run of two. Evaluation samples at temperature 1 with the same
# seeded draws for every method: the maze is partially observable, so a greedy policy loops where a
# sampled one gets through, and RL optimises the sampled policy.
_MAZE: dict[str, Any] = {
    "seed": 0,
    "model": {
        "tiny": {
            "vocab_size": 512,
            "layers": 2,
            "hidden": 128,
            "heads": 4,
            "kv_heads": 2,
            "corpus_tasks": 50,
        },
        "device": "cpu",
        "torch_threads": 1,
    },
    "lora": {"r": 8, "alpha": 16},
    # 6 steps for plans of 3-5: a wasted step (a wall, the locked door again, a step back) is often fatal
    "env": {
        "name": "maze",
        "kwargs": {
            "size": 2,
            "n_doors": 1,
            "max_steps": 6,
            "num_tasks": 2000,
            "colours": 1,
            "turn_rewards": True,
        },
        "train_tasks": {"start": 0, "count": 1000},
        "num_envs": 32,
    },
    "rollout": {
        "groups": 8,
        "group_size": 4,
        "max_turns": 6,
        "history_k": 0,
        "response_format": "think_action",
        "max_new_tokens": 8,
        "system_prompt": "Reach the goal room.",
        "temperature": 1.0,
    },
    "algorithm": {"kl_coef": 0.01, "epochs": 2, "minibatch_size": 32, "micro_batch_size": 32},
    "optim": {"iterations": 50, "lr": 0.001, "critic_lr": 0.01},
    "sft": {
        "enabled": True,
        "tasks": {"start": 0, "count": 1600},
        "epochs": 1,
        "lr": 0.002,
        "batch_size": 32,
    },
    # 1000 held-out episodes (200 mazes x 5): the paired difference of two methods has an evaluation
    # standard error of ~2 points
    "eval": {
        "enabled": True,
        "tasks": {"start": 1800, "count": 200},
        "episodes_per_task": 5,
        "temperature": 1.0,
    },
    "logging": {"tensorboard": False, "checkpoint_every": 10, "keep_checkpoints": 1},
}
# The long-horizon family: 3x3 mazes with loops (extra passages), where rooms repeat within and
# across episodes and plans need up to 11 steps (6.4 on average); 24 steps allowed.
_MAZE_LONG: dict[str, Any] = {
    **_MAZE,
    "env": {
        "name": "maze",
        "kwargs": {
            "size": 3,
            "n_doors": 1,
            "max_steps": 24,
            "num_tasks": 2000,
            "colours": 1,
            "turn_rewards": True,
        },
        "train_tasks": {"start": 0, "count": 1000},
        "num_envs": 32,
    },
    "rollout": {**_MAZE["rollout"], "max_turns": 24},
}
FAMILIES: dict[str, dict[str, Any]] = {"maze": _MAZE, "maze_long": _MAZE_LONG}
BUILTIN_CONFIG = _MAZE  # the first family: the default base of a one-family run
DEFAULT_BASELINE = "grpo"
DRAW_STRIDE = 1000  # draw d of seed S trains with seed S + DRAW_STRIDE * d

# StepBatch fields the trainer fills on any env: state keys from the env, turn rewards from
# rollout.turn_reward=valid, response token ids from rollout; the response format adds its own
# (HiPER's tags, tool calls).
_TRAINER_FIELDS = {"state_key", "turn_reward", "response_ids"}
_TRAINER_INPUTS = {"values", "token_stats"}  # value heads; the scoring pass's per-token statistics

Progress = Callable[[str], None]


def trainable_estimators(response_format: str = "think_action") -> list[str]:
    """Registered estimators whose fields and inputs the trainer can supply in ``response_format``
    (HDPO needs a tool env's ``tool_call``; SPO-chain chain rollouts, ``value_only``, whose value
    continuations cost env steps the other methods do not get); an estimator that declares its own
    response format runs in it."""
    out = []
    for name in available_estimators():
        info = estimator_info(name)
        fields = _TRAINER_FIELDS | set(get_format(info.response_format or response_format).fields)
        if set(info.fields) <= fields and set(info.inputs) <= _TRAINER_INPUTS:
            out.append(name)
    return out


def method_overrides(estimator: str, base: TrainConfig) -> list[str]:
    """The overrides that turn the base config into ``estimator``'s run: the estimator with its default
    options, what the method cannot train without, and its rate (``EstimatorInfo.benchmark_lr_scale``)."""
    info = estimator_info(estimator)
    out = [f"algorithm.estimator={estimator}", "algorithm.options={}"]
    if info.response_format is not None:
        out.append(f"rollout.response_format={info.response_format}")
        floor = get_format(info.response_format).min_new_tokens
        if floor > base.rollout.max_new_tokens:
            out.append(f"rollout.max_new_tokens={floor}")
    elif base.rollout.response_format != "tool_call" and "tool_call" in info.options_if_missing:
        options = info.options_if_missing["tool_call"]
        out.append("algorithm.options={" + ", ".join(f"{k}: {v}" for k, v in options.items()) + "}")
    if info.benchmark_lr_scale != 1.0:
        out.append(f"optim.lr={base.optim.lr * info.benchmark_lr_scale!r}")
    return out


def format_warm_start(fmt: str, base: TrainConfig) -> list[str]:
    """The overrides ``fmt``'s warm start adds to the family's config: what the format declares a tiny
    model needs (``ResponseFormat.whole_words``, ``min_sft_epochs``)."""
    spec = get_format(fmt)
    out = [f"model.tiny.whole_words=[{', '.join(spec.whole_words)}]"] if spec.whole_words else []
    if spec.min_sft_epochs > base.sft.epochs:
        out.append(f"sft.epochs={spec.min_sft_epochs}")
    return out


def _own_tiny(plan: _Plan, fmt: str) -> bool:
    """Whether ``fmt``'s warm start builds its own tiny model (its tokenizer keeps words whole)
    rather than sharing the seed's."""
    return plan.base.model.path is None and bool(get_format(fmt).whole_words)


def _response_format(estimator: str, base: TrainConfig) -> str:
    return estimator_info(estimator).response_format or base.rollout.response_format


def _prepare_run(config_path: Path, overrides: list[str], run_dir: Path) -> bool:
    """Validate a run's config; True when ``run_dir`` already holds a run of exactly this config.

    A directory holding another config is refused, so a rerun never mixes in stale results. The saved
    ``out_dir`` is not compared: a benchmark directory reached by another path (moved, symlinked) holds
    the same runs. The saved config is read back with today's defaults, so a run saved before a new
    setting existed (at its default) still counts."""
    cfg = load_config(config_path, overrides)
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return False
    try:
        old = load_config(saved)
    except ConfigError as e:
        raise ConfigError(
            f"{run_dir} holds a run whose config no longer loads ({e}); delete it or choose another output directory"
        ) from None
    if dump_config(old) != dump_config(cfg.model_copy(update={"out_dir": old.out_dir})):
        raise ConfigError(
            f"{run_dir} holds a run with a different config; choose another output directory or delete it"
        )
    return True


def _pooled(parts: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """Successes and episodes summed over seeds, with a 95% Wilson interval."""
    k, n = sum(p[0] for p in parts), sum(p[1] for p in parts)
    iv = wilson(k, n)
    return {
        "success_rate": iv.value,
        "ci_low": iv.low,
        "ci_high": iv.high,
        "successes": k,
        "episodes": n,
        "per_seed": [p[0] / p[1] if p[1] else math.nan for p in parts],
    }


def _wins(rate: float, episodes: int) -> int:
    return round(rate * episodes)


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def credit_learning(
    out_dir: str | Path,
    *,
    config: str | Path | None = None,
    families: Sequence[str] | None = None,
    estimators: Sequence[str] | None = None,
    seeds: Sequence[int] = (0,),
    iterations: int | None = None,
    overrides: Sequence[str] = (),
    baseline: str = DEFAULT_BASELINE,
    jobs: int = 1,
    draws: int = 1,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train every estimator from the same warm start per family and seed; write learning.md/json/png
    into ``out_dir`` (runs under ``out_dir/<family>/seed<S>/<method>/``) and return the JSON content.

    ``config``: one custom base config (its file stem names the family) instead of the built-in
    ``families`` (None: all of ``FAMILIES``); ``overrides`` apply to every base config;
    ``iterations``: RL iterations per run (None: the config's); ``baseline``: the method every other
    one is paired against (skipped when not among ``estimators``); ``jobs``: runs trained at once,
    each in its own process (1: in this process). A rerun with the same settings reuses finished runs.
    ``draws``: RL runs per method, seed and warm start (training seeds ``seed + DRAW_STRIDE * d``,
    every one evaluated on the seed's draws, ``eval.seed``); a method's result for a seed is the mean
    over its draws, so the paired differences carry less training randomness without another warm
    start. Draw 0 is the run a one-draw benchmark makes (``<method>/``), the others go to
    ``<method>-draw<d>/``.
    """
    say = progress or (lambda msg: None)
    t_start = time.time()
    out = Path(out_dir)
    if not seeds:
        raise ConfigError("need at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct, got {list(seeds)}")
    if jobs < 1:
        raise ConfigError(f"jobs must be at least 1, got {jobs}")
    if draws < 1:
        raise ConfigError(f"draws must be at least 1, got {draws}")
    if config is not None and families:
        raise ConfigError("give either a config file or built-in families, not both")
    if config is not None and not Path(config).is_file():
        raise ConfigError(f"config file {config} does not exist")
    bases: dict[str, str]
    if config is not None:
        bases = {Path(config).stem: Path(config).read_text()}
    else:
        chosen = list(families) if families else list(FAMILIES)
        unknown = [f for f in chosen if f not in FAMILIES]
        if unknown:
            raise ConfigError(
                f"unknown task famil{'ies' if len(unknown) > 1 else 'y'} {unknown}; allowed: {', '.join(FAMILIES)}"
            )
        bases = {f: yaml.safe_dump(FAMILIES[f], sort_keys=False) for f in dict.fromkeys(chosen)}
    common = list(overrides) + ([f"optim.iterations={iterations}"] if iterations is not None else [])
    plans = [
        _plan(name, text, out / name, common, estimators) for name, text in bases.items()
    ]  # validates before training
    for plan in plans:
        say(
            f"{plan.family}: {len(plan.names)} methods x {len(seeds)} seed(s)"
            + (f" x {draws} draws" if draws > 1 else "")
            + f" x {plan.base.optim.iterations} iterations "
            f"({plan.base.rollout.groups}x{plan.base.rollout.group_size} episodes each), "
            f"eval on {plan.base.eval.tasks.count * plan.base.eval.episodes_per_task} held-out episodes"
        )

    # Warm starts: per family and seed, the first response format builds the tiny model (and SFT), later
    # formats reuse that tiny model. A method run is queued as soon as its warm start is done, so no
    # worker waits for the last warm start while method runs could go.
    warm: dict[str, dict[str, Any]] = {}
    starts: dict[tuple[str, int, str], str] = {}
    tiny: dict[tuple[str, int], str | None] = {(p.family, s): p.base.model.path for p in plans for s in seeds}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {p.family: {n: [] for n in p.names} for p in plans}
    sched = _Scheduler(jobs)

    def warm_job(plan: _Plan, seed: int, fmt: str) -> _Job:
        run_dir = plan.dir / f"seed{seed}" / f"warm-{fmt}"
        # the same warm start whichever methods are asked for, so another selection reuses it
        estimator = (
            DEFAULT_BASELINE
            if _response_format(DEFAULT_BASELINE, plan.base) == fmt
            else next(n for n in plan.names if _response_format(n, plan.base) == fmt)
        )
        ov = (
            common
            + method_overrides(estimator, plan.base)
            + [f"seed={seed}", f"model.tiny.seed={seed}", "optim.iterations=0"]
            + format_warm_start(fmt, plan.base)
        )
        shared = tiny[(plan.family, seed)]
        ov += [f"model.path={shared}"] if shared is not None and not _own_tiny(plan, fmt) else []
        return _Job(
            f"{plan.family} seed {seed} warm start ({fmt})",
            plan.config_path,
            ov,
            run_dir,
            (run_dir / "eval_before.json",),
            ("warm", plan, seed, fmt, 0),
        )

    def queue_methods(plan: _Plan, seed: int, fmt: str, warm_dir: Path | None) -> None:
        for draw in range(draws):  # every method's draw 0 first
            for name in plan.names:
                if _response_format(name, plan.base) != fmt:
                    continue
                run_dir = plan.dir / f"seed{seed}" / (name if draw == 0 else f"{name}-draw{draw}")
                if warm_dir is not None:
                    _share_before(warm_dir, run_dir)
                ov = (
                    common
                    + plan.per_method[name]
                    + [f"seed={seed}", f"model.path={starts[(plan.family, seed, fmt)]}", "sft.enabled=false"]
                    + ([f"seed={seed + DRAW_STRIDE * draw}", f"eval.seed={seed}"] if draw else [])
                )
                sched.submit(
                    _Job(
                        f"{plan.family} seed {seed} {name}" + (f" draw {draw}" if draw else ""),
                        plan.config_path,
                        ov,
                        run_dir,
                        (run_dir / "summary.json",),
                        ("method", plan, seed, name, draw),
                    )
                )

    for plan in plans:
        for seed in seeds:
            given = tiny[(plan.family, seed)]
            if (
                given is not None and not plan.base.sft.enabled
            ):  # every method evaluates the given model itself
                for fmt in plan.formats:
                    starts[(plan.family, seed, fmt)] = given
                    queue_methods(plan, seed, fmt, None)
            else:
                sched.submit(warm_job(plan, seed, plan.formats[0]))
    total, done, fresh, fresh_seconds = sum(len(p.names) for p in plans) * len(seeds) * draws, 0, 0, 0.0
    for job, seconds, reused in sched.results():
        kind, plan, seed, what, draw = job.tag
        elapsed = f"elapsed {_clock(time.time() - t_start)}"
        if kind == "warm":
            built = str(job.run_dir / "tiny-model")
            if tiny[(plan.family, seed)] is None and not _own_tiny(plan, what):
                tiny[(plan.family, seed)] = built
            model = built if _own_tiny(plan, what) else tiny[(plan.family, seed)]
            start = str(job.run_dir / "sft-model") if plan.base.sft.enabled else str(model)
            starts[(plan.family, seed, what)] = start
            warm[f"{plan.family}/seed{seed}/{what}"] = {
                "family": plan.family,
                "seed": seed,
                "response_format": what,
                "model": start,
                "seconds": seconds,
                "reused": reused,
            }
            say(f"{job.label}: {start} in {_clock(seconds)}{' (reused)' if reused else ''}; {elapsed}")
            if what == plan.formats[0]:
                for other in plan.formats[1:]:
                    sched.submit(warm_job(plan, seed, other))
            queue_methods(plan, seed, what, job.run_dir)
            continue
        run = _read_run(job.run_dir, seed, seconds, reused, draw)
        runs[plan.family][what].append(run)
        done += 1
        if not reused:
            fresh_seconds, fresh = fresh_seconds + seconds, fresh + 1
        left = f", ~{_clock((total - done) * fresh_seconds / fresh / jobs)} left" if fresh else ""
        say(f"[{done}/{total}] {job.label}: {_run_line(run)}; {elapsed}{left}")

    fam_results: dict[str, dict[str, Any]] = {}
    for plan in plans:
        per = {n: sorted(runs[plan.family][n], key=lambda r: seeds.index(r["seed"])) for n in plan.names}
        fam_results[plan.family] = {
            "config": "built-in" if config is None else str(config),
            "base_config": str(plan.config_path),
            "iterations": plan.base.optim.iterations,
            "episodes_per_iteration": plan.base.rollout.groups * plan.base.rollout.group_size,
            "eval_episodes": plan.base.eval.tasks.count * plan.base.eval.episodes_per_task,
            "eval_temperature": plan.base.eval.temperature,
            "sft": plan.base.sft.enabled,
            "methods": {
                n: {
                    **_summarise(
                        plan.per_method[n], _start_label(n, plan.base), per[n], plan.base.optim.iterations
                    ),
                    "update": {"loss": plan.updates[n][0], "clip": list(plan.updates[n][1:])},
                }
                for n in plan.names
            },
            "paired": paired_differences({n: merge_draws(r) for n, r in per.items()}, baseline)
            if baseline in per
            else {},
        }
    result: dict[str, Any] = {
        "families": fam_results,
        "overrides": list(overrides),
        "seeds": list(seeds),
        "draws": draws,
        "baseline": baseline,
        "ranking": ranking(fam_results),
        "warm_starts": warm,
        "jobs": jobs,
        "seconds": time.time() - t_start,
    }
    result["compute_seconds"] = sum(w["seconds"] for w in warm.values()) + sum(
        m["seconds"] for f in fam_results.values() for m in f["methods"].values()
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning.json").write_text(json.dumps(result, indent=1))
    plotted = learning_plot(result, out / "learning.png")
    (out / "learning.md").write_text(
        learning_markdown(result, plot="learning.png" if plotted else None), encoding="utf-8"
    )
    say(
        f"wrote {out / 'learning.md'}, {out / 'learning.json'}"
        + (f", {out / 'learning.png'}" if plotted else " (no matplotlib: no plot)")
        + f" in {_clock(result['seconds'])}"
    )
    return result


@dataclass(frozen=True)
class _Plan:
    """One task family: its base config on disk and what each method overrides."""

    family: str
    dir: Path
    config_path: Path
    base: TrainConfig
    names: list[str]
    per_method: dict[str, list[str]]
    formats: list[str]
    # what each method's update runs with: (loss, clip_low, clip_high)
    updates: dict[str, tuple[str, float, float]]


def _plan(
    family: str, text: str, fam_dir: Path, common: list[str], estimators: Sequence[str] | None
) -> _Plan:
    """Write the family's base config and check every method's config before anything trains."""
    fam_dir.mkdir(parents=True, exist_ok=True)
    path = fam_dir / "base_config.yaml"
    path.write_text(text)
    base = load_config(path, common)
    if base.optim.iterations < 1:
        raise ConfigError(
            f"optim.iterations must be at least 1 for the learning benchmark, got {base.optim.iterations}"
        )
    if not base.eval.enabled:
        raise ConfigError(
            "the learning benchmark reports the held-out evaluation: set eval.enabled: true in the base config"
        )
    names = (
        list(dict.fromkeys(estimators)) if estimators else trainable_estimators(base.rollout.response_format)
    )
    unknown = [n for n in names if n not in available_estimators()]
    if unknown:
        raise ConfigError(f"unknown estimator(s) {unknown}; allowed: {', '.join(available_estimators())}")
    trainable = trainable_estimators(base.rollout.response_format)
    untrainable = [n for n in names if n not in trainable]
    if untrainable:
        raise ConfigError(
            f"the trainer cannot supply what {untrainable} need here; trainable: {', '.join(trainable)}"
        )
    per_method = {n: method_overrides(n, base) for n in names}
    updates = {}
    for n in names:
        algo = load_config(path, common + per_method[n]).algorithm
        updates[n] = (algo.resolved_loss, *algo.clip_band)
    formats = list(dict.fromkeys(_response_format(n, base) for n in names))
    return _Plan(family, fam_dir, path, base, names, per_method, formats, updates)


@dataclass(frozen=True)
class _Job:
    label: str
    config_path: Path
    overrides: list[str]
    run_dir: Path
    outputs: tuple[Path, ...]
    tag: Any = field(compare=False)


class _Scheduler:
    """Trains queued jobs, ``jobs`` at a time in spawned processes (1: in this process, in queue
    order). ``results`` yields each finished job; jobs queued meanwhile (``submit``) are picked up."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.queue: deque[_Job] = deque()

    def submit(self, job: _Job) -> None:
        self.queue.append(job)

    def results(self) -> Iterator[tuple[_Job, float, bool]]:
        if self.jobs == 1:
            while self.queue:
                job = self.queue.popleft()
                yield (job, *_train_once(job.config_path, job.overrides, job.run_dir, list(job.outputs)))
            return
        ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
        with ProcessPoolExecutor(max_workers=self.jobs, mp_context=ctx) as pool:
            running: dict[Future[tuple[float, bool]], _Job] = {}
            while self.queue or running:
                while (
                    self.queue and len(running) < self.jobs
                ):  # no more than the workers: later jobs keep their place
                    job = self.queue.popleft()
                    running[
                        pool.submit(
                            _train_once, job.config_path, job.overrides, job.run_dir, list(job.outputs)
                        )
                    ] = job
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    yield (running.pop(fut), *fut.result())


def _share_before(warm_dir: Path, run_dir: Path) -> None:
    """Give a method run that has not started the warm start's evaluation as its "before": the same
    model, tasks and seeded draws would replay the same episodes (the trainer skips an evaluation
    whose eval_before.json exists)."""
    if (run_dir / "eval_before.json").exists() or (run_dir / "config.yaml").exists():
        return
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    if (warm_dir / "eval" / "before.jsonl").exists():
        shutil.copyfile(warm_dir / "eval" / "before.jsonl", run_dir / "eval" / "before.jsonl")
    shutil.copyfile(warm_dir / "eval_before.json", run_dir / "eval_before.json")


def _train_once(
    config_path: Path, overrides: list[str], run_dir: Path, outputs: list[Path]
) -> tuple[float, bool]:
    """Train unless ``run_dir`` holds a finished run of this config (its seconds stamp and ``outputs``);
    returns (wall seconds of the run, reused)."""
    from agentrl.trainers import train

    stamp = run_dir / "learning_run.json"
    if _prepare_run(config_path, overrides, run_dir) and stamp.exists() and all(p.exists() for p in outputs):
        return float(json.loads(stamp.read_text())["seconds"]), True
    t0 = time.time()
    train(config_path, run_dir, overrides)
    seconds = time.time() - t0
    stamp.write_text(json.dumps({"seconds": seconds}))
    return seconds, False


def _read_run(run_dir: Path, seed: int, seconds: float, reused: bool, draw: int = 0) -> dict[str, Any]:
    from agentrl.trainers.metrics import read_metrics

    records = sorted(read_metrics(run_dir / "metrics.jsonl"), key=lambda r: r["iteration"])
    summary = json.loads((run_dir / "summary.json").read_text())
    side = {
        k: (_wins(summary[k]["success_rate"], summary[k]["episodes"]), int(summary[k]["episodes"]))
        for k in ("before", "after")
    }
    return {
        "seed": seed,
        "draw": draw,
        "run_dir": str(run_dir),
        "seconds": seconds,
        "reused": reused,
        "iterations": [
            (int(r["iteration"]), _wins(r["success_rate"], int(r["episodes"])), int(r["episodes"]))
            for r in records
        ],
        "train_success": [float(r["success_rate"]) for r in records],
        **side,
    }


def _start_label(estimator: str, base: TrainConfig) -> str:
    return f"{_response_format(estimator, base)} SFT" if base.sft.enabled else "base model"


def _run_line(run: dict[str, Any]) -> str:
    """One run in a progress line: train success at the first and last iteration, eval before -> after."""
    train = run["train_success"]
    first, last = (train[0], train[-1]) if train else (math.nan, math.nan)
    (kb, nb), (ka, na) = run["before"], run["after"]
    return (
        f"train success {first:.2f} -> {last:.2f}, eval {kb / max(nb, 1):.2f} -> {ka / max(na, 1):.2f}, "
        f"{_clock(run['seconds'])}{' (reused)' if run['reused'] else ''}"
    )


def _summarise(
    overrides: list[str], start: str, runs: list[dict[str, Any]], iterations: int
) -> dict[str, Any]:
    curve = []
    for it in range(iterations):
        parts = [(k, n) for r in runs for (i, k, n) in r["iterations"] if i == it]
        if parts:
            curve.append({"iteration": it, **_pooled(parts)})
    return {
        "overrides": overrides,
        "start": start,
        "iterations": curve,
        # a seed's draws read one warm start on the same draws: its before is counted once
        "eval_before": _pooled([r["before"] for r in runs if r.get("draw", 0) == 0]),
        "eval_after": _pooled([r["after"] for r in runs]),
        "seconds": sum(r["seconds"] for r in runs),
        "draw_sd": draw_spread(merge_draws(runs)),
        "eval_sd": math.sqrt(statistics.fmean(_var(r["after"]) for r in runs)) if runs else math.nan,
        "runs": [{k: r.get(k, 0) for k in ("seed", "draw", "run_dir", "seconds", "reused")} for r in runs],
    }


def draw_spread(seeds: list[dict[str, Any]]) -> float | None:
    """The standard deviation of after-RL success between draws of one seed, pooled over the seeds
    (``merge_draws`` records): the training randomness of one run from a fixed warm start, read on
    fixed evaluation draws, its evaluation noise included; None without a seed of two or more draws."""
    groups = [r["after_draws"] for r in seeds if len(r.get("after_draws", ())) > 1]
    if not groups:
        return None
    ss = sum(sum((x - statistics.fmean(v)) ** 2 for x in v) for v in groups)
    return math.sqrt(ss / sum(len(v) - 1 for v in groups))


def merge_draws(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per seed from runs that may hold several draws of it: ``after`` sums the draws'
    successes and episodes (the mean over draws, each with the same number of episodes), ``before``
    is draw 0's (every draw reads the same warm start on the same evaluation draws)."""
    by_seed: dict[int, list[dict[str, Any]]] = {}
    for r in runs:
        by_seed.setdefault(r["seed"], []).append(r)
    out = []
    for seed, rs in by_seed.items():
        rs = sorted(rs, key=lambda r: r.get("draw", 0))
        out.append(
            {
                "seed": seed,
                "draws": len(rs),
                "before": rs[0]["before"],
                "after": (sum(r["after"][0] for r in rs), sum(r["after"][1] for r in rs)),
                "after_draws": [_frac(r["after"]) for r in rs],
            }
        )
    return out


def paired_differences(runs: dict[str, list[dict[str, Any]]], baseline: str) -> dict[str, dict[str, Any]]:
    """Per method: held-out success after RL minus the baseline's, seed by seed (same tasks, same
    warm start, same evaluation draws), with a 95% Student-t interval over seeds; and the method's own
    gain (after minus before) the same way. The interval spans training randomness as well as
    evaluation noise; ``eval_se`` is the evaluation part alone (binomial, per seed, averaged) and
    ``seeds_for_3pt`` how many seeds would bring the half-width to 3 points at this spread.

    With draws (``merge_draws`` records of two or more draws for the method and the baseline), the
    spread of the per-seed differences splits into a between-draw part (both methods' pooled
    between-draw variance over the draws per seed) and a between-seed part (the rest, at least 0),
    and ``seeds_for_3pt_by_draws`` gives the seeds needed for 1, 2, 4 and 8 draws per seed."""
    base = {r["seed"]: r for r in runs[baseline]}
    out = {}
    for name, rs in runs.items():
        rs = [r for r in rs if r["seed"] in base]
        gains = [_frac(r["after"]) - _frac(r["before"]) for r in rs]
        entry: dict[str, Any] = {
            "seeds": [r["seed"] for r in rs],
            "gain": _iv(t_mean(gains)) if rs else None,
            "gain_per_seed": gains,
        }
        if name != baseline and rs:
            diffs = [_frac(r["after"]) - _frac(base[r["seed"]]["after"]) for r in rs]
            iv = t_mean(diffs)
            se = [math.sqrt(_var(r["after"]) + _var(base[r["seed"]]["after"])) for r in rs]
            sd = statistics.stdev(diffs) if len(diffs) > 1 else math.nan
            entry.update(
                diff=_iv(iv),
                diff_per_seed=diffs,
                sd=sd,
                eval_se=sum(se) / len(se),
                resolved=bool(iv.low > 0 or iv.high < 0),
                seeds_for_3pt=seeds_needed(sd),
            )
            spreads = (draw_spread(rs), draw_spread(runs[baseline]))
            if len(diffs) > 1 and spreads[0] is not None and spreads[1] is not None:
                draw_var = spreads[0] ** 2 + spreads[1] ** 2
                k = min(len(r.get("after_draws", (0,))) for r in [*rs, *base.values()])
                between = max(0.0, sd**2 - draw_var / k)
                entry.update(
                    between_seed_sd=math.sqrt(between),
                    between_draw_sd=math.sqrt(draw_var),
                    seeds_for_3pt_by_draws={
                        str(d): seeds_needed(math.sqrt(between + draw_var / d)) for d in (1, 2, 4, 8)
                    },
                )
        out[name] = entry
    return out


def seeds_needed(sd: float, half_width: float = 0.03, most: int = 1000) -> int | None:
    """The fewest seeds whose 95% t-interval of a mean difference has half-width <= ``half_width``
    when the per-seed differences spread with standard deviation ``sd`` (None: unknown, or > most)."""
    if not math.isfinite(sd):
        return None
    for n in range(2, most + 1):
        if t95(n - 1) * sd / math.sqrt(n) <= half_width:
            return n
    return None


def ranking(families: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Methods ordered by their mean paired difference to the baseline, averaged over families (each
    family weighs the same); the interval combines the families' t-intervals (Welch-Satterthwaite
    degrees of freedom). ``resolved``: the interval excludes 0."""
    rows = []
    names = list(dict.fromkeys(n for f in families.values() for n in f["paired"]))
    for name in names:
        parts = [
            f["paired"][name]
            for f in families.values()
            if name in f["paired"] and "diff" in f["paired"][name]
        ]
        if not parts:
            continue
        k = len(parts)
        mean = sum(p["diff"]["mean"] for p in parts) / k
        var_terms = [(p["sd"] ** 2 / len(p["diff_per_seed"])) / k**2 for p in parts]
        if all(math.isfinite(v) for v in var_terms) and all(len(p["diff_per_seed"]) > 1 for p in parts):
            var = sum(var_terms)
            df = (
                var**2 / sum(v**2 / (len(p["diff_per_seed"]) - 1) for v, p in zip(var_terms, parts))
                if var > 0
                else 1.0
            )
            half = t95(max(1, int(df))) * math.sqrt(var)
            low, high = mean - half, mean + half
        else:
            low, high = -math.inf, math.inf
        rows.append(
            {
                "method": name,
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
                "families": k,
                "resolved": bool(low > 0 or high < 0),
            }
        )
    return sorted(rows, key=lambda r: -r["mean"])


def _frac(side: tuple[int, int] | list[int]) -> float:
    k, n = side
    return k / n if n else math.nan


def _var(side: tuple[int, int] | list[int]) -> float:
    k, n = side
    p = k / n if n else 0.0
    return p * (1 - p) / n if n else math.nan


def _iv(iv: Any) -> dict[str, float] | None:
    return None if iv is None else {"mean": iv.value, "ci_low": iv.low, "ci_high": iv.high, "n": iv.n}


def _rate(entry: dict[str, Any] | None) -> str:
    if entry is None or math.isnan(entry["success_rate"]):
        return "—"
    return f"{entry['success_rate']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def _pts(mean: float, low: float, high: float) -> str:
    """A difference in points with its interval."""
    if not math.isfinite(low):
        return f"{100 * mean:+.1f} (one seed: no interval)"
    return f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def learning_markdown(result: dict[str, Any], plot: str | None = None) -> str:
    """Markdown: per family the method table (train success at the first and last iteration, held-out
    success before/after RL, Wilson intervals) and the paired differences to the baseline; then the
    ranking over families."""
    seeds, baseline = result["seeds"], result["baseline"]
    lines = [
        "# Credit benchmark: learning",
        "",
        f"Every method trains the same policy on the same tasks and seeds ({len(seeds)} seed(s): {', '.join(map(str, seeds))}"
        + (
            f"; {result['draws']} RL draws per seed from its warm start, read on the seed's evaluation draws: a seed's "
            "after-RL success is the mean over its draws"
            if result.get("draws", 1) > 1
            else ""
        )
        + "); "
        "only the estimator and what it needs change. Per family and seed, methods with the same response format start "
        "from one shared warm start and are evaluated on the same held-out tasks with the same seeded draws, so methods "
        f"are compared **paired**: per seed, a method's held-out success after RL minus {baseline}'s, then the mean over "
        "seeds with a 95% Student-t interval (it covers training randomness, not only evaluation noise). Resolved: the "
        "interval excludes 0. Brackets in the method tables: 95% Wilson intervals over episodes, pooled over seeds"
        + (" (after RL: and draws; before RL: once per seed)" if result.get("draws", 1) > 1 else "")
        + (f"; overrides: {' '.join(result['overrides'])}" if result["overrides"] else "")
        + ".",
    ]
    if result["ranking"]:
        lines += [
            "",
            f"## Ranking (mean over families of the paired difference to {baseline}, points)",
            "",
            "| rank | method | difference to " + baseline + " | resolved |",
            "| --- | --- | --- | --- |",
        ]
        for i, r in enumerate(result["ranking"], start=1):
            lines.append(
                f"| {i} | {r['method']} | {_pts(r['mean'], r['ci_low'], r['ci_high'])} | {'yes' if r['resolved'] else 'no'} |"
            )
    for fam, f in result["families"].items():
        iters = f["iterations"]
        lines += [
            "",
            f"## {fam}",
            "",
            f"{iters} iterations of {f['episodes_per_iteration']} sampled episodes; held-out evaluation: {f['eval_episodes']} "
            "episodes per seed, "
            + (
                "greedy"
                if f["eval_temperature"] == 0
                else f"sampled at temperature {f['eval_temperature']:g}, seeded"
            )
            + f". Base config: {f['config']} ({f['base_config']}).",
            "",
        ]
        paired = f["paired"]
        if paired:
            lines += [
                f"| method | after RL minus {baseline} (points) | per seed | resolved | seeds for ±3 points | gain after−before (points) |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            order = sorted(paired, key=lambda n: -(paired[n]["diff"]["mean"] if "diff" in paired[n] else 0.0))
            for name in order:
                p = paired[name]
                g = p["gain"]
                gain = _pts(g["mean"], g["ci_low"], g["ci_high"]) if g else "—"
                if "diff" not in p:
                    lines.append(f"| {name} (baseline) | — | — | — | — | {gain} |")
                    continue
                d = p["diff"]
                per = ", ".join(f"{100 * x:+.1f}" for x in p["diff_per_seed"])
                need = "—" if p["seeds_for_3pt"] is None else str(p["seeds_for_3pt"])
                lines.append(
                    f"| {name} | {_pts(d['mean'], d['ci_low'], d['ci_high'])} | {per} | {'yes' if p['resolved'] else 'no'} | {need} | {gain} |"
                )
            se = [p["eval_se"] for p in paired.values() if "eval_se" in p]
            if se:
                lines += [
                    "",
                    f"Evaluation noise alone: a paired difference has a standard error of ~{100 * sum(se) / len(se):.1f} points per seed; "
                    "the rest of the spread over seeds is training randomness.",
                ]
            split = {n: p for n, p in paired.items() if "seeds_for_3pt_by_draws" in p}
            if split:
                lines += [
                    "",
                    "Seeds for ±3 points with 1, 2, 4, 8 RL draws per seed (the per-seed differences' spread split into "
                    "a between-seed and a between-draw part): "
                    + "; ".join(
                        f"{n} "
                        + "/".join("—" if v is None else str(v) for v in p["seeds_for_3pt_by_draws"].values())
                        + f" (between seeds {100 * p['between_seed_sd']:.1f} points, between draws "
                        f"{100 * p['between_draw_sd']:.1f})"
                        for n, p in split.items()
                    )
                    + ". A draw costs one method run, a seed a warm start and every method's runs.",
                ]
            spread = {n: m for n, m in f["methods"].items() if m.get("draw_sd") is not None}
            if spread:
                lines += [
                    "",
                    "Between draws of one seed (same warm start, same evaluation draws), after-RL success has a "
                    "pooled standard deviation of "
                    + ", ".join(
                        f"{100 * m['draw_sd']:.1f} points for {n} (one evaluation's binomial noise: "
                        f"{100 * m['eval_sd']:.1f})"
                        for n, m in spread.items()
                    )
                    + ".",
                ]
            lines.append("")
        lines += [
            f"| method | starts from | train success, iteration 0 | train success, iteration {iters - 1} | eval before | eval after | seconds |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, m in f["methods"].items():
            curve = m["iterations"]
            lines.append(
                f"| {name} | {m['start']} | {_rate(curve[0] if curve else None)} | {_rate(curve[-1] if curve else None)} | "
                f"{_rate(m['eval_before'])} | {_rate(m['eval_after'])} | {m['seconds']:.0f} |"
            )
        extra = {
            n: [
                o
                for o in m["overrides"]
                if not o.startswith("algorithm.estimator=") and o != "algorithm.options={}"
            ]
            for n, m in f["methods"].items()
        }
        notes = [f"{n}: `{' '.join(o)}`" for n, o in extra.items() if o]
        lines += [
            "",
            "Method overrides beyond the estimator: " + ("; ".join(notes) if notes else "none") + ".",
        ]
        bands: dict[str, list[str]] = {}
        for n, m in f["methods"].items():
            if "update" in m:  # results written before the update settings were recorded have none
                u = m["update"]
                bands.setdefault(f"{u['loss']} clip {u['clip'][0]:g} / {u['clip'][1]:g}", []).append(n)
        if bands:
            lines += [
                "",
                "Loss and clip band (the loss's own, or the one a method's authors trained with): "
                + "; ".join(f"{', '.join(ns)}: {b}" for b, ns in bands.items())
                + ".",
            ]
    if result["warm_starts"]:
        warm = "; ".join(f"{k} {w['seconds']:.0f} s" for k, w in result["warm_starts"].items())
        lines += ["", f"Warm starts (tiny model + SFT + the shared evaluation before RL): {warm}."]
    lines += [
        "",
        f"Compute: {result['compute_seconds'] / 60:.1f} min of training and evaluation in all, {result['jobs']} run(s) at a time "
        f"(a rerun that reuses finished runs counts their original time); this invocation took {result['seconds'] / 60:.1f} min.",
    ]
    if plot:
        lines += ["", f"![paired differences and learning curves]({plot})"]
    return "\n".join(lines) + "\n"


def learning_plot(result: dict[str, Any], path: str | Path) -> bool:
    """learning.png, one row per family: train success vs iteration per method with its 95% band, and
    each method's paired difference to the baseline after RL with its 95% interval over seeds (the
    baseline's own gain over its start when there is nothing to pair); False without matplotlib."""
    from agentrl.eval.report import _plotting, _png

    plotting = _plotting()
    if plotting is None:
        return False
    figure_cls, canvas_cls = plotting
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    fams = result["families"]
    fig = figure_cls(figsize=(12.0, 4.4 * len(fams)))
    for row, (fam, f) in enumerate(fams.items()):
        methods = f["methods"]
        colours = colormaps["tab20" if len(methods) > 10 else "tab10"]
        ax = fig.add_subplot(len(fams), 2, 2 * row + 1)
        for k, (name, m) in enumerate(methods.items()):
            pts = [p for p in m["iterations"] if not math.isnan(p["success_rate"])]
            if not pts:
                continue
            xs = [p["iteration"] for p in pts]
            ax.plot(xs, [p["success_rate"] for p in pts], marker="o", ms=3, color=colours(k), label=name)
            ax.fill_between(
                xs, [p["ci_low"] for p in pts], [p["ci_high"] for p in pts], color=colours(k), alpha=0.12
            )
        ax.set_xlabel("iteration")
        ax.set_ylabel("train success (95% CI)")
        ax.set_title(f"{fam}: training rollouts")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        ax2 = fig.add_subplot(len(fams), 2, 2 * row + 2)
        paired = f["paired"]
        names = [n for n in methods if n in paired and "diff" in paired[n]]
        label = f"after RL minus {result['baseline']} (points, 95% CI over seeds)"
        if not names:  # nothing to pair: each method's gain over its start
            names = [n for n in methods if n in paired and paired[n]["gain"]]
            label = "gain after - before RL (points, 95% CI over seeds)"
        for k, name in enumerate(names):
            d = paired[name]["diff"] if "diff" in paired[name] else paired[name]["gain"]
            mean, low, high = 100 * d["mean"], 100 * d["ci_low"], 100 * d["ci_high"]
            err = [[mean - low], [high - mean]] if math.isfinite(low) else None
            ax2.errorbar(
                [k], [mean], yerr=err, fmt="o", color=colours(list(methods).index(name)), capsize=3, ms=5
            )
            ax2.plot(
                [k] * len(paired[name].get("diff_per_seed", [])),
                [100 * x for x in paired[name].get("diff_per_seed", [])],
                "x",
                color="#9aa5b1",
                ms=4,
            )
        ax2.axhline(0, color="black", lw=0.8)
        ax2.set_xticks(list(range(len(names))))
        ax2.set_xticklabels(names, rotation=40, ha="right")
        ax2.set_ylabel(label, fontsize=8)
        ax2.set_title(f"{fam}: held-out success, paired by seed (x: single seeds)")
        ax2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    Path(path).write_bytes(_png(fig, canvas_cls))
    return True
