"""MCPToolEnv: any MCP server's tools as a ToolEnv (``make("mcp", server=..., tasks=..., reward=...)``).

``server`` is a stdio command line (a string split like a shell would, or a list) or a
streamable-HTTP URL (``http://...``, with ``headers`` and/or a bearer ``token``). The server's
tools, listed when the env is made (and again with each new session), become the prompt's tool list (``info["tools"]``, OpenAI
function schemas whose ``parameters`` are the tools' input schemas); the model's calls go to the
server through the official MCP Python SDK; prompts, parsing, tool messages, ``valid`` flags and
rewards are ``ToolEnv``'s, with tasks and the reward function from the user as there.

Nothing the server or the model does raises out of ``step``: arguments that break a tool's input
schema (checked here with ``jsonschema`` before the call), an unknown tool, a tool that errors, a
call past ``call_timeout`` and a server that died all come back to the model as an error message
with ``valid=False``. A server found dead is started again at the next ``reset``.

Episode state lives in the server, so ``Episode.state`` is None for the reward function. Each
episode opens a fresh MCP session when ``session_per_episode`` is True, the default for HTTP, where
a session is cheap (a new ``Mcp-Session-Id``; a stateful server keeps state per session). Over
stdio a session is a server process, so by default one process serves all of an env's episodes;
pass ``session_per_episode=True`` for a stdio server that keeps state between calls (each reset
then starts a new process). A stdio server gets the SDK's safe few environment variables (PATH,
HOME, ...), ``PYTHONPATH`` and ``env=``. ``tools=`` keeps only the named tools. The SDK is async
and the env is not: each env runs its client on its own event-loop thread, which ``close()`` stops
after closing the session (and ending the process); a later ``reset`` starts them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import shlex
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from agentrl.agents.formats import ToolCall
from agentrl.envs.tools.env import CallRecord, Reward, ToolEnv, ToolTask, clip_result, index_tasks

__all__ = ["MCPConnectionError", "MCPToolEnv", "mcp_env", "result_text", "tool_schema"]


class MCPConnectionError(RuntimeError):
    """The MCP server could not be started, reached or listed."""


def _require_mcp() -> Any:
    try:
        import mcp
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("the MCP env needs the MCP SDK: pip install 'agentrl[mcp]'") from e
    return mcp


def _reason(e: BaseException) -> str:
    """The innermost errors of an exception (anyio wraps them in exception groups)."""
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(_reason(x) for x in e.exceptions)
    return f"{type(e).__name__}: {e}"


def tool_schema(tool: Any) -> dict[str, Any]:
    """An MCP tool (``mcp.types.Tool``) as an OpenAI function schema: its input schema is ``parameters``."""
    parameters = dict(tool.input_schema or {"type": "object", "properties": {}})
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description or "", "parameters": parameters},
    }


def result_text(result: Any) -> str:
    """The text of a ``CallToolResult``: its text blocks, a note for other content, else its structured content."""
    import json

    parts: list[str] = []
    for block in result.content or ():
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} content, {getattr(block, 'mime_type', '?')}]")
        elif kind == "resource":
            inner = block.resource
            parts.append(getattr(inner, "text", None) or f"[resource {inner.uri}]")
        elif kind == "resource_link":
            parts.append(f"[resource link {block.uri}]")
        else:
            parts.append(f"[{kind or 'unknown'} content]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False, sort_keys=True, default=str)
    return "\n".join(parts)


class _Session:
    """One MCP client session, held open by a task on the env's event loop until ``close``."""

    def __init__(self, env: MCPToolEnv) -> None:
        self.env = env
        assert env._loop is not None
        self.loop = env._loop
        self.client: Any = None
        self.tools: list[Any] = []
        self.broken: str | None = None  # why the session stopped working, once it has
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Future[Any] | None = None
        self._errlog: Any = None  # where a stdio server's stderr goes

    async def _transport(self, stack: contextlib.AsyncExitStack) -> tuple[Any, Any]:
        env = self.env
        if env.is_http:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            if env._http is None:  # one HTTP client for all of the env's sessions (a new one costs ~50 ms)
                headers = dict(env.headers)
                if env.token is not None:
                    headers["Authorization"] = f"Bearer {env.token}"
                env._http = httpx2.AsyncClient(
                    headers=headers, timeout=httpx2.Timeout(env.connect_timeout, read=300.0)
                )
            http = env._http
            streams = await stack.enter_async_context(streamable_http_client(env.url, http_client=http))
        else:
            from mcp.client.stdio import StdioServerParameters, stdio_client

            # the SDK passes a server only a safe few variables (PATH, HOME, ...); PYTHONPATH too, so that a
            # Python server sees the modules its client sees
            extra = {k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}
            params = StdioServerParameters(
                command=env.command[0],
                args=list(env.command[1:]),
                env={**extra, **(env.server_env or {})},
                cwd=env.cwd,
            )
            # quiet: the server's stderr goes to a file whose end explains a server that failed to start
            # (append mode, so that trim_stderr can empty it under a running server)
            errlog = self._errlog = tempfile.TemporaryFile("a+") if env.quiet else sys.stderr  # noqa: SIM115
            streams = await stack.enter_async_context(stdio_client(params, errlog=errlog))
        return streams[0], streams[1]

    async def _hold(self, ready: asyncio.Future[None]) -> None:
        from mcp import ClientSession
        from mcp.types import PaginatedRequestParams

        self._stop = asyncio.Event()
        self._errlog = None
        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await self._transport(stack)
                client = await stack.enter_async_context(ClientSession(read, write))
                await client.initialize()
                tools, cursor = [], None
                while True:
                    page = await client.list_tools(
                        params=PaginatedRequestParams(cursor=cursor) if cursor else None
                    )
                    tools.extend(page.tools)
                    cursor = page.next_cursor
                    if not cursor:
                        break
                self.client, self.tools = client, tools
                ready.set_result(None)
                await self._stop.wait()
        except BaseException as e:
            self.broken = self.broken or _reason(e)
            if not ready.done():
                said = self._stderr_tail()
                ready.set_exception(
                    MCPConnectionError(
                        f"cannot open an MCP session with {self.env.server}: {_reason(e)}"
                        + (f"; the server's stderr ends: {said}" if said else "")
                    )
                )
            if not isinstance(e, Exception):
                raise
        finally:
            if self._errlog is not None and self._errlog is not sys.stderr:
                self._errlog.close()

    def trim_stderr(self) -> None:
        """Empty the stderr file of a server that started, so a long run's logs do not pile up on disk."""
        errlog = self._errlog
        if errlog is not None and errlog is not sys.stderr and not errlog.closed:
            with contextlib.suppress(OSError, ValueError):
                errlog.truncate(0)

    def _stderr_tail(self, chars: int = 600) -> str:
        errlog = self._errlog
        if errlog is None or errlog is sys.stderr or errlog.closed:
            return ""
        with contextlib.suppress(OSError, ValueError):
            errlog.flush()
            errlog.seek(0)
            return errlog.read()[-chars:].strip()
        return ""

    def open(self) -> None:
        loop = self.loop

        async def start() -> asyncio.Future[None]:
            ready: asyncio.Future[None] = loop.create_future()
            self._task = asyncio.ensure_future(self._hold(ready))
            return ready

        async def wait_ready(ready: asyncio.Future[None]) -> None:
            await asyncio.wait_for(ready, self.env.connect_timeout)

        ready = asyncio.run_coroutine_threadsafe(start(), loop).result()
        try:
            asyncio.run_coroutine_threadsafe(wait_ready(ready), loop).result()
        except (TimeoutError, FutureTimeout):
            self.close()
            raise MCPConnectionError(
                f"the MCP server {self.env.server} did not answer within {self.env.connect_timeout} s"
            ) from None
        except MCPConnectionError:
            self.close()
            raise

    def call(self, name: str, arguments: Mapping[str, Any], timeout: float | None) -> Any:
        """The CallToolResult; raises TimeoutError, or MCPConnectionError when the session is gone."""
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        if self.broken is not None or self.client is None:
            raise MCPConnectionError(self.broken or "no session")
        fut = asyncio.run_coroutine_threadsafe(
            self.client.call_tool(name, dict(arguments), read_timeout_seconds=timeout), self.loop
        )
        try:
            return fut.result(None if timeout is None else timeout + 5.0)
        except FutureTimeout:
            fut.cancel()
            self.broken = f"a call to {name!r} hung past {timeout} s"
            raise TimeoutError from None
        except MCPError as e:
            if e.code == REQUEST_TIMEOUT:
                raise TimeoutError from None
            # the server answered with a JSON-RPC error: the session stays usable unless the connection closed
            if e.code == CONNECTION_CLOSED or (self._task is not None and self._task.done()):
                self.broken = self.broken or str(e)
                raise MCPConnectionError(self.broken) from None
            raise
        except Exception as e:
            self.broken = self.broken or _reason(e)
            raise MCPConnectionError(self.broken) from None

    def close(self) -> None:
        loop = self.loop
        if self._task is None or loop.is_closed():
            return

        async def stop() -> None:
            if self._stop is not None:
                self._stop.set()
            assert self._task is not None
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 10.0)
            except (Exception, asyncio.CancelledError):
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), loop).result(20.0)
        self._task, self.client = None, None
        self.broken = self.broken or "closed"


