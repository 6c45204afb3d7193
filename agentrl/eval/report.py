"""Run reports: ``write_report(run_dir)`` writes report.md and a self-contained report.html.

Both say what a reader needs to trust a result: the success rate with its 95% Wilson interval,
success per task type with intervals, mean steps (bootstrap interval), the invalid-action rate,
and for training runs the learning curves from metrics.jsonl and the before/after summary.
Figures come from ``report.json`` where the evaluation wrote them and are computed from the
episodes otherwise (``eval/*.jsonl`` when present, else ``trajectories*.jsonl``). Plots are PNGs
drawn with matplotlib's Agg canvas, written to ``plots/`` beside the Markdown and embedded as
base64 in the HTML; without matplotlib the report is still written and says so.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.eval.rundir import (
    check_run_dir,
    finite,
    read_json_object,
    read_records,
    read_sources,
    task_type,
    trajectory_files,
)
from agentrl.eval.stats import Interval, bootstrap_mean, wilson
from agentrl.types import Trajectory

__all__ = ["EvalFigures", "build_report", "episode_figures", "render_html", "render_markdown", "write_report"]

CURVE_KEYS = ("success_rate", "reward_mean", "kl", "entropy")
EXTRA_CURVE_KEYS = ("invalid_rate", "turns_mean", "tokens_per_s", "loss")
CI_KEYS = ("ci_low", "ci_high", "success_rate_ci_low", "success_rate_ci_high")
MAX_PANELS = 8


# ----------------------------------------------------------------------------- figures


@dataclass
class EvalFigures:
    """The evaluation numbers of a run and where they came from."""

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


def _apply_report_json(figs: EvalFigures, report: dict[str, Any]) -> None:
    """report.json's figures win over those computed from the episodes, key by key."""
    success = _interval_from(report, figs.success.n if figs.success else None)
    if success is not None:
        figs.success = success
    per_type = report.get("per_type")
    if isinstance(per_type, dict) and per_type:
        figs.per_type = {str(k): iv for k, v in per_type.items() if isinstance(v, dict) and (iv := _interval_from(v))}
    steps = finite(report.get("mean_steps"))
    if steps is not None and not (figs.mean_steps and math.isclose(steps, figs.mean_steps.value)):
        figs.mean_steps = Interval(steps, math.nan, math.nan, figs.mean_steps.n if figs.mean_steps else 0)
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


