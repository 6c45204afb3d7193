"""Run reports: ``write_report(run_dir)`` writes report.md and a self-contained report.html.

Both say what a reader needs to trust a result: the success rate with its 95% Wilson interval,
success per task type with intervals, mean steps (bootstrap interval), the invalid-action rate,
and for training runs the learning curves from metrics.jsonl. Figures come from ``report.json``
where the evaluation wrote them and are computed from the episodes otherwise (``eval/*.jsonl``
when present, else ``trajectories*.jsonl``).

A training run evaluates two policies, the one it started from and the one it trained
(``eval/before.jsonl``, ``eval/after.jsonl``, ``eval_before.json``, ``summary.json``). Its headline
is before against after, each with its own interval and episode count, the difference and whether
the gain is beyond both intervals (summary.json's ``significant``); every figure of those episodes,
per task type included, is given per side. Episodes of two policies are never pooled: a pooled
rate describes neither.

Plots are PNGs drawn with matplotlib's Agg canvas, written to ``plots/`` beside the Markdown and
embedded as base64 in the HTML; without matplotlib the report is still written and says so.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrl.eval.rundir import (
    TrajectorySource,
    check_run_dir,
    finite,
    read_eval_report,
    read_json_object,
    read_records,
    read_sources,
    trajectory_files,
)
from agentrl.evaluation import EvalFigures, episode_figures
from agentrl.stats import Interval, wilson

__all__ = ["EvalFigures", "build_report", "episode_figures", "render_html", "render_markdown", "write_report"]

CURVE_KEYS = ("success_rate", "reward_mean", "kl", "entropy")
EXTRA_CURVE_KEYS = ("invalid_rate", "turns_mean", "tokens_per_s", "loss")
CI_KEYS = ("ci_low", "ci_high", "success_rate_ci_low", "success_rate_ci_high")
MAX_PANELS = 8
SIDES = ("before", "after")  # a training run's two evaluations: eval/before.jsonl, eval/after.jsonl
# summary keys (today's and older names) whose rows the before/after table draws from the episodes
SHOWN_FROM_EPISODES = frozenset(("turns_mean", "mean_steps", "reward_mean", "outcome_mean", "invalid_rate"))


# ----------------------------------------------------------------------------- figures


def _interval_from(entry: dict[str, Any], episodes: int | None = None) -> Interval | None:
    """An Interval from a report.json-style dict (success_rate, ci_low, ci_high, episodes); a
    missing interval is Wilson's from the rate and ``episodes`` (or ``episodes`` passed in)."""
    rate, n = finite(entry.get("success_rate")), finite(entry.get("episodes"))
    n = float(episodes) if n is None and episodes else n
    low, high = finite(entry.get("ci_low")), finite(entry.get("ci_high"))
    if rate is None:
        return None
    if (low is None or high is None) and n is not None and n > 0:
        ci = wilson(min(int(n), max(0, round(rate * n))), int(n))
        low, high = ci.low, ci.high
    return Interval(rate, math.nan if low is None else low, math.nan if high is None else high, int(n or 0))


def _mean_from(report: dict[str, Any], key: str, counted: Interval | None) -> Interval | None:
    """A mean of report.json (``key``, its interval ``key_ci``) unless the episodes give the same
    mean, whose bootstrap interval is then kept; None in report.json keeps the episodes' figure."""
    value = finite(report.get(key))
    if value is None or (counted is not None and math.isclose(value, counted.value)):
        return counted
    ci = report.get(f"{key}_ci")
    ci = ci if isinstance(ci, dict) else {}
    low, high = finite(ci.get("ci_low")), finite(ci.get("ci_high"))
    n = counted.n if counted is not None else int(finite(report.get("episodes")) or 0)
    return Interval(value, math.nan if low is None else low, math.nan if high is None else high, n)


