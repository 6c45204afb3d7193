"""Credit benchmark, learning part: every method trains the same policy on the same tasks and seeds.

For each seed the tiny model and its SFT warm start are built once (a training run with
``optim.iterations=0``) and every method of that seed starts from them: only
``algorithm.estimator`` changes, plus what a method needs to run at all (``method_overrides``:
HiPER's response format, MT-GRPO's K-turn variant on envs without tool calls). HiPER writes
another response format, so it gets its own warm start, SFT on the same tasks in its format.

Per method and iteration the training rollouts' success (``metrics.jsonl``), pooled over seeds,
gets a 95% Wilson interval; the trainer's held-out evaluation (``summary.json``: before and
after RL) gets one too. ``credit_learning`` writes ``learning.md``, ``learning.json`` and
``learning.png`` and returns what it wrote to ``learning.json``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from agentrl.config import ConfigError, TrainConfig, dump_config, load_config
from agentrl.credit import available_estimators, estimator_info
from agentrl.eval.stats import wilson

__all__ = [
    "BUILTIN_CONFIG",
    "credit_learning",
    "learning_markdown",
    "learning_plot",
    "method_overrides",
    "trainable_estimators",
]

# Small enough for every method on two CPU cores: a 2-layer hidden-64 Qwen2 warm-started on 300
# expert plans, 8 groups x 4 episodes per iteration, 256 held-out episodes. The quickstart's maze
# (2x2, a key and a locked door, one key colour: a random-init tiny model cannot learn to copy a
# colour it read). The evaluation samples (temperature 1, seeded: the same draws for every
# method): the maze is partially observable, so a greedy policy loops where a sampled one gets
# through, and RL optimises the sampled policy. One torch thread: on a shared 2-core machine two
# threads per process made training ~4x slower.
BUILTIN_CONFIG: dict[str, Any] = {
    "seed": 0,
    "model": {"tiny": {"vocab_size": 512, "layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "corpus_tasks": 50},
              "device": "cpu", "torch_threads": 1},  # fmt: skip
    "lora": {"r": 8, "alpha": 16},
    "env": {"name": "maze", "kwargs": {"size": 2, "n_doors": 1, "max_steps": 8, "num_tasks": 2000, "colours": 1},
            "train_tasks": {"start": 0, "count": 1000}, "num_envs": 32},  # fmt: skip
    "rollout": {"groups": 8, "group_size": 4, "max_turns": 8, "history_k": 1, "response_format": "think_action",
                "max_new_tokens": 8, "system_prompt": "Reach the goal room.", "temperature": 1.0},  # fmt: skip
    "algorithm": {"kl_coef": 0.01, "epochs": 2, "minibatch_size": 32, "micro_batch_size": 32},
    "optim": {"iterations": 8, "lr": 0.001, "critic_lr": 0.01},
    "sft": {"enabled": True, "tasks": {"start": 0, "count": 300}, "epochs": 4, "lr": 0.002, "batch_size": 32},
    "eval": {"enabled": True, "tasks": {"start": 1800, "count": 128}, "episodes_per_task": 2, "temperature": 1.0},
    "logging": {"tensorboard": False, "checkpoint_every": 1000, "keep_checkpoints": 1},
}

HIPER_MIN_NEW_TOKENS = 24  # <switch>..</switch><subgoal>..</subgoal><action>..</action> (configs/maze_hiper.yaml)
# StepBatch fields the trainer fills on any env: state keys from the env, turn rewards from
# rollout.turn_reward=valid, HiPER's tags from its response format; tool calls only in that format.
_TRAINER_FIELDS = {"state_key", "turn_reward", "switch", "subgoal"}
_TRAINER_INPUTS = {"values"}  # value heads for critic estimators

Progress = Callable[[str], None]


def trainable_estimators(response_format: str = "think_action") -> list[str]:
    """Registered estimators whose fields and inputs the trainer can supply (all built-in ones)."""
    fields = _TRAINER_FIELDS | ({"tool_call"} if response_format == "tool_call" else set())
    out = []
    for name in available_estimators():
        info = estimator_info(name)
        if set(info.fields) <= fields and set(info.inputs) <= _TRAINER_INPUTS:
            out.append(name)
    return out


def method_overrides(estimator: str, base: TrainConfig) -> list[str]:
    """The overrides that turn the base config into ``estimator``'s run: the estimator with its default
    options, and what the method cannot train without."""
    out = [f"algorithm.estimator={estimator}", "algorithm.options={}"]
    if estimator == "hiper":
        out += ["rollout.response_format=hiper", f"rollout.max_new_tokens={max(base.rollout.max_new_tokens, HIPER_MIN_NEW_TOKENS)}"]
    elif estimator == "mt_grpo" and base.rollout.response_format != "tool_call":
        out.append("algorithm.options={variant: k_turn}")  # two_phase needs tool calls
    return out


def _response_format(estimator: str, base: TrainConfig) -> str:
    return "hiper" if estimator == "hiper" else base.rollout.response_format


def _prepare_run(config_path: Path, overrides: list[str], run_dir: Path) -> bool:
    """Validate a run's config; True when ``run_dir`` already holds a run of exactly this config.

    A directory holding another config is refused, so a rerun never mixes in stale results."""
    cfg = load_config(config_path, overrides)
    text = dump_config(cfg.model_copy(update={"out_dir": str(run_dir)}))
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return False
    if saved.read_text() != text:
        raise ConfigError(f"{run_dir} holds a run with a different config; choose another output directory or delete it")
    return True


def _pooled(parts: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """Successes and episodes summed over seeds, with a 95% Wilson interval."""
    k, n = sum(p[0] for p in parts), sum(p[1] for p in parts)
    iv = wilson(k, n)
    return {"success_rate": iv.value, "ci_low": iv.low, "ci_high": iv.high, "successes": k, "episodes": n,
            "per_seed": [p[0] / p[1] if p[1] else math.nan for p in parts]}  # fmt: skip


def _wins(rate: float, episodes: int) -> int:
    return int(round(rate * episodes))


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def credit_learning(
    out_dir: str | Path,
    *,
    config: str | Path | None = None,
    estimators: Sequence[str] | None = None,
    seeds: Sequence[int] = (0,),
    iterations: int | None = None,
    overrides: Sequence[str] = (),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train every estimator from the same warm start per seed; write learning.md/json/png into
    ``out_dir`` (run directories go under ``out_dir/seed<S>/``) and return the JSON content.

    ``config``: the base training config (None: ``BUILTIN_CONFIG``), ``overrides`` applied to it;
    ``iterations``: RL iterations per run (None: the config's ``optim.iterations``). A rerun with the
    same settings reuses finished runs."""
    say = progress or (lambda msg: None)
    t_start = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not seeds:
        raise ConfigError("need at least one seed")
    base_path = out / "base_config.yaml"
    if config is None:
        base_path.write_text(yaml.safe_dump(BUILTIN_CONFIG, sort_keys=False))
    else:
        if not Path(config).is_file():
            raise ConfigError(f"config file {config} does not exist")
        base_path.write_text(Path(config).read_text())
    common = list(overrides) + ([f"optim.iterations={iterations}"] if iterations is not None else [])
    base = load_config(base_path, common)
    if base.optim.iterations < 1:
        raise ConfigError(f"optim.iterations must be at least 1 for the learning benchmark, got {base.optim.iterations}")
    if not base.eval.enabled:
        raise ConfigError("the learning benchmark reports the held-out evaluation: set eval.enabled: true in the base config")
    names = list(estimators) if estimators else trainable_estimators(base.rollout.response_format)
    unknown = [n for n in names if n not in available_estimators()]
    if unknown:
        raise ConfigError(f"unknown estimator(s) {unknown}; allowed: {', '.join(available_estimators())}")
    trainable = trainable_estimators(base.rollout.response_format)
    untrainable = [n for n in names if n not in trainable]
    if untrainable:
        raise ConfigError(f"the trainer cannot supply what {untrainable} need here; trainable: {', '.join(trainable)}")
    per_method = {n: method_overrides(n, base) for n in names}
    for n in names:  # fail before any training when a method's config is invalid
        load_config(base_path, common + per_method[n])
    formats = list(dict.fromkeys(_response_format(n, base) for n in names))
    iters = base.optim.iterations
    say(f"learning benchmark: {len(names)} methods x {len(seeds)} seed(s) x {iters} iterations "
        f"({base.rollout.groups}x{base.rollout.group_size} episodes each), eval on {base.eval.tasks.count} held-out tasks")  # fmt: skip

    warm: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    total, done, fresh, fresh_seconds = len(names) * len(seeds), 0, 0, 0.0
    for seed in seeds:
        seed_dir = out / f"seed{seed}"
        model_path = base.model.path
        starts: dict[str, str] = {}
        for fmt in formats:
            if model_path is not None and not base.sft.enabled:
                starts[fmt] = model_path
                continue
            run_dir = seed_dir / f"warm-{fmt}"
            estimator = next(n for n in names if _response_format(n, base) == fmt)
            ov = common + per_method[estimator] + [f"seed={seed}", f"model.tiny.seed={seed}", "optim.iterations=0", "eval.enabled=false"]
            ov += [f"model.path={model_path}"] if model_path is not None else []
            seconds, reused = _train_once(base_path, ov, run_dir, [])
            if model_path is None:
                model_path = str(run_dir / "tiny-model")
            starts[fmt] = str(run_dir / "sft-model") if base.sft.enabled else model_path
            warm[f"seed{seed}/{fmt}"] = {"seed": seed, "response_format": fmt, "model": starts[fmt], "seconds": seconds, "reused": reused}
            say(f"seed {seed} warm start ({fmt}): {starts[fmt]} in {_clock(seconds)}{' (reused)' if reused else ''} "
                f"(elapsed {_clock(time.time() - t_start)})")  # fmt: skip
        for name in names:
            run_dir = seed_dir / name
            ov = common + per_method[name] + [f"seed={seed}", f"model.path={starts[_response_format(name, base)]}", "sft.enabled=false"]
            seconds, reused = _train_once(base_path, ov, run_dir, [run_dir / "summary.json"])
            runs[name].append(_read_run(run_dir, seed, seconds, reused))
            done += 1
            if not reused:
                fresh_seconds, fresh = fresh_seconds + seconds, fresh + 1
            left = f", ~{_clock((total - done) * fresh_seconds / fresh)} left" if fresh else ""
            say(f"[{done}/{total}] seed {seed} {name}: {_run_line(runs[name][-1])}; elapsed {_clock(time.time() - t_start)}{left}")

    result = {
        "config": "built-in" if config is None else str(config),
        "base_config": str(base_path),
        "overrides": list(overrides),
        "iterations": iters,
        "seeds": list(seeds),
        "episodes_per_iteration": base.rollout.groups * base.rollout.group_size,
        "eval_episodes": base.eval.tasks.count * base.eval.episodes_per_task,
        "eval_temperature": base.eval.temperature,
        "sft": base.sft.enabled,
        "warm_starts": warm,
        "methods": {n: _summarise(per_method[n], _start_label(n, base), runs[n], iters) for n in names},
        "seconds": time.time() - t_start,
    }
    result["compute_seconds"] = sum(w["seconds"] for w in warm.values()) + sum(m["seconds"] for m in result["methods"].values())
    (out / "learning.json").write_text(json.dumps(result, indent=1))
    plotted = learning_plot(result, out / "learning.png")
    (out / "learning.md").write_text(learning_markdown(result, plot="learning.png" if plotted else None), encoding="utf-8")
    say(f"wrote {out / 'learning.md'}, {out / 'learning.json'}" + (f", {out / 'learning.png'}" if plotted else " (no matplotlib: no plot)")
        + f" in {_clock(result['seconds'])}")  # fmt: skip
    return result