def _rate_bars(plotting: Any, labels: list[str], ivs: list[Interval], title: str, first_is_total: bool = False) -> bytes:
    """Success-rate bars with asymmetric 95% CI error bars; a leading total bar is drawn grey."""
    figure_cls, canvas_cls = plotting
    fig = figure_cls(figsize=(max(4.0, 0.9 * len(labels) + 2), 3.6))
    ax = fig.add_subplot(1, 1, 1)
    x = list(range(len(labels)))
    values = [0.0 if math.isnan(iv.value) else iv.value for iv in ivs]
    lows = [0.0 if math.isnan(iv.low) else max(0.0, v - iv.low) for v, iv in zip(values, ivs)]
    highs = [0.0 if math.isnan(iv.high) else max(0.0, iv.high - v) for v, iv in zip(values, ivs)]
    colours = ["#9aa5b1" if first_is_total and k == 0 else "#4c78a8" for k in range(len(labels))]
    ax.bar(x, values, color=colours, yerr=[lows, highs], capsize=4, ecolor="#333")
    for xi, v, iv in zip(x, values, ivs):
        ax.text(xi, min(1.02, v + highs[xi] + 0.02), f"{v:.2f}\nn={iv.n}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(
        [_short(lbl) for lbl in labels], rotation=30 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center"
    )
    ax.set_ylim(0, 1.18)
    ax.set_ylabel("success rate (95% CI)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig, canvas_cls)


def _short(label: str, limit: int = 28) -> str:
    """A tick label: shortened, with "$" escaped so matplotlib does not read it as mathtext."""
    label = label if len(label) <= limit else label[: limit - 1] + "…"
    return label.replace("$", r"\$")


def _curves(plotting: Any, xs: list[float], series: dict[str, list[float | None]], band: tuple[list, list] | None) -> bytes:
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
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 40 else None, ms=3, color="#4c78a8")
        if name == "success_rate" and band is not None:
            lo, hi = band
            keep = [(x, a, b) for x, a, b in zip(xs, lo, hi) if a is not None and b is not None]
            if keep:
                ax.fill_between(
                    [p[0] for p in keep], [p[1] for p in keep], [p[2] for p in keep], alpha=0.25, color="#4c78a8", label="95% CI"
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
        rows.append(["mean steps", _f(m.value, 2), _ci(m) + (" (bootstrap)" if not math.isnan(m.low) else ""), str(m.n or "—")])
    if figs.outcome is not None:
        o = figs.outcome
        rows.append(["mean outcome", _f(o.value), _ci(o) + " (bootstrap)", str(o.n)])
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
    numeric = [k for r in records for k, v in r.items() if finite(v) is not None and k != "iteration" and k not in CI_KEYS]
    names = [k for k in CURVE_KEYS if k in numeric] + sorted({k for k in numeric if k not in CURVE_KEYS})
    names = list(dict.fromkeys(names))
    out: list[Block] = [
        Heading(2, "Training"),
        Para(f"{len(records)} iterations in metrics.jsonl (iteration {_f(x_vals[0], 0)} to {_f(x_vals[-1], 0)})."),
    ]
    if rollout_files:
        out.append(Para(f"Rollouts of {rollout_files} iterations are saved in trajectories/ (agentrl view shows them)."))
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


def _summary_section(summary: dict[str, Any], plotting: Any) -> list[Block]:
    before, after = _side(summary.get("before")), _side(summary.get("after"))
    if not before and not after:
        return [Heading(2, "Before / after"), Para("summary.json has no 'before' or 'after' figures.")]
    keys = [
        k
        for k in dict.fromkeys(list(before) + list(after))
        if k not in CI_KEYS and (finite(before.get(k)) is not None or finite(after.get(k)) is not None)
    ]
    keys.sort(key=lambda k: k != "success_rate")
    rows = []
    for k in keys:
        b, a = finite(before.get(k)), finite(after.get(k))
        change = ("+" if a - b >= 0 else "") + _g(a - b) if a is not None and b is not None else "—"
        if k == "success_rate":
            bi, ai = _interval_from(before), _interval_from(after)
            rows.append([k, _rate_text(bi), _rate_text(ai), change])
        else:
            rows.append([k, _g(b), _g(a), change])
    out: list[Block] = [Heading(2, "Before / after"), Table(["measure", "before", "after", "change"], rows)]
    extra = [f"{k} {_scalar_text(v)}" for k, v in summary.items() if k not in ("before", "after") and _scalar_text(v)]
    if extra:
        out.append(Para("Also in summary.json: " + ", ".join(extra) + "."))
    bi, ai = _interval_from(before), _interval_from(after)
    if bi is not None and ai is not None:
        overlap = ""
        if not any(math.isnan(x) for x in (bi.low, bi.high, ai.low, ai.high)):
            apart = ai.low > bi.high or bi.low > ai.high
            overlap = "; the 95% intervals do not overlap" if apart else "; the 95% intervals overlap"
        text = f"Success rate {_f(bi.value)} before and {_f(ai.value)} after training ({ai.value - bi.value:+.3f}{overlap})."
        out.insert(1, Para(text))
        if plotting is not None:
            out.append(
                Image(
                    "before_after",
                    "success rate before and after training with 95% intervals",
                    _rate_bars(plotting, ["before", "after"], [bi, ai], "Before / after training"),
                )
            )
    return out


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
    top_paths = [p for p in paths if p.parent == root]
    rollout_files = [p for p in paths if p.parent == root / "trajectories"]
    sources = read_sources(eval_paths or top_paths)
    trajectories = [t for s in sources for t in s.trajectories]
    for src in sources:
        problems += [
            f"{src.path.relative_to(root)} line {n}: {why}" if n else f"{src.path.relative_to(root)}: {why}"
            for n, why in src.bad_lines
        ]

    figs = episode_figures(trajectories)
    if sources:
        figs.sources = [f"{len(trajectories)} episodes in " + ", ".join(str(s.path.relative_to(root)) for s in sources)]
    report, err = read_json_object(root / "report.json")
    if err:
        problems.append(err)
    if report is not None:
        _apply_report_json(figs, report)

    records, bad = read_records(root / "metrics.jsonl")
    problems += [f"metrics.jsonl line {n}: {why}" for n, why in bad]
    summary, err = read_json_object(root / "summary.json")
    if err:
        problems.append(err)

    title = f"agentrl report — {root.resolve().name}"
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list[Block] = [Heading(1, title), Para(f"Run directory {root.resolve()}, written {now}.")]
    if plotting is None:
        blocks.append(
            Para(
                "Plots were not drawn: "
                + ("matplotlib is not installed (pip install matplotlib)." if plots else "plots were turned off.")
            )
        )
    if figs.success is not None or summary is None:
        blocks += _evaluation_section(figs, plotting)
    blocks += _training_section(records, len(rollout_files), plotting)
    if summary is not None:
        blocks += _summary_section(summary, plotting)
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
            parts.append(f"<figure><img id='plot-{e(b.name)}' alt='{e(b.alt)}' src='data:image/png;base64,{data}'></figure>")
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
