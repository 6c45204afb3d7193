"""Trajectory viewer: ``agentrl view RUNDIR`` serves a run's episodes on 127.0.0.1.

The list page shows every episode (task, group, success, outcome, steps) with filters; an episode
page shows each step (observation, response, action, validity, reward) next to the advantage that
every applicable credit method gives it, computed on the fly from the groups in the episode's file,
so one can see where methods agree and where they disagree. Methods whose StepBatch fields or
inputs are missing are listed with the reason (critic methods need per-step values, read from
``Step.info["value"]`` when a run recorded them). Pages are plain server-rendered HTML without
scripts; every user-controlled string is escaped.
"""

from __future__ import annotations

import html
import json
import threading
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np

from agentrl.credit import MissingInputError, available_estimators, estimate, estimator_info
from agentrl.eval.rundir import TrajectorySource, check_run_dir, finite, read_sources, trajectory_files
from agentrl.serving import ServerThread
from agentrl.types import StepBatch, Trajectory

__all__ = [
    "CreditColumns",
    "RunSnapshot",
    "RunView",
    "create_app",
    "credit_columns",
    "serve_viewer",
    "start_viewer",
]

PAGE_SIZE = 200


# ----------------------------------------------------------------------------- credit


@dataclass
class CreditColumns:
    """Every applicable method's step advantages for one batch of trajectories.

    ``step[name]`` has one value per StepBatch row; ``first_row[traj_id]`` is where a trajectory's
    rows start; ``scale[name]`` is the largest |advantage| of the method (colour scale);
    ``skipped[name]`` says why a method could not run; ``error`` is set when no batch could be
    built at all (e.g. duplicate trajectory ids in the file).
    """

    step: dict[str, np.ndarray] = field(default_factory=dict)
    spans: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    first_row: dict[str, int] = field(default_factory=dict)
    error: str | None = None


def _critic_values(trajectories: list[Trajectory]) -> np.ndarray | None:
    """Per-row critic values from ``Step.info["value"]``, when every step of the batch has one."""
    values = [
        finite(s.info.get("value")) if isinstance(s.info, dict) else None
        for t in trajectories
        for s in t.steps
    ]
    if not values or any(v is None for v in values):
        return None
    return np.array(values, dtype=np.float64)


def credit_columns(trajectories: list[Trajectory], methods: list[str] | None = None) -> CreditColumns:
    """Run every registered estimator (or ``methods``) with its defaults on the trajectories."""
    out = CreditColumns()
    try:
        batch = StepBatch.from_trajectories(trajectories)
    except ValueError as e:
        out.error = f"no advantages for this file: {e}"
        return out
    starts = np.unique(batch.traj_idx, return_index=True)[1]
    out.first_row = {str(batch.traj_names[batch.traj_idx[r]]): int(r) for r in starts}
    values = _critic_values([t for t in trajectories if t.steps])
    for name in methods or available_estimators():
        info = estimator_info(name)
        cfg: dict[str, Any] = {}
        if "values" in info.inputs:
            if values is None and all(getattr(batch, f) is not None for f in info.fields):
                out.skipped[name] = (
                    "critic method: not every step of this file has a critic value (Step.info['value'])"
                )
                continue
            cfg["values"] = values
        other = [i for i in info.inputs if i != "values"]
        if other:
            out.skipped[name] = f"needs caller input(s) {other} that a run directory does not hold"
            continue
        try:
            adv = estimate(name, batch, **cfg)
        except MissingInputError as e:
            out.skipped[name] = str(e)
            continue
        except (ValueError, RuntimeError) as e:
            out.skipped[name] = f"failed on this file: {e}"
            continue
        out.step[name] = adv.step
        out.spans[name] = dict(adv.spans)
        peak = float(np.max(np.abs(adv.step))) if adv.step.size else 0.0
        out.scale[name] = peak if peak > 0 else 1.0
    return out


# ----------------------------------------------------------------------------- run state


@dataclass
class Episode:
    """One trajectory as the viewer addresses it: ``id`` is its position in the run."""

    id: int
    source: int
    traj: Trajectory


