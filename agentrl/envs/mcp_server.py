"""agentrl's tools as an MCP server (``agentrl envs serve-mcp NAME``), for any MCP client.

``NAME`` is a registered tool env (``tools`` with ``-o suite=store``, ``bfcl`` with
``-o task_id=...``) or a module path: ``pkg.mod:attr`` naming a ``@tool``, a list of them, a
``ToolEnv`` or a function returning one of those, or ``pkg.mod`` for every ``@tool`` defined in
the module. Tools are listed with their agentrl schemas and run exactly as ``ToolEnv`` runs them
(argument checks, ``call_timeout``, result text), so a client sees the same results and error
messages as the local env; an error comes back as a tool result with ``isError``.

State: every MCP session gets its own copy of the initial state (a ``ToolEnv``'s first task's
``state``, or the task picked with ``task_id``; for BFCL, fresh API instances of the entry), so an
MCP client that opens a session per episode gets per-episode state. Over HTTP a session is an
``Mcp-Session-Id`` (the states of the 1024 most recently used ones are kept); over stdio the process
is the session. HTTP binds 127.0.0.1 unless told otherwise (``/mcp``, streamable HTTP) and checks a bearer
token when one is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from agentrl.agents.formats import ToolCall
from agentrl.envs.tools.env import Episode, ToolEnv, ToolTask
from agentrl.envs.tools.schema import Tool
from agentrl.serving import ServerThread, check_bearer

__all__ = ["ToolBackend", "mcp_app", "mcp_server", "serve_mcp", "tool_backend"]

Runner = Callable[[str, dict[str, Any]], tuple[bool, str]]  # (tool name, arguments) -> (ok, text)


class ToolBackend:
    """Tool schemas plus a factory of per-session runners (each with its own state)."""

    def __init__(self, schemas: Sequence[Mapping[str, Any]], new_session: Callable[[], Runner]) -> None:
        self.schemas = [dict(s) for s in schemas]
        self.new_session = new_session


def _env_backend(env: ToolEnv, task_id: str | None = None) -> ToolBackend:
    if task_id is not None and task_id not in env.tasks:
        raise ValueError(f"unknown task_id {task_id!r}; e.g. {list(env.tasks)[:3]}")
    task = env.tasks[task_id] if task_id is not None else next(iter(env.tasks.values()))

    def new_session() -> Runner:
        local = copy.copy(env)  # shares tools and tasks; the episode (state) is this session's own
        local.task, local.episode = task, Episode(state=copy.deepcopy(task.state))

        def run(name: str, arguments: dict[str, Any]) -> tuple[bool, str]:
            record = local._call(ToolCall(name, arguments))
            # ToolEnv writes "Error: ..." for a failed call; MCP says so with isError, the client adds the prefix
            return record.ok, record.content.removeprefix("Error: ") if not record.ok else record.content

        return run

    return ToolBackend(env.schemas, new_session)


def _bfcl_backend(env: Any, task_id: str | None) -> ToolBackend:
    from agentrl.envs.tools.bfcl import _APIs, bfcl_tool_schema

    ids = list(env.task_ids())
    entry = env.entries[task_id if task_id is not None else ids[0]]
    schemas = [bfcl_tool_schema(d) for d in entry["function"]]
    names = sorted(d["name"] for d in entry["function"])

    def new_session() -> Runner:
        apis = _APIs(entry)

        def run(name: str, arguments: dict[str, Any]) -> tuple[bool, str]:
            if name not in apis.methods:
                return False, f"unknown function {name!r}; available: {names}"
            result = apis.call(name, [], dict(arguments))
            return not result.startswith("Error during execution:"), result

        return run

    return ToolBackend(schemas, new_session)


def _tools_env(tools: Sequence[Tool | Callable[..., Any]]) -> ToolEnv:
    return ToolEnv(list(tools), [ToolTask("serve-mcp", "")], lambda task, episode: 0.0)


def _from_object(obj: Any, where: str) -> ToolEnv:
    if callable(obj) and not isinstance(obj, Tool):
        obj = obj()
    if isinstance(obj, ToolEnv):
        return obj
    if isinstance(obj, Tool):
        return _tools_env([obj])
    if isinstance(obj, (list, tuple)):
        return _tools_env(obj)
    raise TypeError(f"{where} is a {type(obj).__name__}; expected a @tool, a list of tools or a ToolEnv")


def tool_backend(name: str, task_id: str | None = None, **env_kwargs: Any) -> ToolBackend:
    """The backend for ``serve-mcp NAME``: a registered tool env or a ``pkg.mod[:attr]`` module path."""
    from agentrl.envs import list_envs, make

    if name in list_envs():
        env = make(name, **env_kwargs)
        if isinstance(env, ToolEnv):
            return _env_backend(env, task_id)
        if type(env).__name__ == "BFCLMultiTurnEnv":
            return _bfcl_backend(env, task_id)
        raise ValueError(
            f"env {name!r} is not a tool env; serve-mcp serves tool envs (tools, bfcl, @tool modules)"
        )
    if env_kwargs:
        raise ValueError(f"env options {sorted(env_kwargs)} are for registered envs, not a module path")
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{name!r} is neither a registered env nor an importable module ({e})") from None
    if attr:
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        return _env_backend(_from_object(obj, name), task_id)
    tools = [v for v in vars(module).values() if isinstance(v, Tool)]
    if not tools:
        raise ValueError(f"module {module_name!r} defines no @tool functions")
    return _env_backend(_tools_env(tools), task_id)


def mcp_server(backend: ToolBackend, name: str = "agentrl", max_sessions: int = 1024) -> Any:
    """A low-level MCP ``Server`` listing the backend's tools, with one runner per client session."""
    import anyio
    from mcp.server.lowlevel import Server
    from mcp.types import CallToolResult, ListToolsResult, TextContent
    from mcp.types import Tool as MCPTool

    tools = [
        MCPTool(
            name=s["function"]["name"],
            description=s["function"].get("description") or None,
            input_schema=s["function"].get("parameters") or {"type": "object", "properties": {}},
        )
        for s in backend.schemas
    ]
    by_name = {t.name: t for t in tools}
    # over HTTP the session is the Mcp-Session-Id (the SDK builds a session object per request); over
    # stdio there is one session, the process. The most recently used sessions' states are kept.
    runners: OrderedDict[str, Runner] = OrderedDict()
    lock = threading.Lock()

    def runner_of(ctx: Any) -> Runner:
        headers = getattr(ctx.request, "headers", None)
        key = (headers.get("mcp-session-id") if headers is not None else None) or "stdio"
        with lock:
            if key not in runners:
                runners[key] = backend.new_session()
                while len(runners) > max_sessions:
                    runners.popitem(last=False)
            runners.move_to_end(key)
            return runners[key]

    async def list_tools(ctx: Any, params: Any) -> Any:
        return ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: Any) -> Any:
        run = runner_of(ctx)
        arguments = dict(params.arguments or {})
        ok, text = await anyio.to_thread.run_sync(lambda: run(params.name, arguments))
        return CallToolResult(content=[TextContent(type="text", text=text)], is_error=not ok)

    return Server(
        name,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        get_tool_input_schema=lambda n: by_name[n].input_schema if n in by_name else None,
    )