def _apply_report_json(figs: EvalFigures, report: dict[str, Any]) -> None:
    """report.json's figures win over those computed from the episodes, key by key (a report
    written under older key names is read with today's: ``read_eval_report``)."""
    success = _interval_from(report, figs.success.n if figs.success else None)
    if success is not None:
        figs.success = success
    per_type = report.get("per_type")
    if isinstance(per_type, dict) and per_type:
        figs.per_type = {
            str(k): iv for k, v in per_type.items() if isinstance(v, dict) and (iv := _interval_from(v))
        }
    figs.mean_steps = _mean_from(report, "turns_mean", figs.mean_steps)
    figs.outcome = _mean_from(report, "reward_mean", figs.outcome)
    rate = finite(report.get("invalid_rate"))
    if rate is not None:
        figs.invalid_rate, figs.invalid_detail = rate, "from report.json"
    figs.sources.append("report.json")


# ----------------------------------------------------------------------------- document blocks


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    name: str
    alt: str
    png: bytes


@dataclass
class Code:
    text: str


Block = Heading | Para | Bullets | Table | Image | Code


def _f(x: float | None, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _g(x: float | None) -> str:
    """Whole numbers without decimals (episodes, token counts), others with three."""
    if x is not None and float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return _f(x)


def _ci(iv: Interval) -> str:
    return "—" if math.isnan(iv.low) or math.isnan(iv.high) else f"{iv.low:.3f} – {iv.high:.3f}"


# ----------------------------------------------------------------------------- plots


def _plotting() -> Any:
    """matplotlib's Figure and Agg canvas, or None when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure, FigureCanvasAgg


def _png(fig: Any, canvas_cls: Any) -> bytes:
    canvas_cls(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _rate_bars(
    plotting: Any, labels: list[str], ivs: list[Interval], title: str, first_is_total: bool = False
) -> bytes:
    """Success-rate bars with asymmetric 95% CI error bars; a leading total bar is drawn grey."""
    figure_cls, canvas_cls = plotting
    fig = figure_cls(figsize=(max(4.0, 0.9 * len(labels) + 2), 3.6))
    ax = fig.add_subplot(1, 1, 1)
    x = list(range(len(labels)))
    values, lows, highs = _bar_geometry(ivs)
    colours = ["#9aa5b1" if first_is_total and k == 0 else "#4c78a8" for k in range(len(labels))]
    ax.bar(x, values, color=colours, yerr=[lows, highs], capsize=4, ecolor="#333")
    for xi, v, iv in zip(x, values, ivs):
        ax.text(
            xi, min(1.02, v + highs[xi] + 0.02), f"{v:.2f}\nn={iv.n}", ha="center", va="bottom", fontsize=8
        )
    ax.set_xticks(x)
    ax.set_xticklabels(
        [_short(lbl) for lbl in labels],
        rotation=30 if len(labels) > 3 else 0,
        ha="right" if len(labels) > 3 else "center",
    )
    ax.set_ylim(0, 1.18)
    ax.set_ylabel("success rate (95% CI)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig, canvas_cls)


def _bar_geometry(ivs: list[Interval]) -> tuple[list[float], list[float], list[float]]:
    """Bar heights and the lengths of their error bars below and above (0 where unknown)."""
    values = [0.0 if math.isnan(iv.value) else iv.value for iv in ivs]
    lows = [0.0 if math.isnan(iv.low) else max(0.0, v - iv.low) for v, iv in zip(values, ivs)]
    highs = [0.0 if math.isnan(iv.high) else max(0.0, iv.high - v) for v, iv in zip(values, ivs)]
    return values, lows, highs


def _paired_rate_bars(
    plotting: Any, labels: list[str], sides: dict[str, list[Interval | None]], title: str
) -> bytes:
    """A before bar and an after bar per label, each with its own 95% CI and n (no pooled bar)."""
    figure_cls, canvas_cls = plotting
    fig = figure_cls(figsize=(max(4.0, 1.4 * len(labels) + 2), 3.6))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.38
    for (name, ivs), offset, colour in zip(sides.items(), (-width / 2, width / 2), ("#9aa5b1", "#4c78a8")):
        xs = [k + offset for k, iv in enumerate(ivs) if iv is not None]
        kept = [iv for iv in ivs if iv is not None]
        values, lows, highs = _bar_geometry(kept)
        ax.bar(xs, values, width, color=colour, yerr=[lows, highs], capsize=3, ecolor="#333", label=name)
        for xi, v, h, iv in zip(xs, values, highs, kept):
            ax.text(xi, min(1.02, v + h + 0.02), f"{v:.2f}\nn={iv.n}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(range(len(labels))))
    ax.set_xticklabels(
        [_short(lbl) for lbl in labels],
        rotation=30 if len(labels) > 3 else 0,
        ha="right" if len(labels) > 3 else "center",
    )
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("success rate (95% CI)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig, canvas_cls)


def _short(label: str, limit: int = 28) -> str:
    """A tick label: shortened, with "$" escaped so matplotlib does not read it as mathtext."""
    label = label if len(label) <= limit else label[: limit - 1] + "…"
    return label.replace("$", r"\$")


def _curves(
    plotting: Any, xs: list[float], series: dict[str, list[float | None]], band: tuple[list, list] | None
) -> bytes:
    """One panel per metric against iteration; success_rate gets its CI band when metrics carry one."""
    figure_cls, canvas_cls = plotting
    from matplotlib.ticker import MaxNLocator

    names = list(series)
    cols = 2 if len(names) > 1 else 1
    rows = -(-len(names) // cols)
    fig = figure_cls(figsize=(5.2 * cols, 3.0 * rows))
    for k, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, k + 1)
        pts = [(x, y) for x, y in zip(xs, series[name]) if y is not None]
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker="o" if len(pts) < 40 else None,
            ms=3,
            color="#4c78a8",
        )
        if name == "success_rate" and band is not None:
            lo, hi = band
            keep = [(x, a, b) for x, a, b in zip(xs, lo, hi) if a is not None and b is not None]
            if keep:
                ax.fill_between(
                    [p[0] for p in keep],
                    [p[1] for p in keep],
                    [p[2] for p in keep],
                    alpha=0.25,
                    color="#4c78a8",
                    label="95% CI",
                )
                ax.legend(fontsize=8)
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig, canvas_cls)


# ----------------------------------------------------------------------------- sections


def _evaluation_section(figs: EvalFigures, plotting: Any) -> list[Block]:
    out: list[Block] = [Heading(2, "Evaluation")]
    if figs.success is None:
        out.append(Para("No evaluation figures: no episodes and no report.json in this run."))
        return out
    out.append(Para("Source: " + ", ".join(figs.sources) + "."))
    s = figs.success
    out.append(Para(f"Success rate {_f(s.value)} (95% Wilson CI {_ci(s)}) over {s.n} episodes."))
    rows = [["success rate", _f(s.value), _ci(s) + " (Wilson)", f"{s.n} episodes"]]
    if figs.mean_steps is not None:
        m = figs.mean_steps
        rows.append(
            [
                "mean steps",
                _f(m.value, 2),
                _ci(m) + (" (bootstrap)" if not math.isnan(m.low) else ""),
                str(m.n or "—"),
            ]
        )
    if figs.outcome is not None:
        o = figs.outcome
        rows.append(
            [
                "mean outcome",
                _f(o.value),
                _ci(o) + (" (bootstrap)" if not math.isnan(o.low) else ""),
                str(o.n or "—"),
            ]
        )
    if figs.invalid_rate is not None:
        rows.append(["invalid-action rate", _f(figs.invalid_rate), "—", figs.invalid_detail])
    out.append(Table(["measure", "value", "95% CI", "n"], rows))
    if figs.per_type:
        out.append(Heading(3, "Per task type"))
        out.append(
            Table(
                ["task type", "episodes", "success rate", "95% CI low", "95% CI high"],
                [[k, str(iv.n), _f(iv.value), _f(iv.low), _f(iv.high)] for k, iv in figs.per_type.items()],
            )
        )
        if plotting is not None:
            total = len(figs.per_type) > 1
            labels = (["overall"] if total else []) + list(figs.per_type)
            ivs = ([s] if total else []) + list(figs.per_type.values())
            out.append(
                Image(
                    "per_type",
                    "success rate per task type with 95% Wilson intervals",
                    _rate_bars(plotting, labels, ivs, "Success by task type", first_is_total=total),
                )
            )
    return out


def _training_section(records: list[dict[str, Any]], rollout_files: int, plotting: Any) -> list[Block]:
    if not records:
        return []
    xs = [finite(r.get("iteration")) for r in records]
    x_vals = [float(k) if x is None else x for k, x in enumerate(xs)]
    numeric = [
        k
        for r in records
        for k, v in r.items()
        if finite(v) is not None and k != "iteration" and k not in CI_KEYS
    ]
    names = [k for k in CURVE_KEYS if k in numeric] + sorted({k for k in numeric if k not in CURVE_KEYS})
    names = list(dict.fromkeys(names))
    out: list[Block] = [
        Heading(2, "Training"),
        Para(
            f"{len(records)} iterations in metrics.jsonl (iteration {_f(x_vals[0], 0)} to {_f(x_vals[-1], 0)})."
        ),
    ]
    if rollout_files:
        out.append(
            Para(
                f"Rollouts of {rollout_files} iterations are saved in trajectories/ (agentrl view shows them)."
            )
        )
    rows = []
    for name in names:
        vals = [finite(r.get(name)) for r in records]
        seen = [v for v in vals if v is not None]
        first, last = seen[0], seen[-1]
        rows.append([name, _g(first), _g(last), _g(min(seen)), _g(max(seen))])
    out.append(Table(["metric", "first", "last", "min", "max"], rows))
    preferred = [k for k in CURVE_KEYS + EXTRA_CURVE_KEYS if k in names]
    if plotting is not None and names:
        series = {n: [finite(r.get(n)) for r in records] for n in (preferred or names)[:MAX_PANELS]}
        band = None
        for lo_key, hi_key in (("success_rate_ci_low", "success_rate_ci_high"), ("ci_low", "ci_high")):
            if any(lo_key in r for r in records):
                band = ([finite(r.get(lo_key)) for r in records], [finite(r.get(hi_key)) for r in records])
                break
        out.append(
            Image(
                "learning_curves",
                "learning curves: " + ", ".join(series) + " against iteration",
                _curves(plotting, x_vals, series, band),
            )
        )
    return out


def _side(entry: Any) -> dict[str, Any]:
    if isinstance(entry, dict):
        return entry
    return {"success_rate": entry} if finite(entry) is not None else {}


def _before_after_section(
    summary: dict[str, Any] | None,
    eval_before: dict[str, Any] | None,
    episodes: dict[str, TrajectorySource],
    root: Path,
    plotting: Any,
) -> list[Block]:
    """A training run's headline: the policy before RL against the policy after, side by side.

    Each side's figures come from summary.json (the trainer's), for 'before' from eval_before.json
    until summary.json exists, else from its episodes (eval/before.jsonl, eval/after.jsonl).
    Figures of the episodes (per task type, mean steps, ...) are per side: the two policies'
    episodes are never pooled.
    """
    summary = summary or {}
    given = {"before": _side(summary.get("before")), "after": _side(summary.get("after"))}
    given_from = {k: "summary.json" if given[k] else "" for k in SIDES}
    if not given["before"] and eval_before:
        given["before"], given_from["before"] = eval_before, "eval_before.json"
    figs = {k: episode_figures(src.trajectories) for k, src in episodes.items()}
    ivs: dict[str, Interval | None] = {}
    for k in SIDES:
        counted = figs[k].success if k in figs else None
        iv = _interval_from(given[k], counted.n if counted else None) if given[k] else None
        ivs[k] = counted if iv is None else iv
    out: list[Block] = [Heading(2, "Before / after")]
    if ivs["before"] is None and ivs["after"] is None:
        return out + [Para("summary.json has no 'before' or 'after' figures.")]
    bi, ai = ivs["before"], ivs["after"]
    out.append(Para(f"Before training: {_headline(bi)}. After training: {_headline(ai)}."))
    if bi is not None and ai is not None:
        out.append(Para(f"Difference (after − before) {ai.value - bi.value:+.3f}: {_verdict(bi, ai)}."))
    sources = []
    for k in SIDES:
        parts = [given_from[k]] if given_from[k] else []
        if k in episodes:
            parts.append(f"{len(episodes[k].trajectories)} episodes in {episodes[k].path.relative_to(root)}")
        sources.append(f"{k} from {', '.join(parts)}" if parts else f"{k}: none yet")
    out.append(Para("Sources: " + "; ".join(sources) + "."))

    b_given, a_given = given["before"], given["after"]
    shown = set(SHOWN_FROM_EPISODES) if figs else set()  # their rows below, with intervals, per side
    if all(len(g.get("per_seed") or ()) <= 1 for g in (b_given, a_given)):
        shown.add("seed_std")  # one round: no spread over seeds to show
    keys = [
        k
        for k in dict.fromkeys(list(b_given) + list(a_given))
        if k not in CI_KEYS
        and k not in shown
        and k != "success_rate"
        and (finite(b_given.get(k)) is not None or finite(a_given.get(k)) is not None)
    ]
    rows = [["success rate", _rate_text(bi), _rate_text(ai), _change(_value(bi), _value(ai))]]
    for k in keys:
        b, a = finite(b_given.get(k)), finite(a_given.get(k))
        rows.append([k, _g(b), _g(a), _change(b, a)])
    if figs:
        side = [figs.get(k, EvalFigures()) for k in SIDES]
        for name, pair, digits in (
            ("mean steps", [f.mean_steps for f in side], 2),
            ("mean outcome", [f.outcome for f in side], 3),
        ):
            if any(pair):
                rows.append(
                    [name, *(_with_ci(iv, digits) for iv in pair), _change(*(_value(iv) for iv in pair))]
                )
        invalid = [f.invalid_rate for f in side]
        if any(v is not None for v in invalid):
            cells = [
                _f(f.invalid_rate) + (f" ({f.invalid_detail})" if f.invalid_detail else "") for f in side
            ]
            rows.append(["invalid-action rate", *cells, _change(*invalid)])
    out.append(Table(["measure", "before", "after", "change"], rows))
    extra = [f"{k} {_scalar_text(v)}" for k, v in summary.items() if k not in SIDES and _scalar_text(v)]
    if extra:
        out.append(Para("Also in summary.json: " + ", ".join(extra) + "."))
    if plotting is not None and bi is not None and ai is not None:
        out.append(
            Image(
                "before_after",
                "success rate before and after training with 95% intervals",
                _rate_bars(plotting, ["before", "after"], [bi, ai], "Before / after training"),
            )
        )
    per_type = {k: figs[k].per_type if k in figs else {} for k in SIDES}
    types = sorted(set(per_type["before"]) | set(per_type["after"]))
    if types:
        out.append(Heading(3, "Per task type, before and after"))
        table_rows = []
        for t in types:
            b_iv, a_iv = per_type["before"].get(t), per_type["after"].get(t)
            cells = [
                c
                for iv in (b_iv, a_iv)
                for c in ((str(iv.n), _f(iv.value), _ci(iv)) if iv else ("—", "—", "—"))
            ]
            table_rows.append([t, *cells, _change(_value(b_iv), _value(a_iv))])
        header = (
            ["task type"]
            + [f"{k}: {c}" for k in SIDES for c in ("episodes", "success rate", "95% CI")]
            + ["change"]
        )
        out.append(Table(header, table_rows))
        if plotting is not None:
            out.append(
                Image(
                    "per_type_before_after",
                    "success rate per task type before and after training, each with its 95% Wilson interval",
                    _paired_rate_bars(
                        plotting,
                        types,
                        {k: [per_type[k].get(t) for t in types] for k in SIDES},
                        "Success by task type, before / after",
                    ),
                )
            )
    return out


def _headline(iv: Interval | None) -> str:
    """One side of the headline: rate, interval and episode count."""
    if iv is None:
        return "not evaluated yet"
    return f"success rate {_with_ci(iv)}" + (
        f" over {iv.n} episodes" if iv.n else " (episode count not recorded)"
    )


def _verdict(before: Interval, after: Interval) -> str:
    """Whether the gain is beyond both 95% intervals: summary.json's ``significant``."""
    if any(math.isnan(x) for x in (before.low, before.high, after.low, after.high)):
        return "no intervals to compare"
    bounds = f"the after interval starts at {after.low:.3f}, the before interval ends at {before.high:.3f}"
    if after.low > before.high:
        return f"a gain beyond both 95% intervals ({bounds})"
    return f"not a gain beyond both 95% intervals ({bounds})"


