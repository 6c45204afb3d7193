"""The WebShop pages as a real web site (FastAPI), for people and for the browser env.

Every page is the page machine's element list rendered as HTML, so its visible text nodes, joined
by " [SEP] ", are exactly the text env's observation. Buttons and product ids are submit buttons,
options are radio buttons (a small inline script, allowed by its CSP hash, submits one when it is
clicked, even if already chosen), the search box is a form. Browsers get the new page straight
from the POST (one round trip less); other clients get post/redirect/get.

Safety: all text is HTML-escaped; request bodies are capped; session ids are 32 random url-safe
characters from ``secrets``; the session store is bounded (oldest dropped); unknown paths and
sessions are 404; no action can raise (an unusable one is a no-op). Meant for 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response

from agentrl.envs.webshop.pages import Element, Page, PageMachine, Session
from agentrl.envs.webshop.reward import RewardConfig
from agentrl.envs.webshop.text_env import shop_from_args
from agentrl.serving import ServerThread

# ServerThread is the shared one (agentrl.serving), named here too: serve the site in a thread (tests)

MAX_BODY_BYTES = 4096
MAX_FIELD_CHARS = 1000
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{32}")
SCRIPT = """document.querySelectorAll('input[type=radio]').forEach(function (r) {
  r.addEventListener('click', function () { r.form.submit(); });
});"""
STYLE = """body{font-family:sans-serif;max-width:60rem;margin:1rem auto;padding:0 1rem}
form{display:inline-block;margin:.2rem}.product-link{border:none;background:none;color:#06c;
text-decoration:underline;cursor:pointer;font-weight:bold}.option{margin-right:.8rem}
.option-name{font-weight:bold;margin-bottom:0}h1{margin-bottom:0}"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


# Script and style are inlined (one request per page) and allowed by hash only: nothing else runs.
SECURITY_HEADERS = {
    "Content-Security-Policy": f"default-src 'none'; script-src {_csp_hash(SCRIPT)}; style-src {_csp_hash(STYLE)}; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _e(text: str) -> str:
    return html.escape(text, quote=True)


class SessionStore:
    """Sessions by unguessable id, at most ``max_sessions`` (least recently used dropped first)."""

    def __init__(self, machine: PageMachine, max_sessions: int = 10_000) -> None:
        self.machine = machine
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self.lock = threading.Lock()

    def create(self, goal_idx: int) -> str:
        sid = secrets.token_urlsafe(24)
        with self.lock:
            self._sessions[sid] = self.machine.new_session(goal_idx)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return sid

    def get(self, sid: str) -> Session | None:
        if not SESSION_ID.fullmatch(sid):
            return None
        with self.lock:
            session = self._sessions.get(sid)
            if session is not None:
                self._sessions.move_to_end(sid)
            return session


def render_html(page: Page, session: Session, sid: str, selected: list[tuple[str, str]]) -> str:
    """The page as HTML; text nodes in document order are the elements' texts."""
    click = f"/s/{sid}/click"
    parts: list[str] = []
    elements = list(page.elements)
    i = 0
    while i < len(elements):
        el = elements[i]
        if el.kind == "heading":
            parts.append(f"<h1>{_e(el.text)}</h1>")
        elif el.kind == "text":
            parts.append(f"<p>{_e(el.text)}</p>")
        elif el.kind == "search":
            parts.append(
                f'<form method="post" action="/s/{sid}/search" class="search">'
                f'<input type="text" id="search_input" name="search_query" maxlength="{MAX_FIELD_CHARS}" '
                f'placeholder="Search..." autocomplete="off" required>'
                f'<button type="submit" id="search_btn" class="btn">{_e(el.text)}</button></form>'
            )
        elif el.kind in ("button", "product"):
            css = "product-link" if el.kind == "product" else "btn"
            parts.append(
                f'<form method="post" action="{click}"><button type="submit" name="label" '
                f'value="{_e(el.label)}"{_data_label(el, page)} class="{css}">{_e(el.text)}</button></form>'
            )
        elif el.kind == "option_name":
            j = i + 1
            radios = []
            while j < len(elements) and elements[j].kind == "option":
                radios.append(_radio(elements[j], page))
                j += 1
            parts.append(
                f'<p class="option-name">{_e(el.text)}</p><form method="post" action="{click}" '
                f'class="options">{"".join(radios)}</form>'
            )
            i = j
            continue
        i += 1
    if selected:
        # selected options, also on sub-pages where no radio shows them (the state key includes them)
        spans = "".join(f'<span data-group="{_e(g)}" data-value="{_e(v)}"></span>' for g, v in selected)
        parts.append(f'<div id="selection" hidden>{spans}</div>')
    if session.done:
        parts.append(f'<div id="outcome" data-reward="{session.reward!r}" data-done="1" hidden></div>')
    body = "".join(parts)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>WebShop</title>'
        f"<style>{STYLE}</style></head><body><main>{body}</main><script>{SCRIPT}</script></body></html>"
    )


