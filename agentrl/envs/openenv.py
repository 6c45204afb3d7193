"""OpenEnv both ways: an OpenEnv env played as an AgentEnv, and any AgentEnv served to OpenEnv clients.

OpenEnv's session protocol is what its ``EnvClient`` speaks (and so TRL, SkyRL and torchforge through
it): one WebSocket per client at ``/ws``, one env instance per connection. The client sends
``{"type": "reset", "data": {seed, episode_id, ...}}``, ``{"type": "step", "data": <action fields>}``,
``{"type": "state"}`` and ``{"type": "close"}``; the server answers
``{"type": "observation", "data": {"observation": {...}, "reward": r, "done": d}}``,
``{"type": "state", "data": {...}}`` or ``{"type": "error", "data": {"message": ..., "code": ...}}``.
agentrl speaks it itself (websockets, FastAPI): neither side imports openenv-core, so any OpenEnv
version with this protocol works; the tests check both directions against openenv-core's own
client and server.

Client, ``OpenEnvEnv(url, action_field="message")`` or ``make("openenv", url=...)``: the text action
goes into one field of the action; the observation's text is one field of the observation (or all
of it as JSON). Group resets hold where the env honours ``seed``; ``check_env`` says whether it does.

Server, ``create_openenv_app("maze", {"size": 3}, token=...)`` or ``agentrl envs serve maze --protocol
openenv``: actions are ``{"message": text}``, observations ``{"text", "info", "truncated"}`` (the info
dict of the agentrl contract, JSON-typed), reset takes ``seed``, ``episode_id``, ``task_id`` and any
other env option. With a token, the handshake needs ``Authorization: Bearer <token>`` (or HTTP Basic
with the token as password, which a URL ``http://agentrl:TOKEN@host:port`` makes any websockets
client send). It binds 127.0.0.1 unless told otherwise.

(No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations at run time.)
"""

import base64
import binascii
import contextlib
import hmac
import inspect
import ipaddress
import json
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agentrl.envs.base import AgentEnv
from agentrl.envs.remote import jsonable
from agentrl.serving import MAX_BODY_BYTES, ServerThread, check_bearer, warn_if_open

__all__ = [
    "OpenEnvEnv",
    "OpenEnvError",
    "create_openenv_app",
    "openenv_server",
    "serve_openenv",
]

log = logging.getLogger(__name__)

# the JSON schemas /schema reports for the served envs (OpenEnv clients read them to build actions)
ACTION_SCHEMA = {
    "title": "TextAction",
    "type": "object",
    "properties": {
        "message": {"type": "string", "description": "the agent's text action"},
        "metadata": {"type": "object", "description": "ignored"},
    },
    "required": ["message"],
    "additionalProperties": False,
}
OBSERVATION_SCHEMA = {
    "title": "TextObservation",
    "type": "object",
    "properties": {
        "text": {"type": "string", "description": "the env's observation"},
        "info": {"type": "object", "description": "agentrl's info: state_key, valid, success, ..."},
        "truncated": {"type": "boolean", "description": "the episode ended on a step limit"},
        "done": {"type": "boolean"},
        "reward": {"type": ["number", "null"]},
    },
}
STATE_SCHEMA = {
    "title": "State",
    "type": "object",
    "properties": {
        "episode_id": {"type": ["string", "null"]},
        "step_count": {"type": "integer"},
        "env": {"type": "string"},
        "task_id": {"type": ["string", "null"]},
    },
}
# what the error answers carry in data["exception"], so that the client raises what the env raised
_EXCEPTION_KINDS: dict[str, type[Exception]] = {"ValueError": ValueError, "RuntimeError": RuntimeError}


class OpenEnvError(RuntimeError):
    """The OpenEnv server refused or failed a request, or could not be reached; the message says which."""


# ----------------------------------------------------------------------------- client


def _ws_url(url: str) -> str:
    """``http(s)://`` -> ``ws(s)://`` (user info kept), no trailing slash."""
    parts = urlsplit(url.rstrip("/"))
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"an OpenEnv server URL starts with http://, https://, ws:// or wss://, got {url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))