def _train_once(config_path: Path, overrides: list[str], run_dir: Path, outputs: list[Path]) -> tuple[float, bool]:
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


def _read_run(run_dir: Path, seed: int, seconds: float, reused: bool) -> dict[str, Any]:
    from agentrl.trainers.metrics import read_metrics

    records = sorted(read_metrics(run_dir / "metrics.jsonl"), key=lambda r: r["iteration"])
    summary = json.loads((run_dir / "summary.json").read_text())
    side = {k: (_wins(summary[k]["success_rate"], summary[k]["episodes"]), int(summary[k]["episodes"])) for k in ("before", "after")}
    return {
        "seed": seed,
        "run_dir": str(run_dir),
        "seconds": seconds,
        "reused": reused,
        "iterations": [(int(r["iteration"]), _wins(r["success_rate"], int(r["episodes"])), int(r["episodes"])) for r in records],
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
    return (f"train success {first:.2f} -> {last:.2f}, eval {kb / max(nb, 1):.2f} -> {ka / max(na, 1):.2f}, "
            f"{_clock(run['seconds'])}{' (reused)' if run['reused'] else ''}")  # fmt: skip


def _summarise(overrides: list[str], start: str, runs: list[dict[str, Any]], iterations: int) -> dict[str, Any]:
    curve = []
    for it in range(iterations):
        parts = [(k, n) for r in runs for (i, k, n) in r["iterations"] if i == it]
        if parts:
            curve.append({"iteration": it, **_pooled(parts)})
    return {
        "overrides": overrides,
        "start": start,
        "iterations": curve,
        "eval_before": _pooled([r["before"] for r in runs]),
        "eval_after": _pooled([r["after"] for r in runs]),
        "seconds": sum(r["seconds"] for r in runs),
        "runs": [{k: r[k] for k in ("seed", "run_dir", "seconds", "reused")} for r in runs],
    }


def _rate(entry: dict[str, Any] | None) -> str:
    if entry is None or math.isnan(entry["success_rate"]):
        return "—"
    return f"{entry['success_rate']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def learning_markdown(result: dict[str, Any], plot: str | None = None) -> str:
    """The Markdown table: per method train success at the first and last iteration and the held-out
    evaluation before/after RL, each with its 95% Wilson interval, and wall seconds."""
    seeds, iters = result["seeds"], result["iterations"]
    lines = [
        "# Credit benchmark: learning",
        "",
        f"Every method trains the same policy on the same tasks and seeds ({len(seeds)} seed(s): {', '.join(map(str, seeds))}; "
        f"{iters} iterations of {result['episodes_per_iteration']} sampled episodes); only the estimator and what it needs "
        "change. Per seed, methods with the same response format start from "
        + ("one shared SFT warm start. " if result["sft"] else "the same base model. ")
        + "Train success: the share of successful training episodes at an iteration, pooled over seeds (iteration 0 samples "
        f"the starting policy); eval: the trainer's held-out evaluation ({result['eval_episodes']} episodes per seed, "
        + ("greedy" if result["eval_temperature"] == 0 else f"sampled at temperature {result['eval_temperature']:g}, seeded")
        + ") before and after RL. Brackets: 95% Wilson intervals over episodes (episodes of a group share a task, so "
        "they are somewhat narrower than intervals over tasks would be). Every method draws the same tasks at a given "
        "iteration: compare methods within a column; iteration 0 and the last iteration play different tasks. "
        f"Base config: {result['config']}" + (f" with {' '.join(result['overrides'])}" if result["overrides"] else "") + ".",
        "",
        f"| method | starts from | train success, iteration 0 | train success, iteration {iters - 1} "
        "| eval before | eval after | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in result["methods"].items():
        curve = m["iterations"]
        lines.append(f"| {name} | {m['start']} | {_rate(curve[0] if curve else None)} | {_rate(curve[-1] if curve else None)} | "
                     f"{_rate(m['eval_before'])} | {_rate(m['eval_after'])} | {m['seconds']:.0f} |")  # fmt: skip
    extra = {n: [o for o in m["overrides"] if not o.startswith("algorithm.estimator=") and o != "algorithm.options={}"]
             for n, m in result["methods"].items()}  # fmt: skip
    notes = [f"{n}: `{' '.join(o)}`" for n, o in extra.items() if o]
    lines += ["", "Method overrides beyond the estimator: " + ("; ".join(notes) if notes else "none") + "."]
    if result["warm_starts"]:
        warm = "; ".join(f"{k} {w['seconds']:.0f} s" for k, w in result["warm_starts"].items())
        lines += ["", f"Warm starts (tiny model + SFT, shared): {warm}."]
    lines += ["", f"Compute: {result['compute_seconds'] / 60:.1f} min of training and evaluation in all (a rerun that reuses "
              f"finished runs counts their original time); this invocation took {result['seconds'] / 60:.1f} min."]
    if plot:
        lines += ["", f"![success vs iteration]({plot})"]
    return "\n".join(lines) + "\n"


def learning_plot(result: dict[str, Any], path: str | Path) -> bool:
    """learning.png: train success vs iteration per method with its 95% band, and the held-out
    evaluation after RL (before RL in grey); False when matplotlib is not installed."""
    from agentrl.eval.report import _plotting, _png

    plotting = _plotting()
    if plotting is None:
        return False
    figure_cls, canvas_cls = plotting
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    methods = result["methods"]
    colours = colormaps["tab20" if len(methods) > 10 else "tab10"]
    highs = [p["ci_high"] for m in methods.values() for p in [*m["iterations"], m["eval_before"], m["eval_after"]]]
    top = min(1.0, max([h for h in highs if not math.isnan(h)], default=1.0) + 0.05)  # room for the bands, no more
    fig = figure_cls(figsize=(12.0, 4.4))
    ax = fig.add_subplot(1, 2, 1)
    for k, (name, m) in enumerate(methods.items()):
        pts = [p for p in m["iterations"] if not math.isnan(p["success_rate"])]
        if not pts:
            continue
        xs = [p["iteration"] for p in pts]
        ax.plot(xs, [p["success_rate"] for p in pts], marker="o", ms=3, color=colours(k), label=name)
        ax.fill_between(xs, [p["ci_low"] for p in pts], [p["ci_high"] for p in pts], color=colours(k), alpha=0.12)
    ax.set_xlabel("iteration")
    ax.set_ylabel("train success (95% CI)")
    ax.set_title("training rollouts")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, top)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax2 = fig.add_subplot(1, 2, 2)
    for k, (name, m) in enumerate(methods.items()):
        for side, dx, colour in (("eval_before", -0.15, "#9aa5b1"), ("eval_after", 0.15, colours(k))):
            e = m[side]
            if math.isnan(e["success_rate"]):
                continue
            err = [[max(0.0, e["success_rate"] - e["ci_low"])], [max(0.0, e["ci_high"] - e["success_rate"])]]
            ax2.errorbar([k + dx], [e["success_rate"]], yerr=err, fmt="o", color=colour, capsize=3, ms=4)
    ax2.set_xticks(list(range(len(methods))))
    ax2.set_xticklabels(list(methods), rotation=40, ha="right")
    ax2.set_ylabel("held-out success (95% CI)")
    ax2.set_title("evaluation: before RL (grey), after RL (colour)")
    ax2.set_ylim(0, top)
    ax2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    Path(path).write_bytes(_png(fig, canvas_cls))
    return True