def _data_label(el: Element, page: Page) -> str:
    # only the element a click[label] reaches carries the label (a later option may shadow a button)
    return f' data-label="{_e(el.label)}"' if page.clickables.get(el.label) is el else ""


def _radio(el: Element, page: Page) -> str:
    checked = " checked" if el.checked else ""
    return (
        f'<label class="option"><input type="radio" name="label" value="{_e(el.label)}" data-group="{_e(el.group)}"'
        f"{_data_label(el, page)}{checked}>"
        f"{_e(el.text)}</label>"
    )


def create_app(
    split: str = "test",
    *,
    data_dir: str | None = None,
    num_products: int | None = None,
    seed: int = 0,
    goals: str = "human",
    max_sessions: int = 10_000,
    reward_config: RewardConfig | Mapping[str, Any] | None = None,
) -> FastAPI:
    """The FastAPI app serving one shop; goals are drawn from ``split`` (``/?goal=N`` picks one)."""
    shop = shop_from_args(data_dir, num_products, seed, goals)
    goal_ids = shop.split_indices(split)
    machine = PageMachine(shop, reward_config)
    store = SessionStore(machine, max_sessions)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.goal_ids = goal_ids

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return PlainTextResponse(
                f"request body too large (limit {MAX_BODY_BYTES} bytes)", status_code=413
            )
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    def not_found() -> Response:
        return PlainTextResponse("no such session (it may have expired); start one at /", status_code=404)

    async def read_form(request: Request) -> dict[str, str] | Response:
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return PlainTextResponse("expected an application/x-www-form-urlencoded form", status_code=415)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return PlainTextResponse(
                    f"request body too large (limit {MAX_BODY_BYTES} bytes)", status_code=413
                )
        try:
            fields = parse_qs(body.decode("utf-8"), max_num_fields=8, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            return PlainTextResponse("malformed form body", status_code=400)
        return {k: v[0][:MAX_FIELD_CHARS] for k, v in fields.items() if v}

    @app.get("/")
    async def start(goal: str | None = None) -> Response:
        if goal is None:
            idx = goal_ids[secrets.randbelow(len(goal_ids))]
        elif goal.isdigit() and int(goal) in goal_ids:
            idx = int(goal)
        else:
            return PlainTextResponse(
                f"goal must be an integer in [{goal_ids.start}, {goal_ids.stop}) for split {split!r}",
                status_code=400,
            )
        return RedirectResponse(f"/s/{store.create(idx)}", status_code=303)

    @app.get("/s/{sid}")
    async def page(sid: str) -> Response:
        session = store.get(sid)
        if session is None:
            return not_found()
        with store.lock:
            return HTMLResponse(render_html(machine.render(session), session, sid, machine.selected(session)))

    @app.get("/s/{sid}/state")
    async def state(sid: str) -> Response:
        session = store.get(sid)
        if session is None:
            return not_found()
        with store.lock:
            page = machine.render(session)
            return JSONResponse(
                {
                    "observation": page.text(),
                    "done": session.done,
                    "reward": session.reward,
                    "goal": session.goal_idx,
                    "clickables": list(page.clickables),
                    "has_search": page.has_search,
                }
            )

    async def act(request: Request, sid: str, field: str, verb: str) -> Response:
        session = store.get(sid)
        if session is None:
            return not_found()
        form = await read_form(request)
        if isinstance(form, Response):
            return form
        with store.lock:
            machine.step(session, f"{verb}[{form.get(field, '')}]")
            if "text/html" in request.headers.get("accept", ""):
                # browsers get the new page at once (one round trip less than post/redirect/get)
                return HTMLResponse(
                    render_html(machine.render(session), session, sid, machine.selected(session))
                )
        return RedirectResponse(f"/s/{sid}", status_code=303)

    @app.post("/s/{sid}/click")
    async def click(request: Request, sid: str) -> Response:
        return await act(request, sid, "label", "click")

    @app.post("/s/{sid}/search")
    async def search(request: Request, sid: str) -> Response:
        return await act(request, sid, "search_query", "search")

    return app


def serve(
    host: str = "127.0.0.1",
    port: int = 3000,
    split: str = "test",
    num_products: int | None = None,
    data_dir: str | None = None,
    seed: int = 0,
    goals: str = "human",
) -> None:
    """Serve the shop until interrupted; open http://HOST:PORT/ (or /?goal=N) in a browser."""
    app = create_app(split, data_dir=data_dir, num_products=num_products, seed=seed, goals=goals)
    server = ServerThread(app, host, port, log_level="info", access_log=True)
    server.listen()  # before the URL is printed: a browser opened at once waits instead of being refused
    print(f"WebShop site at {server.url}/ (Ctrl-C to stop)", flush=True)
    server.serve_forever()