def _value(iv: Interval | None) -> float | None:
    return None if iv is None else iv.value


def _change(before: float | None, after: float | None) -> str:
    return (
        "—" if before is None or after is None else ("+" if after - before >= 0 else "") + _g(after - before)
    )


def _with_ci(iv: Interval | None, digits: int = 3) -> str:
    if iv is None:
        return "—"
    ci = _ci(iv)
    return _f(iv.value, digits) + ("" if ci == "—" else f" (95% CI {ci})")


def _scalar_text(value: Any) -> str:
    """A summary.json scalar as text ('' for lists and objects)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    return _g(finite(value)) if finite(value) is not None else ""


def _rate_text(iv: Interval | None) -> str:
    if iv is None:
        return "—"
    ci = _ci(iv)
    detail = ", ".join(x for x in ("" if ci == "—" else f"95% CI {ci}", f"n={iv.n}" if iv.n else "") if x)
    return _f(iv.value) + (f" ({detail})" if detail else "")


def build_report(run_dir: str | Path, *, plots: bool = True) -> tuple[str, list[Block]]:
    """The report's title and blocks for ``run_dir`` (no files written)."""
    root = check_run_dir(run_dir)
    plotting = _plotting() if plots else None
    problems: list[str] = []

    paths = trajectory_files(root)
    eval_paths = [p for p in paths if p.parent == root / "eval"]
    side_paths = [p for p in eval_paths if p.stem in SIDES]  # a training run's two policies: never pooled
    other_eval = [p for p in eval_paths if p.stem not in SIDES]
    top_paths = [p for p in paths if p.parent == root]
    rollout_files = [p for p in paths if p.parent == root / "trajectories"]
    sources = read_sources(other_eval or top_paths)
    side_sources = {src.path.stem: src for src in read_sources(side_paths)}
    trajectories = [t for s in sources for t in s.trajectories]
    for src in [*sources, *side_sources.values()]:
        problems += [
            f"{src.path.relative_to(root)} line {n}: {why}" if n else f"{src.path.relative_to(root)}: {why}"
            for n, why in src.bad_lines
        ]

    figs = episode_figures(trajectories)
    if sources:
        figs.sources = [
            f"{len(trajectories)} episodes in " + ", ".join(str(s.path.relative_to(root)) for s in sources)
        ]
    report, err = read_eval_report(root / "report.json")
    if err:
        problems.append(err)
    if report is not None:
        _apply_report_json(figs, report)

    records, bad = read_records(root / "metrics.jsonl")
    problems += [f"metrics.jsonl line {n}: {why}" for n, why in bad]
    summary, err = read_json_object(root / "summary.json")
    if err:
        problems.append(err)
    eval_before, err = read_eval_report(root / "eval_before.json")
    if err:
        problems.append(err)
    before_after = bool(side_sources) or summary is not None or eval_before is not None

    title = f"agentrl report — {root.resolve().name}"
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list[Block] = [Heading(1, title), Para(f"Run directory {root.resolve()}, written {now}.")]
    if plotting is None:
        blocks.append(
            Para(
                "Plots were not drawn: "
                + (
                    "matplotlib is not installed (pip install matplotlib)."
                    if plots
                    else "plots were turned off."
                )
            )
        )
    if before_after:  # the headline of a training run
        blocks += _before_after_section(summary, eval_before, side_sources, root, plotting)
    if figs.success is not None or not before_after:
        blocks += _evaluation_section(figs, plotting)
    blocks += _training_section(records, len(rollout_files), plotting)
    config = root / "config.yaml"
    if config.is_file():
        blocks += [Heading(2, "Config"), Code(config.read_text(encoding="utf-8", errors="replace"))]
    if problems:
        shown = problems[:50] + ([f"... and {len(problems) - 50} more"] if len(problems) > 50 else [])
        blocks += [
            Heading(2, "Problems reading the run"),
            Para("These were skipped; everything else is included."),
            Bullets(shown),
        ]
    return title, blocks