class _BearerGate:
    """ASGI wrapper: HTTP requests without the bearer token get 401 before the MCP app sees them."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.token is not None:
            request = SimpleNamespace(
                headers={
                    k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
                }
            )
            refused = check_bearer(request, self.token)
            if refused:
                body = b'{"error": "' + refused.encode() + b'"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def mcp_app(backend: ToolBackend, *, token: str | None = None, host: str = "127.0.0.1") -> Any:
    """The streamable-HTTP ASGI app (endpoint ``/mcp``), behind a bearer check when ``token`` is set."""
    server = mcp_server(backend)
    return _BearerGate(server.streamable_http_app(host=host), token)


def http_server(
    backend: ToolBackend, host: str = "127.0.0.1", port: int = 0, token: str | None = None
) -> ServerThread:
    """A not-yet-started ServerThread for the backend's HTTP app (``.start()`` in a thread; URL ``.url + '/mcp'``)."""
    return ServerThread(mcp_app(backend, token=token, host=host), host, port, lifespan="on")


def serve_mcp(
    name: str,
    *,
    transport: str = "stdio",
    host: str = "127.0.0.1",
    port: int = 8200,
    token: str | None = None,
    task_id: str | None = None,
    on_ready: Callable[[str], None] | None = None,
    **env_kwargs: Any,
) -> None:
    """Serve ``name``'s tools over ``transport`` ("stdio" or "http") until stopped."""
    if transport not in ("stdio", "http"):
        raise ValueError(f"transport must be 'stdio' or 'http', got {transport!r}")
    with contextlib.redirect_stdout(
        sys.stderr
    ):  # over stdio, stdout is the wire: nothing else may print there
        backend = tool_backend(name, task_id, **env_kwargs)
    if transport == "stdio":
        from mcp.server.stdio import stdio_server

        server = mcp_server(backend)

        async def main() -> None:
            async with stdio_server() as (read, write):
                await server.run(read, write, server.create_initialization_options())

        asyncio.run(main())
    elif transport == "http":
        thread = http_server(backend, host, port, token)
        thread.listen()
        if on_ready is not None:
            on_ready(f"{thread.url}/mcp")
        thread.serve_forever()