class RunSnapshot:
    """The run's episodes as read at one moment; credit is computed per file on first use.

    A request renders from one snapshot, so a reload in another thread never mixes files.
    """

    def __init__(self, run_dir: Path, sources: list[TrajectorySource]) -> None:
        self.run_dir = run_dir
        self.sources = sources
        self.episodes: list[Episode] = []
        for k, src in enumerate(sources):
            for t in src.trajectories:
                self.episodes.append(Episode(len(self.episodes), k, t))
        self._credit: dict[int, CreditColumns] = {}
        self._lock = threading.Lock()

    def credit(self, source: int) -> CreditColumns:
        with self._lock:
            if source not in self._credit:
                self._credit[source] = credit_columns(self.sources[source].trajectories)
            return self._credit[source]

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.run_dir))
        except ValueError:
            return str(path)


class RunView:
    """A run directory whose trajectory files are re-read whenever one is added, removed or changed."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = check_run_dir(run_dir)
        self._lock = threading.Lock()
        self._signature: tuple[tuple[str, int | None, int | None], ...] | None = None
        self._snapshot = RunSnapshot(self.run_dir, [])
        self.current()

    def _current_signature(self) -> tuple[tuple[str, int | None, int | None], ...]:
        sig: list[tuple[str, int | None, int | None]] = []
        for p in trajectory_files(self.run_dir):
            try:
                st = p.stat()
                sig.append((str(p), st.st_mtime_ns, st.st_size))
            except OSError:
                sig.append((str(p), None, None))
        return tuple(sig)

    def current(self) -> RunSnapshot:
        """The latest snapshot, re-reading the files first if they changed."""
        with self._lock:
            sig = self._current_signature()
            if sig != self._signature:
                self._snapshot = RunSnapshot(self.run_dir, read_sources([Path(p) for p, _, _ in sig]))
                self._signature = sig
            return self._snapshot


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222}
table{border-collapse:collapse;margin:.6em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;vertical-align:top;text-align:left}
th{background:#f2f2f2}
td.num,td.adv{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
pre{margin:0;white-space:pre-wrap;word-break:break-word;max-height:16em;overflow:auto;max-width:40em}
.errors{background:#fff4e5;border:1px solid #f0b96b;padding:.5em 1em;margin:.6em 0}
.skipped{color:#555}
.ok{color:#15803d;font-weight:600}.fail{color:#b91c1c;font-weight:600}
form{margin:.6em 0}
tr.copy td{opacity:.55}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str) -> str:
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{_CSS}</style></head><body>{body}</body></html>"
    )


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def adv_colour(value: float, scale: float) -> str:
    """CSS background for an advantage: red below zero, green above, intensity |value| / scale."""
    t = min(1.0, abs(value) / scale) if scale > 0 else 0.0
    if t < 1e-12:
        return "background:transparent"
    rgb = "22,163,74" if value > 0 else "220,38,38"
    return f"background:rgba({rgb},{0.08 + 0.62 * t:.3f})"


def _bad_lines_html(view: RunSnapshot) -> str:
    items = [
        f"<li>{_e(view.rel(src.path))} line {n}: {_e(why)}</li>"
        if n
        else f"<li>{_e(view.rel(src.path))}: {_e(why)}</li>"
        for src in view.sources
        for n, why in src.bad_lines
    ]
    if not items:
        return ""
    shown = items[:50]
    more = f"<li>… and {len(items) - 50} more</li>" if len(items) > 50 else ""
    return (
        f"<div class='errors' id='bad-lines'><b>{len(items)} unreadable line(s) were skipped; "
        f"everything else is shown.</b><ul>{''.join(shown)}{more}</ul></div>"
    )


def _outcome_cell(t: Trajectory) -> str:
    return _num(finite(t.outcome))


def render_index(view: RunSnapshot, task: str = "", success: str = "", page: int = 1) -> str:
    """The episode list with its filter form; ``task`` is a case-insensitive substring of task_id."""
    eps = view.episodes
    if task:
        eps = [ep for ep in eps if task.lower() in ep.traj.task_id.lower()]
    if success in ("1", "0"):
        eps = [ep for ep in eps if bool(ep.traj.success) == (success == "1")]
    pages = max(1, -(-len(eps) // PAGE_SIZE))
    page = min(max(1, page), pages)
    shown = eps[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    files = ", ".join(f"{_e(view.rel(s.path))} ({len(s.trajectories)})" for s in view.sources) or "none"
    opts = "".join(
        f"<option value='{v}'{' selected' if success == v else ''}>{label}</option>"
        for v, label in (("", "any"), ("1", "succeeded"), ("0", "failed"))
    )
    form = (
        "<form method='get' action='/'>"
        f"<label>task contains <input name='task' id='task' value='{_e(task)}'></label> "
        f"<label>success <select name='success' id='success'>{opts}</select></label> "
        "<button type='submit' id='filter'>Filter</button> <a href='/'>clear</a></form>"
    )
    if not view.sources:
        listing = f"<p id='empty'>No trajectory files in {_e(view.run_dir)} (looked for trajectories*.jsonl and eval/*.jsonl).</p>"
    else:
        rows = "".join(
            f"<tr class='episode'><td class='num'><a href='/episode/{ep.id}'>{ep.id}</a></td>"
            f"<td>{_e(ep.traj.task_id)}</td><td>{_e(ep.traj.group_id)}</td><td>{_e(ep.traj.traj_id)}</td>"
            f"<td>{_success_html(ep.traj)}</td><td class='num'>{_outcome_cell(ep.traj)}</td>"
            f"<td class='num'>{len(ep.traj.steps)}</td><td>{_e(view.rel(view.sources[ep.source].path))}</td></tr>"
            for ep in shown
        )
        nav = ""
        if pages > 1:
            q = {"task": task, "success": success}
            prev = f"<a href='/?{_e(urlencode({**q, 'page': page - 1}))}'>previous</a> " if page > 1 else ""
            nxt = f" <a href='/?{_e(urlencode({**q, 'page': page + 1}))}'>next</a>" if page < pages else ""
            nav = f"<p>{prev}page {page} of {pages}{nxt}</p>"
        listing = (
            f"<p id='count'>{len(eps)} of {len(view.episodes)} episodes</p>{nav}"
            "<table id='episodes'><thead><tr><th>#</th><th>task</th><th>group</th><th>trajectory</th>"
            "<th>success</th><th>outcome</th><th>steps</th><th>file</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>{nav}"
        )
    body = f"<h1>Episodes</h1><p>Run: {_e(view.run_dir)} — files: {files}</p>{_bad_lines_html(view)}{form}{listing}"
    return _page(f"agentrl view — {view.run_dir.name}", body)


def _success_html(t: Trajectory) -> str:
    return "<span class='ok'>yes</span>" if t.success else "<span class='fail'>no</span>"


def _prompt_html(prompt: str | list[dict[str, Any]] | None) -> str:
    """The prompt the policy was given, folded away under the observation."""
    if not prompt:
        return ""
    if isinstance(prompt, str):
        text = prompt
    else:
        text = "\n\n".join(
            f"[{m.get('role', '?')}]\n{m.get('content', '')}" if isinstance(m, dict) else str(m)
            for m in prompt
        )
    return f"<details class='prompt'><summary>prompt</summary><pre>{_e(text)}</pre></details>"


def _episode_link(episode_id: int, current: bool) -> str:
    return f"<b>{episode_id}</b>" if current else f"<a href='/episode/{episode_id}'>{episode_id}</a>"


def _adv_cell(name: str, credit: CreditColumns, row: int) -> str:
    value = float(credit.step[name][row])
    spans = credit.spans.get(name) or {}
    title = "; ".join(f"{k} {float(v[row]):+.4f}" for k, v in spans.items())
    title_attr = f" title='{_e(title)}'" if title else ""
    return (
        f"<td class='adv' data-method='{_e(name)}' data-value='{value!r}'{title_attr} "
        f"style='{adv_colour(value, credit.scale[name])}'>{value:+.3f}</td>"
    )


def render_episode(view: RunSnapshot, ep: Episode) -> str:
    """One episode: its summary, its group, and the step table with one column per credit method."""
    t = ep.traj
    src = view.sources[ep.source]
    credit = view.credit(ep.source)
    methods = list(credit.step)
    start = credit.first_row.get(t.traj_id)
    has_turn_reward = any(s.turn_reward is not None for s in t.steps)
    has_info = any(s.info for s in t.steps)

    head = "<th>t</th><th>observation</th><th>response</th><th>action</th><th>valid</th><th>reward</th>"
    head += "<th>turn reward</th>" if has_turn_reward else ""
    head += "<th>info</th>" if has_info else ""
    head += "".join(
        f"<th class='method' data-method='{_e(m)}' title='{_e(estimator_info(m).summary)}'>{_e(m)}"
        f"<br><small>±{credit.scale[m]:.3g}</small></th>"
        for m in methods
    )
    rows = []
    for k, s in enumerate(t.steps):
        cells = (
            f"<td class='num'>{k}</td><td><pre>{_e(s.obs)}</pre>{_prompt_html(s.prompt)}</td><td><pre>{_e(s.response)}</pre></td>"
            f"<td><pre>{_e(s.action)}</pre></td><td>{'yes' if s.valid else '<b>no</b>'}</td>"
            f"<td class='num'>{_num(finite(s.reward))}</td>"
        )
        if has_turn_reward:
            cells += f"<td class='num'>{_num(finite(s.turn_reward))}</td>"
        if has_info:
            text = json.dumps(s.info, ensure_ascii=False, default=str) if s.info else ""
            cells += f"<td><pre class='info'>{_e(text)}</pre></td>"
        if start is not None:
            cells += "".join(_adv_cell(m, credit, start + k) for m in methods)
        copied = "copy_of" in s.info  # a branch's turn before its branch point: its parent's step
        rows.append(
            f"<tr class='step copy' title='copied from {_e(s.info['copy_of'])}'>{cells}</tr>"
            if copied
            else f"<tr class='step'>{cells}</tr>"
        )

    notes = []
    if credit.error:
        notes.append(f"<p class='errors' id='credit-error'>{_e(credit.error)}</p>")
    if credit.skipped:
        items = "".join(f"<li><b>{_e(m)}</b>: {_e(why)}</li>" for m, why in credit.skipped.items())
        notes.append(f"<div class='skipped' id='skipped'><p>Methods not shown:</p><ul>{items}</ul></div>")

    group = [e for e in view.episodes if e.source == ep.source and e.traj.group_id == t.group_id]
    episode_of = {g.traj.traj_id: g.id for g in group}

    def branch_cell(traj: Trajectory) -> str:
        """Where a branched trajectory left its parent (tree rollouts): the parent's link and the turn."""
        if traj.parent_id is None:
            return "<td>root</td>" if tree else ""
        parent = episode_of.get(traj.parent_id)
        link = _episode_link(parent, current=False) if parent is not None else _e(traj.parent_id)
        return f"<td class='branch'>{link} at turn {traj.branch_turn}</td>"

    tree = any(g.traj.parent_id is not None for g in group)
    group_rows = "".join(
        f"<tr><td class='num'>{_episode_link(g.id, current=g.id == ep.id)}</td>"
        f"<td>{_e(g.traj.traj_id)}</td><td>{_success_html(g.traj)}</td><td class='num'>{_outcome_cell(g.traj)}</td>"
        f"<td class='num'>{len(g.traj.steps)}</td>{branch_cell(g.traj)}</tr>"
        for g in group
    )
    info = json.dumps(t.info, ensure_ascii=False, indent=1, default=str) if t.info else ""
    summary = (
        f"<table id='summary'><tr><th>task</th><td>{_e(t.task_id)}</td></tr>"
        f"<tr><th>group</th><td>{_e(t.group_id)}</td></tr><tr><th>trajectory</th><td>{_e(t.traj_id)}</td></tr>"
        f"<tr><th>success</th><td>{_success_html(t)}</td></tr><tr><th>outcome</th><td>{_outcome_cell(t)}</td></tr>"
        f"<tr><th>ended</th><td>{'terminated' if t.terminated else 'truncated' if t.truncated else 'open'}</td></tr>"
        f"<tr><th>file</th><td>{_e(view.rel(src.path))}</td></tr>"
        + (f"<tr><th>info</th><td><pre>{_e(info)}</pre></td></tr>" if info else "")
        + "</table>"
    )
    body = (
        f"<p><a href='/' id='back'>← all episodes</a></p><h1>Episode {ep.id}</h1>{summary}"
        f"<h2>Group {_e(t.group_id)} ({len(group)} episodes)</h2>"
        f"<table id='group'><tr><th>#</th><th>trajectory</th><th>success</th><th>outcome</th><th>steps</th>"
        + ("<th>branch of</th>" if tree else "")
        + f"</tr>{group_rows}</table>"
        + (
            "<p>A tree group: branches continue their parent's episode from a turn; their earlier turns (greyed "
            "in the steps) are copies of the parent's, trained once.</p>"
            if tree
            else ""
        )
        + f"<h2>Steps</h2><p>Advantages are computed on the fly from all groups in {_e(view.rel(src.path))} with each method's "
        "defaults; colours are scaled per method (red negative, green positive, ± the method's largest |advantage|).</p>"
        f"<table id='steps'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{''.join(notes)}"
    )
    return _page(f"Episode {ep.id} — {t.task_id}", body)