class MCPToolEnv(ToolEnv):
    """A ToolEnv whose tools are an MCP server's (see the module docstring)."""

    # the tools' state lives in the server, which a copy of this object cannot take along:
    # episodes resume by replay only
    snapshot_fields = ()

    def __init__(
        self,
        server: str | Sequence[str],
        tasks: Sequence[ToolTask],
        reward: Reward,
        *,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        tools: Sequence[str] | None = None,
        session_per_episode: bool | None = None,
        max_turns: int = 8,
        call_timeout: float | None = 30.0,
        connect_timeout: float = 30.0,
        max_result_chars: int = 4000,
        success_threshold: float = 1.0,
        quiet: bool = True,
        render_mode: str | None = None,
    ) -> None:
        _require_mcp()
        super(ToolEnv, self).__init__(render_mode=render_mode)
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        if call_timeout is not None and call_timeout <= 0:
            raise ValueError(f"call_timeout must be > 0 seconds or None, got {call_timeout}")
        if not callable(reward):
            raise TypeError(
                f"reward must be a function (task, episode) -> float, got {type(reward).__name__}"
            )
        self.tasks = index_tasks(tasks)
        self.reward_fn = reward
        self.max_turns, self.call_timeout, self.max_result_chars = max_turns, call_timeout, max_result_chars
        self.success_threshold = success_threshold
        self.connect_timeout = connect_timeout
        self.is_http = isinstance(server, str) and server.startswith(("http://", "https://"))
        if self.is_http:
            self.url, self.command = str(server), []
        else:
            command = shlex.split(server) if isinstance(server, str) else [str(a) for a in server]
            if not command:
                raise ValueError("server must be an MCP server's command line or an http(s):// URL")
            self.url, self.command = "", command
            if headers or token:
                raise ValueError("headers and token are for HTTP servers; a stdio server gets env= instead")
        self.server = str(server) if isinstance(server, str) else shlex.join(self.command)
        self.headers, self.token = dict(headers or {}), token
        self.server_env, self.cwd, self.quiet = (dict(env) if env else None), cwd, quiet
        self.session_per_episode = self.is_http if session_per_episode is None else bool(session_per_episode)
        self._only = None if tools is None else list(tools)
        self.task = None
        self._t, self._done = 0, True
        self.restarts = 0  # sessions opened again after one broke

        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: Any = None  # the httpx2 client of HTTP sessions, made and closed on the loop
        self._session: _Session | None = None
        self._fresh = False  # the open session has served no call yet
        try:
            self._connect()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ sessions

    def _start_loop(self) -> None:
        """The event-loop thread the SDK runs on (again, after ``close``)."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, daemon=True, name="agentrl-mcp-loop"
            )
            self._thread.start()

    def _connect(self) -> None:
        self._start_loop()
        session = _Session(self)
        session.open()
        listed = {t.name: t for t in session.tools}
        if self._only is not None:
            missing = [n for n in self._only if n not in listed]
            if missing:
                session.close()
                raise ValueError(f"the MCP server has no tool(s) {missing}; it has {sorted(listed)}")
            listed = {n: listed[n] for n in self._only}
        if not listed:
            session.close()
            raise ValueError(f"the MCP server {self.server} lists no tools")
        self._session, self._fresh = session, True
        self.tools = {}  # no local agentrl Tools: the server's tools are in mcp_tools
        self.mcp_tools: dict[str, Any] = listed
        self.schemas = [tool_schema(t) for t in listed.values()]
        self._validators: dict[str, Any] = {}

    def _validator(self, name: str) -> Any:
        if name not in self._validators:
            import jsonschema

            schema = self.mcp_tools[name].input_schema or {"type": "object"}
            cls = jsonschema.validators.validator_for(schema)
            self._validators[name] = cls(schema)
        return self._validators[name]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        session = self._session
        broken = session is None or session.broken is not None
        if broken or (self.session_per_episode and not self._fresh):
            if session is not None:
                session.close()
            self._session = None
            self._connect()
            self.restarts += int(broken)
        elif session is not None:
            session.trim_stderr()
        obs, info = super().reset(seed=seed, options=options)
        self.episode.state = None
        return obs, info

    # ------------------------------------------------------------------ calls

    def _call(self, call: ToolCall) -> CallRecord:
        def fail(message: str) -> CallRecord:
            return CallRecord(call.name, call.arguments, False, f"Error: {message}")

        if call.name not in self.mcp_tools:
            return fail(f"unknown tool {call.name!r}; available tools: {sorted(self.mcp_tools)}")
        if not isinstance(call.arguments, dict):
            return fail(
                f"arguments of {call.name!r} must be a JSON object, got {type(call.arguments).__name__}"
            )
        import jsonschema

        error = jsonschema.exceptions.best_match(self._validator(call.name).iter_errors(call.arguments))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path)
            return fail(
                f"arguments of {call.name!r} do not fit its input schema"
                + (f" at '{where}'" if where else "")
                + f": {error.message}"
            )
        session = self._session
        if session is None:
            return fail(f"the MCP server {self.server} is not running")
        self._fresh = False
        try:
            result = session.call(call.name, copy.deepcopy(call.arguments), self.call_timeout)
        except TimeoutError:
            return fail(f"tool {call.name!r} did not return within {self.call_timeout} s")
        except MCPConnectionError as e:
            return fail(f"the MCP server stopped answering ({e}); it is restarted at the next episode")
        except Exception as e:  # a JSON-RPC error from the server, e.g. invalid params
            return fail(f"tool {call.name!r} failed: {e}")
        text = clip_result(result_text(result), self.max_result_chars)
        if result.is_error:
            return CallRecord(call.name, call.arguments, False, f"Error: {text}")
        return CallRecord(call.name, call.arguments, True, text)

    def close(self) -> None:
        session = getattr(self, "_session", None)
        if session is not None:
            session.close()
            self._session = None
        loop = getattr(self, "_loop", None)
        http, self._http = getattr(self, "_http", None), None
        if http is not None and loop is not None and not loop.is_closed():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(http.aclose(), loop).result(10.0)
        if loop is not None and not loop.is_closed():  # a later reset starts a new loop and session
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10.0)
            if not self._thread.is_alive():
                loop.close()
        super().close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def mcp_env(
    server: str | Sequence[str],
    tasks: Sequence[ToolTask] | str | None = None,
    reward: Reward | str | None = None,
    **kwargs: Any,
) -> MCPToolEnv:
    """``make("mcp", server=..., tasks=..., reward=...)``; ``tasks`` and ``reward`` may be ``"module:attr"``
    paths (what a pool worker or a config can carry), and ``tasks`` may name a built-in tool suite
    (``"calculator"``, ``"units"``, ``"store"``) whose reward is then the built-in one."""
    if tasks is None:
        raise TypeError(
            "make('mcp') needs tasks= (ToolTask objects, a 'module:attr' path or a built-in suite)"
        )
    if isinstance(tasks, str):
        from agentrl.envs.tools.builtin import SUITES, builtin_reward, make_tasks

        if tasks in SUITES:
            reward = builtin_reward if reward is None else reward
            tasks = make_tasks(tasks)
        else:
            tasks = _import(tasks)
            tasks = tasks() if callable(tasks) else tasks
    if isinstance(reward, str):
        reward = _import(reward)
    if reward is None:
        raise TypeError("make('mcp') needs reward= (a function (task, episode) -> float)")
    return MCPToolEnv(server, list(tasks), reward, **kwargs)  # type: ignore[arg-type]


def _import(path: str) -> Any:
    import importlib

    module, sep, attr = path.partition(":")
    if not sep:
        raise ValueError(f"expected 'module:attr', got {path!r}")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
