"""Any AgentEnv behind HTTP: a FastAPI server and a client env that behaves exactly like the local one.

Server (``serve_env("maze", port=8100, token="...")``): ``POST /create`` makes an instance of the
env the server was started with (clients cannot choose constructor arguments), then
``POST /reset {env_id, seed, options}``, ``POST /step {env_id, action}``, ``POST /close {env_id}``;
all JSON. ``GET /health`` is open; everything else needs ``Authorization: Bearer <token>`` when a
token is set. Bodies are capped, env ids are unguessable, the number of open envs is bounded,
and an env that raises answers an error status with the message (the server stays up). It binds
127.0.0.1 unless told otherwise.

Client (``RemoteEnv(url, token=...)`` or ``make("remote", url=...)``): a regular AgentEnv; the
same seed, task and actions give the same transcript as the local env (after a JSON round trip,
which turns tuples into lists).

(No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations at run time.)
"""

import json
import logging
import math
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from agentrl.envs.base import AgentEnv, EnvSnapshot
from agentrl.serving import MAX_BODY_BYTES, BodyError, ServerThread, read_json_request, warn_if_open

# ServerThread is the shared one (agentrl.serving), named here too: serve an env app in a thread
__all__ = ["RemoteEnv", "RemoteEnvError", "ServerThread", "create_app", "jsonable", "serve_env"]

log = logging.getLogger(__name__)


class RemoteEnvError(RuntimeError):
    """The env server refused or failed a request; the message carries its answer."""


def jsonable(x: Any) -> Any:
    """``x`` with numpy scalars/arrays, tuples and sets turned into JSON types (other objects as str)."""
    if isinstance(x, (str, bool, int)) or x is None:
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (set, frozenset)):
        return sorted((jsonable(v) for v in x), key=repr)
    return str(x)


class _Slot:
    def __init__(self, env: AgentEnv) -> None:
        self.env = env
        self.lock = threading.Lock()