def _not_found(what: str) -> str:
    return _page("not found", f"<h1>Not found</h1><p>{_e(what)}</p><p><a href='/'>all episodes</a></p>")


# ----------------------------------------------------------------------------- app and server


def create_app(run_dir: str | Path) -> Any:
    """The FastAPI app serving ``run_dir``; the files are re-read when they change."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    run = RunView(run_dir)
    app = FastAPI(title="agentrl viewer", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index(task: str = "", success: str = "", page: str = "1") -> HTMLResponse:
        page_no = int(page) if page.isdigit() else 1
        return HTMLResponse(render_index(run.current(), task=task, success=success, page=page_no))

    @app.get("/episode/{episode_id}", response_class=HTMLResponse)
    def episode(episode_id: str) -> HTMLResponse:
        snap = run.current()
        if not episode_id.isdigit() or int(episode_id) >= len(snap.episodes):
            why = f"no episode {episode_id!r} in this run ({len(snap.episodes)} episodes)"
            return HTMLResponse(_not_found(why), status_code=404)
        return HTMLResponse(render_episode(snap, snap.episodes[int(episode_id)]))

    @app.exception_handler(404)
    def missing(request: Any, exc: Any) -> HTMLResponse:
        return HTMLResponse(_not_found(f"no page at {request.url.path}"), status_code=404)

    app.state.run = run
    return app


def start_viewer(
    run_dir: str | Path, host: str = "127.0.0.1", port: int = 0
) -> tuple[str, Callable[[], None]]:
    """Serve ``run_dir`` in a background thread; returns (url, stop). For tests and notebooks."""
    server = ServerThread(create_app(run_dir), host, port)
    server.start()
    return server.url + "/", server.stop


def serve_viewer(
    run_dir: str | Path, host: str = "127.0.0.1", port: int = 0, open_browser: bool = False
) -> None:
    """Serve ``run_dir`` until interrupted (Ctrl-C); prints the URL (port 0 picks a free port)."""
    server = ServerThread(create_app(run_dir), host, port)
    server.listen()  # before the URL is printed: a client that connects at once waits instead of being refused
    url = server.url + "/"
    print(f"agentrl view: serving {run_dir} at {url} (Ctrl-C to stop)", flush=True)
    if open_browser:
        webbrowser.open(url)
    server.serve_forever()