def _http_url(url: str) -> str:
    parts = urlsplit(url.rstrip("/"))
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    netloc = parts.netloc.rpartition("@")[2]  # credentials go in a header, not the URL
    return urlunsplit((scheme, netloc, parts.path, "", ""))


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _obj(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one (answers are read defensively)."""
    return value if isinstance(value, dict) else {}


def _default_text(observation: dict[str, Any]) -> str:
    """The observation's text when no field is named: its only string field, else all of it as JSON."""
    strings = [v for v in observation.values() if isinstance(v, str)]
    if len(strings) == 1:
        return strings[0]
    return json.dumps(observation, sort_keys=True, ensure_ascii=False)


class OpenEnvEnv(AgentEnv):
    """An OpenEnv environment (any server speaking OpenEnv's WebSocket protocol) used as an AgentEnv.

    ``action_field``: the action field the text goes into (``action_extra`` adds fixed fields).
    ``observation_field``: the observation field that is the text observation (default: the only
    string field, else the whole observation as JSON). ``admissible_field``: a list-of-strings field
    of legal actions, reported as ``info["admissible_actions"]`` (an action outside it is then
    ``valid=False``). ``info["observation"]`` keeps the whole observation. A reward of None counts
    as 0, and ``success`` is ``done and reward > 0``. An agentrl server (``--protocol openenv``)
    sends agentrl's own info, truncation and task ids, and these options are not needed.
    """

    def __init__(
        self,
        url: str,
        *,
        action_field: str = "message",
        observation_field: str | None = None,
        admissible_field: str | None = None,
        action_extra: dict[str, Any] | None = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        max_message_bytes: int = 100 * 2**20,
        render_mode: str | None = None,
    ) -> None:
        from websockets.exceptions import InvalidHandshake, InvalidURI
        from websockets.sync.client import connect

        self.url = url.rstrip("/")
        self.action_field, self.observation_field = action_field, observation_field
        self.admissible_field = admissible_field
        self.action_extra = dict(action_extra or {})
        self.timeout = timeout
        self._headers = dict(headers or {})
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._ws: Any = None
        self._admissible: list[str] | None = None  # the legal actions of the last observation
        options: dict[str, Any] = {
            "additional_headers": self._headers or None,
            "open_timeout": connect_timeout,
            "max_size": max_message_bytes,
            "proxy": None if _is_loopback(_ws_url(url)) else True,
        }
        if (
            "legacy" in inspect.signature(connect).parameters
        ):  # websockets 17 warns unless told (older lack it)
            options["legacy"] = True
        try:
            self._ws = connect(_ws_url(url) + "/ws", **options)
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as e:
            raise OpenEnvError(f"cannot open an OpenEnv session at {self.url}: {e}") from e
        try:
            self._task_ids, max_text_length = self._server_tasks()
            super().__init__(render_mode=render_mode, max_text_length=max_text_length)
        except BaseException:
            self._ws.close()
            raise

    def _server_tasks(self) -> tuple[list[str], int]:
        """Task ids and text limit from an agentrl server's ``GET /tasks``; none from other servers."""
        import httpx

        try:
            resp = httpx.get(_http_url(self.url) + "/tasks", headers=self._headers, timeout=self.timeout)
            body = resp.json() if resp.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            body = {}
        ids = body.get("task_ids") if isinstance(body, dict) else None
        if not (isinstance(ids, list) and all(isinstance(t, str) for t in ids)):
            return [], 100_000
        limit = body.get("max_text_length")
        return ids, limit if isinstance(limit, int) and limit > 0 else 100_000

    def task_ids(self) -> Sequence[str]:
        return self._task_ids

    def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        from websockets.exceptions import ConnectionClosed

        if self._ws is None:
            raise RuntimeError("the env is closed")
        with contextlib.suppress(ConnectionClosed):  # a closed session may have left its reason to read
            self._ws.send(json.dumps(message))
        try:
            raw = self._ws.recv(timeout=self.timeout)
        except TimeoutError as e:
            raise OpenEnvError(f"the OpenEnv server {self.url} did not answer within {self.timeout} s") from e
        except ConnectionClosed as e:
            raise OpenEnvError(f"the OpenEnv server {self.url} closed the session: {e}") from e
        try:
            reply = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
            raise OpenEnvError(f"the OpenEnv server {self.url} sent something that is not JSON: {e}") from e
        if not isinstance(reply, dict):
            raise OpenEnvError(f"the OpenEnv server {self.url} sent a non-object answer: {reply!r:.200}")
        if reply.get("type") == "error":
            data = _obj(reply.get("data"))
            text = f"{data.get('message', 'unknown error')} (code: {data.get('code', 'UNKNOWN')})"
            if data.get("errors"):
                text += f": {data['errors']}"
            kind = _EXCEPTION_KINDS.get(str(data.get("exception")))
            if kind is not None:
                raise kind(data.get("message", text))
            if data.get("code") == "VALIDATION_ERROR":
                raise ValueError(text)
            raise OpenEnvError(f"the OpenEnv server {self.url} answered an error: {text}")
        return reply

    def _result(
        self, reply: dict[str, Any], action: Any = None, *, step: bool
    ) -> tuple[str, float, bool, bool, dict[str, Any]]:
        data = _obj(reply.get("data"))
        obs = _obj(data.get("observation"))
        reward = data.get("reward")
        reward = float(reward) if isinstance(reward, (int, float)) else 0.0
        done = bool(data.get("done", False))
        if isinstance(obs.get("text"), str) and isinstance(obs.get("info"), dict) and "truncated" in obs:
            # an agentrl server: the env's own text, info and truncation
            text, info, truncated = obs["text"], dict(obs["info"]), bool(obs["truncated"])
        else:
            if self.observation_field is not None:
                if self.observation_field not in obs:
                    raise OpenEnvError(
                        f"the observation has no field {self.observation_field!r}: {sorted(obs)}"
                    )
                value = obs[self.observation_field]
                text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            else:
                text = _default_text(obs)
            info = {"state_key": text, "observation": obs}
            truncated = False
            if self.admissible_field is not None:
                legal = obs.get(self.admissible_field)
                if isinstance(legal, list):
                    info["admissible_actions"] = [str(a) for a in legal]
            if step:
                legal_before = self._admissible
                info["valid"] = legal_before is None or action in legal_before
                info["success"] = bool(done and reward > 0)
            self._admissible = info.get("admissible_actions")
        info.setdefault("state_key", text)
        self._last_obs = text
        return text, reward, done and not truncated, truncated, info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        data: dict[str, Any] = dict(options or {})
        if seed is not None:
            data["seed"] = seed
        text, _reward, _terminated, _truncated, info = self._result(
            self._call({"type": "reset", "data": data}), step=False
        )
        return text, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        payload = {**self.action_extra, self.action_field: jsonable(action)}
        return self._result(self._call({"type": "step", "data": payload}), action, step=True)

    def state(self) -> dict[str, Any]:
        """The server's ``state`` of the session (episode id, step count, ...)."""
        reply = self._call({"type": "state"})
        return _obj(reply.get("data"))

    def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is None:
            return
        with contextlib.suppress(Exception):  # the server may already be gone; closing is best effort
            ws.send(json.dumps({"type": "close"}))
        ws.close()


# ----------------------------------------------------------------------------- server


def _authorized(headers: Any, token: str | None) -> bool:
    """``Authorization: Bearer TOKEN``, or HTTP Basic with TOKEN as the password."""
    if token is None:
        return True

    class _Req:  # check_bearer reads request.headers
        pass

    req = _Req()
    req.headers = headers  # type: ignore[attr-defined]
    if check_bearer(req, token) is None:
        return True
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        password = base64.b64decode(given.strip(), validate=True).decode().partition(":")[2]
    except (binascii.Error, UnicodeDecodeError):
        return False
    return hmac.compare_digest(password.encode(), token.encode())


def _error(message: str, code: str, **extra: Any) -> str:
    return json.dumps({"type": "error", "data": {"message": message, "code": code, **extra}})


class _Session:
    """One connection's env and episode bookkeeping; ``handle`` turns a message into the answer."""

    def __init__(self, env: AgentEnv, label: str, max_message_bytes: int) -> None:
        self.env, self.label, self.max_message_bytes = env, label, max_message_bytes
        self.episode_id: str | None = None
        self.task_id: str | None = None
        self.step_count = 0

    def handle(self, raw: str | bytes) -> str | None:
        """The answer to one message, or None for ``close``."""
        if len(raw) > self.max_message_bytes:
            return _error(f"message too large (limit {self.max_message_bytes} bytes)", "VALIDATION_ERROR")
        try:
            message = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return _error(f"Invalid JSON: {e}", "INVALID_JSON")
        if not isinstance(message, dict):
            return _error(f"a message is a JSON object, got {type(message).__name__}", "VALIDATION_ERROR")
        kind = message.get("type", "")
        if kind == "close":
            return None
        if kind == "state":
            state = {
                "episode_id": self.episode_id,
                "step_count": self.step_count,
                "env": self.label,
                "task_id": self.task_id,
            }
            return json.dumps({"type": "state", "data": state})
        if kind not in ("reset", "step"):
            return _error(f"Unknown message type: {str(kind)[:64]}", "UNKNOWN_TYPE")
        data = message.get("data", {})
        if not isinstance(data, dict):
            return _error(f"{kind} data must be an object, got {type(data).__name__}", "VALIDATION_ERROR")
        try:
            return self._reset(data) if kind == "reset" else self._step(data)
        except (ValueError, TypeError, KeyError) as e:
            return _error(
                f"{kind} failed: {type(e).__name__}: {e}", "EXECUTION_ERROR", exception="ValueError"
            )
        except RuntimeError as e:
            return _error(
                f"{kind} failed: {type(e).__name__}: {e}", "EXECUTION_ERROR", exception="RuntimeError"
            )
        except Exception as e:
            log.exception("env %s failed", kind)
            return _error(f"{kind} failed: {type(e).__name__}: {e}", "EXECUTION_ERROR")

    def _reset(self, data: dict[str, Any]) -> str:
        data = dict(data)
        seed, episode_id, options = (
            data.pop("seed", None),
            data.pop("episode_id", None),
            data.pop("options", None),
        )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            return _error(f"seed must be a non-negative int or null, got {seed!r}", "VALIDATION_ERROR")
        if episode_id is not None and not isinstance(episode_id, str):
            return _error(f"episode_id must be a string or null, got {episode_id!r}", "VALIDATION_ERROR")
        if options is not None and not isinstance(options, dict):
            return _error(
                f"options must be an object or null, got {type(options).__name__}", "VALIDATION_ERROR"
            )
        options = {**(options or {}), **data}  # task_id and any other reset keyword are env options
        obs, info = self.env.reset(seed=seed, options=options or None)
        self.episode_id = episode_id or str(uuid.uuid4())
        self.task_id = str(options["task_id"]) if options.get("task_id") is not None else None
        self.step_count = 0
        return self._observation(obs, None, False, False, info)

    def _step(self, data: dict[str, Any]) -> str:
        extra = set(data) - {"message", "metadata"}
        if "message" not in data or extra:
            what = f"unknown field(s) {sorted(extra)}" if extra else "missing field 'message'"
            return _error(f"a step's action is {{'message': text}}: {what}", "VALIDATION_ERROR")
        obs, reward, terminated, truncated, info = self.env.step(data["message"])
        self.step_count += 1
        return self._observation(obs, float(reward), bool(terminated), bool(truncated), info)

    @staticmethod
    def _observation(
        obs: str, reward: float | None, terminated: bool, truncated: bool, info: dict[str, Any]
    ) -> str:
        observation = {"text": obs, "info": jsonable(info), "truncated": truncated}
        data = {"observation": observation, "reward": jsonable(reward), "done": terminated or truncated}
        return json.dumps({"type": "observation", "data": data})


def create_openenv_app(
    factory: Callable[[], AgentEnv] | str,
    env_kwargs: dict[str, Any] | None = None,
    *,
    token: str | None = None,
    max_envs: int = 256,
    max_message_bytes: int = MAX_BODY_BYTES,
) -> Any:
    """The FastAPI app serving one env to OpenEnv clients (a registered name with ``env_kwargs``, or a
    zero-argument factory). ``max_envs`` bounds the sessions open at once; each has its own env."""
    from fastapi import FastAPI, Request, WebSocket
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.websockets import WebSocketDisconnect

    import agentrl
    from agentrl.envs.registration import make

    if max_envs < 1:
        raise ValueError(f"max_envs must be >= 1, got {max_envs}")
    if isinstance(factory, str):
        name, kwargs = factory, dict(env_kwargs or {})
        build: Callable[[], AgentEnv] = lambda: make(name, **kwargs)
        label = name
    else:
        build, label = factory, getattr(factory, "__name__", "env")
    probe = build()  # fail now, at start-up, on a bad name or bad arguments; and learn the task ids
    task_ids = [str(t) for t in probe.task_ids()]
    max_text_length = int(getattr(probe.observation_space, "max_length", 100_000))
    probe.close()

    open_sessions = [0]
    lock = threading.Lock()
    app = FastAPI(title=f"agentrl OpenEnv server ({label})", docs_url=None, redoc_url=None, openapi_url=None)

    def refused(request: Request) -> JSONResponse | None:
        if _authorized(request.headers, token):
            return None
        return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "healthy"}

    @app.get("/metadata")
    def metadata(request: Request) -> Any:
        return refused(request) or {
            "name": label,
            "description": f"agentrl env {label!r}: text actions {{'message': ...}}, text observations",
            "version": agentrl.__version__,
        }

    @app.get("/schema")
    def schema(request: Request) -> Any:
        return refused(request) or {
            "action": ACTION_SCHEMA,
            "observation": OBSERVATION_SCHEMA,
            "state": STATE_SCHEMA,
        }

    @app.get("/tasks")
    def tasks(request: Request) -> Any:
        return refused(request) or {"task_ids": task_ids, "max_text_length": max_text_length}

    @app.websocket("/ws")
    async def session(websocket: WebSocket) -> None:
        if not _authorized(websocket.headers, token):
            await websocket.close(code=1008)  # before accept: the handshake is refused (HTTP 403)
            return
        await websocket.accept()
        with lock:
            full = open_sessions[0] >= max_envs
            if not full:
                open_sessions[0] += 1
        if full:
            await websocket.send_text(
                _error(
                    f"too many open sessions (limit {max_envs})", "CAPACITY_REACHED", max_sessions=max_envs
                )
            )
            await websocket.close()
            return
        env: AgentEnv | None = None
        try:
            try:
                env = await run_in_threadpool(build)
            except Exception as e:
                await websocket.send_text(
                    _error(f"creating the env failed: {type(e).__name__}: {e}", "FACTORY_ERROR")
                )
                return
            state = _Session(env, label, max_message_bytes)
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                raw = message.get("text")
                raw = raw if raw is not None else message.get("bytes") or b""
                answer = await run_in_threadpool(state.handle, raw)
                if answer is None:
                    break
                await websocket.send_text(answer)
        except WebSocketDisconnect:
            pass
        finally:
            with lock:
                open_sessions[0] -= 1
            if env is not None:
                try:
                    await run_in_threadpool(env.close)
                except Exception:
                    log.exception("closing an env failed")
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):  # already closed, or the client left
                await websocket.close()

    return app


def openenv_server(
    name: str,
    host: str = "127.0.0.1",
    port: int = 8100,
    token: str | None = None,
    *,
    max_envs: int = 256,
    max_message_bytes: int = MAX_BODY_BYTES,
    **env_kwargs: Any,
) -> ServerThread:
    """The server of ``serve_openenv``, its port bound but not started (``.start()``, ``.serve_forever()``)."""
    warn_if_open(name, host, token)
    app = create_openenv_app(
        name, env_kwargs, token=token, max_envs=max_envs, max_message_bytes=max_message_bytes
    )
    return ServerThread(app, host, port, ws_max_size=max_message_bytes)


def serve_openenv(
    name: str,
    host: str = "127.0.0.1",
    port: int = 8100,
    token: str | None = None,
    *,
    max_envs: int = 256,
    **env_kwargs: Any,
) -> None:
    """Serve the registered env ``name`` (built with ``env_kwargs``) to OpenEnv clients until interrupted."""
    openenv_server(name, host, port, token, max_envs=max_envs, **env_kwargs).serve_forever()