def create_app(
    factory: Callable[[], AgentEnv] | str,
    env_kwargs: dict[str, Any] | None = None,
    *,
    token: str | None = None,
    max_envs: int = 256,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_snapshots: int = 4096,
) -> Any:
    """The FastAPI app serving one env (a registered name with ``env_kwargs``, or a zero-argument factory).

    Envs that can snapshot (``AgentEnv.snapshot_fields``) also answer ``/snapshot`` and
    ``/restore``: snapshots stay on the server (the client holds an id), shared by every env of
    the server so that siblings restore each other's; the oldest beyond ``max_snapshots`` expire."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    from agentrl.envs.registration import make

    if isinstance(factory, str):
        name, kwargs = factory, dict(env_kwargs or {})
        make(name, **kwargs).close()  # fail now, at start-up, on a bad name or bad arguments
        build: Callable[[], AgentEnv] = lambda: make(name, **kwargs)
        label = name
    else:
        build, label = factory, getattr(factory, "__name__", "env")
    if max_envs < 1:
        raise ValueError(f"max_envs must be >= 1, got {max_envs}")
    envs: OrderedDict[str, _Slot] = OrderedDict()
    envs_lock = threading.Lock()
    snapshots: OrderedDict[str, EnvSnapshot] = OrderedDict()
    pending = [0]
    app = FastAPI(title=f"agentrl env server ({label})", docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def body_of(request: Request, *fields: str) -> dict[str, Any] | JSONResponse:
        try:
            body = await read_json_request(request, token, max_body_bytes)
        except BodyError as e:
            return error(e.status, e.message)
        missing = [f for f in fields if f not in body]
        if missing:
            return error(422, f"missing field(s) {missing}")
        return body

    def slot_of(body: dict[str, Any]) -> _Slot | JSONResponse:
        env_id = body.get("env_id")
        with envs_lock:
            slot = envs.get(env_id) if isinstance(env_id, str) else None
        return slot if slot is not None else error(404, f"no open env with id {str(env_id)[:64]!r}")

    def run(slot: _Slot, what: str, fn: Callable[[], Any]) -> Any:
        with slot.lock:
            try:
                return fn()
            except (ValueError, TypeError, KeyError) as e:
                return error(400, f"{what} failed: {type(e).__name__}: {e}")
            except RuntimeError as e:
                return error(409, f"{what} failed: {type(e).__name__}: {e}")
            except Exception as e:
                log.exception("env %s failed", what)
                return error(500, f"{what} failed: {type(e).__name__}: {e}")

    async def on_slot(
        request: Request, what: str, fields: tuple[str, ...], fn: Callable[[_Slot, dict[str, Any]], Any]
    ) -> Any:
        """Read the body (``env_id`` and ``fields``), find the env, and run ``fn(slot, body)`` on it in
        a worker thread, one call at a time per env; errors come back as JSON with their status."""
        body = await body_of(request, "env_id", *fields)
        if isinstance(body, JSONResponse):
            return body
        slot = slot_of(body)
        if isinstance(slot, JSONResponse):
            return slot
        if what == "snapshot" and not slot.env.can_snapshot:
            return error(501, f"{label} cannot snapshot its episodes; resume them by replay")
        return await run_in_threadpool(run, slot, what, lambda: fn(slot, body))

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "env": label, "open_envs": len(envs)}

    @app.post("/create")
    async def create(request: Request) -> Any:
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        with envs_lock:
            if len(envs) + pending[0] >= max_envs:
                return error(429, f"too many open envs (limit {max_envs}); close some first")
            pending[0] += 1  # counts against the limit while the env is being built
        try:
            env = await run_in_threadpool(build)
        except Exception as e:
            return error(500, f"creating the env failed: {type(e).__name__}: {e}")
        finally:
            with envs_lock:
                pending[0] -= 1
        env_id = secrets.token_urlsafe(24)
        with envs_lock:
            envs[env_id] = _Slot(env)
        return {
            "env_id": env_id,
            "task_ids": [str(t) for t in env.task_ids()],
            "max_text_length": int(getattr(env.observation_space, "max_length", 100_000)),
            "env": label,
            "can_snapshot": bool(env.can_snapshot),
        }

    def _reset(slot: _Slot, body: dict[str, Any]) -> Any:
        seed, options = body.get("seed"), body.get("options")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or null, got {seed!r}")
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"options must be an object or null, got {type(options).__name__}")
        obs, info = slot.env.reset(seed=seed, options=options)
        return {"obs": obs, "info": jsonable(info)}

    def _step(slot: _Slot, action: Any) -> Any:
        obs, reward, terminated, truncated, info = slot.env.step(action)
        return {
            "obs": obs,
            "reward": float(reward),
            "terminated": bool(terminated),
            "truncated": bool(truncated),
            "info": jsonable(info),
        }

    @app.post("/reset")
    async def reset(request: Request) -> Any:
        return await on_slot(request, "reset", (), _reset)

    @app.post("/step")
    async def step(request: Request) -> Any:
        return await on_slot(request, "step", ("action",), lambda slot, body: _step(slot, body["action"]))

    def _snapshot(slot: _Slot) -> Any:
        snap = slot.env.snapshot()
        snapshot_id = secrets.token_urlsafe(18)
        with envs_lock:
            snapshots[snapshot_id] = snap
            while len(snapshots) > max_snapshots:
                snapshots.popitem(last=False)
        return {"snapshot_id": snapshot_id}

    def _restore(slot: _Slot, snapshot_id: Any) -> Any:
        with envs_lock:
            snap = snapshots.get(snapshot_id) if isinstance(snapshot_id, str) else None
        if snap is None:
            raise KeyError(
                f"no snapshot {str(snapshot_id)[:64]!r} (unknown, or expired: the server keeps {max_snapshots})"
            )
        slot.env.restore(snap)
        return {"restored": True}

    @app.post("/snapshot")
    async def snapshot(request: Request) -> Any:
        return await on_slot(request, "snapshot", (), lambda slot, body: _snapshot(slot))

    @app.post("/restore")
    async def restore(request: Request) -> Any:
        return await on_slot(
            request, "restore", ("snapshot_id",), lambda slot, body: _restore(slot, body["snapshot_id"])
        )

    @app.post("/close")
    async def close(request: Request) -> Any:
        body = await body_of(request, "env_id")
        if isinstance(body, JSONResponse):
            return body
        with envs_lock:
            slot = envs.pop(body["env_id"], None) if isinstance(body["env_id"], str) else None
        if slot is None:
            return error(404, f"no open env with id {str(body['env_id'])[:64]!r}")
        with slot.lock:
            slot.env.close()
        return {"closed": True}

    return app


def serve_env(
    name: str,
    host: str = "127.0.0.1",
    port: int = 8100,
    token: str | None = None,
    *,
    max_envs: int = 256,
    **env_kwargs: Any,
) -> None:
    """Serve the registered env ``name`` (built with ``env_kwargs``) until interrupted."""
    warn_if_open(name, host, token)
    ServerThread(create_app(name, env_kwargs, token=token, max_envs=max_envs), host, port).serve_forever()


class RemoteEnv(AgentEnv):
    """An env living in an env server (``serve_env``), used like a local one."""

    def __init__(
        self, url: str, *, token: str | None = None, timeout: float = 120.0, render_mode: str | None = None
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.env_id: str | None = None
        created = self._post("/create", {})
        super().__init__(render_mode=render_mode, max_text_length=created["max_text_length"])
        self.env_id, self._task_ids = created["env_id"], list(created["task_ids"])
        self._can_snapshot = bool(created.get("can_snapshot", False))  # older servers: replay only

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            resp = self._client.post(path, json=body)
        except httpx.HTTPError as e:
            raise RemoteEnvError(f"env server {self.url} unreachable: {e}") from e
        if resp.status_code == 200:
            return resp.json()
        try:
            message = resp.json().get("error", resp.text)
        except ValueError:
            message = resp.text
        if resp.status_code == 400:
            raise ValueError(message)
        if resp.status_code == 409:
            raise RuntimeError(message)
        raise RemoteEnvError(f"env server {self.url} answered {resp.status_code}: {message}")

    def task_ids(self) -> Sequence[str]:
        return self._task_ids

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        out = self._post("/reset", {"env_id": self.env_id, "seed": seed, "options": options})
        self._last_obs = out["obs"]
        return out["obs"], out["info"]

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        out = self._post("/step", {"env_id": self.env_id, "action": action})
        self._last_obs = out["obs"]
        return out["obs"], out["reward"], out["terminated"], out["truncated"], out["info"]

    @property
    def can_snapshot(self) -> bool:
        return self._can_snapshot

    def snapshot(self) -> EnvSnapshot:
        """A handle on a snapshot the server keeps (any env of the same server restores it)."""
        if not self._can_snapshot:
            raise NotImplementedError(f"the env served at {self.url} cannot snapshot: resume by replay")
        out = self._post("/snapshot", {"env_id": self.env_id})
        return EnvSnapshot(
            env=type(self).__name__, fields={"server": self.url, "id": out["snapshot_id"]}, rng=None
        )

    def restore(self, snapshot: EnvSnapshot) -> None:
        if not isinstance(snapshot, EnvSnapshot) or snapshot.env != type(self).__name__:
            raise ValueError("RemoteEnv.restore needs a snapshot taken by a RemoteEnv")
        if snapshot.fields.get("server") != self.url:
            raise ValueError(f"the snapshot lives on {snapshot.fields.get('server')}, not on {self.url}")
        self._post("/restore", {"env_id": self.env_id, "snapshot_id": snapshot.fields["id"]})

    def close(self) -> None:
        if self.env_id is not None:
            env_id, self.env_id = self.env_id, None
            try:
                self._post("/close", {"env_id": env_id})
            finally:
                self._client.close()


def _parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON when it parses (numbers, true/false), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"options look like key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agentrl.envs.remote NAME [--host H] [--port P] [--token T] [-o key=value ...]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m agentrl.envs.remote", description="serve a registered env over HTTP"
    )
    parser.add_argument("name", help="a registered env name, e.g. maze, search, tools")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN'")
    parser.add_argument("--max-envs", type=int, default=256)
    parser.add_argument(
        "-o", "--option", action="append", default=[], help="env constructor argument key=value"
    )
    args = parser.parse_args(argv)
    serve_env(
        args.name,
        args.host,
        args.port,
        args.token,
        max_envs=args.max_envs,
        **dict(map(_parse_option, args.option)),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