# ----------------------------------------------------------------------------- rendering

_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|#$])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def _md(text: str) -> str:
    """Markdown-escape text so task names like ``<b>x</b>`` or ``a|b`` show literally."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), text.replace("\r", "").replace("\n", " "))


def render_markdown(blocks: list[Block], image_dir: str = "plots") -> str:
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + _md(b.text), ""]
        elif isinstance(b, Para):
            lines += [_md(b.text), ""]
        elif isinstance(b, Bullets):
            lines += [f"- {_md(item)}" for item in b.items] + [""]
        elif isinstance(b, Table):
            lines.append("| " + " | ".join(_md(h) for h in b.header) + " |")
            lines.append("|" + "---|" * len(b.header))
            lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in b.rows]
            lines.append("")
        elif isinstance(b, Image):
            lines += [f"![{_md(b.alt)}]({image_dir}/{b.name}.png)", ""]
        elif isinstance(b, Code):
            fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", b.text)), default=0))
            lines += [fence + "yaml", b.text.rstrip("\n"), fence, ""]
    return "\n".join(lines)


_HTML_CSS = """
body{font-family:system-ui,sans-serif;max-width:60em;margin:1.5em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f2f2f2}img{max-width:100%;border:1px solid #eee}pre{background:#f7f7f7;padding:.6em;overflow:auto}
"""


def render_html(title: str, blocks: list[Block]) -> str:
    """One self-contained page: no scripts, plots inlined as base64 PNG."""
    e = html.escape
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            parts.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{e(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Image):
            data = base64.b64encode(b.png).decode("ascii")
            parts.append(
                f"<figure><img id='plot-{e(b.name)}' alt='{e(b.alt)}' src='data:image/png;base64,{data}'></figure>"
            )
        elif isinstance(b, Code):
            parts.append(f"<pre>{e(b.text)}</pre>")
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>"
        f"<style>{_HTML_CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def write_report(run_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
    """Write report.md, report.html and plots/*.png into ``run_dir``; returns the written paths."""
    root = check_run_dir(run_dir)
    title, blocks = build_report(root, plots=plots)
    written: dict[str, Path] = {}
    images = [b for b in blocks if isinstance(b, Image)]
    if images:
        (root / "plots").mkdir(exist_ok=True)
        for img in images:
            path = root / "plots" / f"{img.name}.png"
            path.write_bytes(img.png)
            written[f"plot_{img.name}"] = path
    md, page = root / "report.md", root / "report.html"
    md.write_text(render_markdown(blocks), encoding="utf-8")
    page.write_text(render_html(title, blocks), encoding="utf-8")
    written["markdown"], written["html"] = md, page
    return written
