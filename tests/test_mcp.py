"""MCP: any MCP server as a tool env (stdio and streamable HTTP), and agentrl's tools as an MCP server.

The servers are real: a stdio server (a script on the SDK's MCPServer, formerly FastMCP, run by the
env as a subprocess), an HTTP one on 127.0.0.1 and a free port, and ``agentrl envs serve-mcp``.
"""

import sys
import textwrap
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer

from agentrl.envs import check_env, make
from agentrl.envs.mcp_env import MCPConnectionError, MCPToolEnv
from agentrl.envs.mcp_server import http_server, tool_backend
from agentrl.envs.pool import EnvPool
from agentrl.envs.tools import ToolTask, builtin_tool_env, make_tasks, solution_action
from agentrl.envs.tools.builtin import last_number

SERVER = textwrap.dedent(
    '''
    import os, time
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    app = MCPServer("test-tools")
    calls = {"n": 0}

    @app.tool()
    def add(a: float, b: float) -> float:
        """Add two numbers."""
        return a + b

    @app.tool()
    def count() -> int:
        """How many times count was called in this server process."""
        calls["n"] += 1
        return calls["n"]

    @app.tool()
    def fail(message: str) -> str:
        """Always raises."""
        raise ToolError(message)

    @app.tool()
    def slow(seconds: float) -> str:
        """Sleeps, then answers."""
        time.sleep(seconds)
        return "done"

    @app.tool()
    def die() -> str:
        """Ends the server process."""
        os._exit(3)

    if __name__ == "__main__":
        app.run()
    '''
)
TASKS = [ToolTask("sum", "Add 2 and 3.", answer=5.0), ToolTask("sum2", "Add 4 and 5.", answer=9.0)]


def number_reward(task: ToolTask, episode) -> float:
    return float(last_number(episode.answer or "") == task.answer)


def call(name: str, **arguments) -> str:
    return solution_action([(name, arguments)])


@pytest.fixture(scope="module")
def server_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mcp") / "server.py"
    path.write_text(SERVER)
    return path


@pytest.fixture
def stdio_env(server_script: Path):
    env = MCPToolEnv([sys.executable, str(server_script)], TASKS, number_reward, call_timeout=2.0)
    yield env
    env.close()


@pytest.fixture(scope="module")
def http_url():
    app = MCPServer("http-tools")

    @app.tool()
    def add(a: float, b: float) -> float:
        """Add two numbers."""
        return a + b

    with http_server_of(app) as server:
        yield f"{server.url}/mcp"


def http_server_of(app: MCPServer):
    from agentrl.serving import ServerThread

    return ServerThread(app.streamable_http_app(), "127.0.0.1", 0, lifespan="on")


def test_stdio_server_tools_become_the_prompt_tool_list_and_calls_come_back(stdio_env: MCPToolEnv) -> None:
    obs, info = stdio_env.reset(seed=0, options={"task_id": "sum"})
    assert obs == "Add 2 and 3."
    names = [s["function"]["name"] for s in info["tools"]]
    assert names == ["add", "count", "fail", "slow", "die"]
    add = info["tools"][0]["function"]
    assert add["description"] == "Add two numbers."
    assert add["parameters"]["properties"]["a"]["type"] == "number"
    assert add["parameters"]["required"] == ["a", "b"]
    obs, _, terminated, _, info = stdio_env.step(call("add", a=2, b=3))
    assert obs == '<tool_response>{"name": "add", "content": "5.0"}</tool_response>'
    assert info["valid"] is True and info["tool_call"] is True and not terminated
    assert info["tool_messages"][0] == {
        "role": "tool",
        "tool_call_id": "call_0",
        "name": "add",
        "content": "5.0",
    }
    _, reward, terminated, _, info = stdio_env.step("The sum is 5.")
    assert (reward, terminated, info["success"]) == (1.0, True, True)


def test_errors_come_back_to_the_model_with_valid_false(stdio_env: MCPToolEnv) -> None:
    stdio_env.reset(seed=0, options={"task_id": "sum"})
    _, _, _, _, info = stdio_env.step(call("fail", message="broken on purpose"))
    assert info["valid"] is False and "broken on purpose" in info["tool_messages"][0]["content"]
    _, _, _, _, info = stdio_env.step(call("add", a="two", b=3))  # breaks the input schema: not sent
    assert info["valid"] is False
    assert "do not fit its input schema at 'a'" in info["tool_messages"][0]["content"]
    _, _, _, _, info = stdio_env.step(call("add", a=1))
    assert info["valid"] is False and "'b' is a required property" in info["tool_messages"][0]["content"]
    _, _, _, _, info = stdio_env.step(call("nope"))
    assert info["valid"] is False and "unknown tool 'nope'" in info["tool_messages"][0]["content"]
    _, _, _, _, info = stdio_env.step("<tool_call>{not json</tool_call>")
    assert info["valid"] is False
    _, _, _, _, info = stdio_env.step(call("add", a=1, b=1))  # the session still works
    assert info["valid"] is True and info["tool_messages"][0]["content"] == "2.0"


def test_a_call_past_the_timeout_is_an_error_and_the_session_goes_on(stdio_env: MCPToolEnv) -> None:
    stdio_env.reset(seed=0, options={"task_id": "sum"})
    _, _, _, _, info = stdio_env.step(call("slow", seconds=30))
    assert info["valid"] is False and "did not return within 2.0 s" in info["tool_messages"][0]["content"]
    _, _, _, _, info = stdio_env.step(call("add", a=2, b=2))
    assert info["valid"] is True and info["tool_messages"][0]["content"] == "4.0"


def test_a_server_that_dies_mid_episode_is_an_error_then_restarted_at_reset(stdio_env: MCPToolEnv) -> None:
    stdio_env.reset(seed=0, options={"task_id": "sum"})
    assert stdio_env.step(call("count"))[4]["tool_messages"][0]["content"] == "1"
    _, _, _, _, info = stdio_env.step(call("die"))
    assert info["valid"] is False
    _, _, _, _, info = stdio_env.step(call("add", a=1, b=2))
    assert info["valid"] is False and "restarted at the next episode" in info["tool_messages"][0]["content"]
    assert stdio_env.restarts == 0
    stdio_env.reset(seed=0, options={"task_id": "sum"})
    assert stdio_env.restarts == 1
    _, _, _, _, info = stdio_env.step(call("count"))
    assert info["valid"] is True and info["tool_messages"][0]["content"] == "1"  # a new process


def test_stdio_keeps_one_process_by_default_and_a_fresh_one_per_episode_when_asked(
    server_script: Path,
) -> None:
    for per_episode, second in ((False, "2"), (True, "1")):
        env = MCPToolEnv(
            [sys.executable, str(server_script)], TASKS, number_reward, session_per_episode=per_episode
        )
        try:
            seen = []
            for _ in range(2):
                env.reset(seed=0)
                seen.append(env.step(call("count"))[4]["tool_messages"][0]["content"])
            assert seen == ["1", second]
        finally:
            env.close()


def test_tools_keeps_only_the_named_tools(server_script: Path) -> None:
    env = MCPToolEnv([sys.executable, str(server_script)], TASKS, number_reward, tools=["add", "count"])
    try:
        _, info = env.reset(seed=0)
        assert [s["function"]["name"] for s in info["tools"]] == ["add", "count"]
        _, _, _, _, info = env.step(call("fail", message="x"))
        assert info["valid"] is False and "unknown tool 'fail'" in info["tool_messages"][0]["content"]
    finally:
        env.close()
    with pytest.raises(ValueError, match=r"no tool\(s\) \['nope'\]"):
        MCPToolEnv([sys.executable, str(server_script)], TASKS, number_reward, tools=["nope"])


def test_check_env_passes_on_stdio_and_http(stdio_env: MCPToolEnv, http_url: str) -> None:
    # the server holds the tools' state, which no client-side snapshot can copy: replay only
    assert check_env(stdio_env).resume == ("replay",)
    env = make("mcp", server=http_url, tasks=TASKS, reward=number_reward)
    try:
        assert check_env(env).resume == ("replay",)
        env.reset(seed=0)
        assert env.step(call("add", a=2, b=5))[4]["tool_messages"][0]["content"] == "7.0"
    finally:
        env.close()


def test_unreachable_servers_raise_a_clear_error_when_the_env_is_made(tmp_path: Path) -> None:
    from agentrl.serving import free_port

    with pytest.raises(MCPConnectionError, match="cannot open an MCP session"):
        MCPToolEnv(f"http://127.0.0.1:{free_port()}/mcp", TASKS, number_reward, connect_timeout=5)
    broken = tmp_path / "broken.py"
    broken.write_text("raise SystemExit('no config file here')\n")
    with pytest.raises(MCPConnectionError, match="the server's stderr ends: no config file here"):
        MCPToolEnv([sys.executable, str(broken)], TASKS, number_reward, connect_timeout=10)
    with pytest.raises(ValueError, match="headers and token are for HTTP"):
        MCPToolEnv("some-server --flag", TASKS, number_reward, token="t")


@pytest.mark.parametrize("backend", ["process", "inprocess"])
def test_env_pool_plays_mcp_envs_concurrently(server_script: Path, http_url: str, backend: str) -> None:
    server = [sys.executable, str(server_script)] if backend == "process" else http_url
    kwargs = {"server": server, "tasks": "tests.test_mcp:TASKS", "reward": "tests.test_mcp:number_reward"}
    with EnvPool("mcp", 3, env_kwargs=kwargs, backend=backend) as pool:
        firsts = pool.reset(seeds=[0, 1, 2], options=[{"task_id": "sum"}] * 3)
        assert [obs for obs, _ in firsts] == ["Add 2 and 3."] * 3
        results = pool.step([call("add", a=i, b=10) for i in range(3)])
        assert [r.info["tool_messages"][0]["content"] for r in results] == ["10.0", "11.0", "12.0"]
        assert all(r.info["valid"] for r in results)
        results = pool.step(["5", "6", "5"])
        assert [r.reward for r in results] == [1.0, 0.0, 1.0]


# ----------------------------------------------------------------------------- serve-mcp


def serve_mcp_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "agentrl.cli", "envs", "serve-mcp", *args]


def play(env, task, extra_calls):
    """The expert solution with a few bad calls mixed in; the whole transcript."""
    out = [env.reset(seed=0, options={"task_id": task.id})]
    for i, turn in enumerate(task.solution):
        out.append(env.step(solution_action(turn)))
        if i < len(extra_calls):
            out.append(env.step(extra_calls[i]))
    out.append(env.step(task.final))
    return out


def test_round_trip_through_serve_mcp_over_stdio_gives_the_local_transcript() -> None:
    local = builtin_tool_env(suite="calculator", num_tasks=3)
    remote = make(
        "mcp",
        server=serve_mcp_command("tools", "-o", "suite=calculator", "-o", "num_tasks=3"),
        tasks="calculator",
    )
    bad = [call("divide", a=1, b=0), call("nope", x=1)]
    try:
        assert remote.schemas == local.schemas
        for task in list(local.tasks.values())[:3]:
            assert play(remote, task, bad) == play(local, task, bad)
        check_env(remote)
    finally:
        remote.close()
        local.close()


def answer_reward(task: ToolTask, episode) -> float:
    return float(last_number(episode.answer or "") == task.answer["total"])


def test_serve_mcp_over_http_keeps_state_per_session_and_checks_the_token() -> None:
    backend = tool_backend("tools", suite="store", num_tasks=4)
    tasks = make_tasks("store", num_tasks=4)
    local = builtin_tool_env(suite="store", num_tasks=4)
    with http_server(backend, token="s3cret") as server:
        url = f"{server.url}/mcp"
        with pytest.raises(MCPConnectionError):
            MCPToolEnv(url, tasks, answer_reward, connect_timeout=10)
        with pytest.raises(MCPConnectionError):
            MCPToolEnv(url, tasks, answer_reward, token="wrong", connect_timeout=10)
        remote = MCPToolEnv(url, tasks, answer_reward, token="s3cret")
        try:
            assert remote.session_per_episode
            for task in tasks[:2]:  # the store's cart starts empty in each episode: a session per episode
                theirs, ours = play(remote, task, [call("view_cart")]), play(local, task, [call("view_cart")])
                assert [step[0] for step in theirs] == [step[0] for step in ours]
                assert theirs[-1][1] == 1.0
        finally:
            remote.close()
            local.close()


def test_serve_mcp_answers_the_sdk_client_and_serves_user_tool_modules(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "my_tools.py").write_text(
        textwrap.dedent(
            '''
            from agentrl.envs.tools import tool

            @tool
            def shout(text: str) -> str:
                """Upper-case the text.

                Args:
                    text: what to shout
                """
                return text.upper()
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    backend = tool_backend("my_tools")

    async def client(url: str) -> tuple[list[str], str, bool, str]:
        async with (
            httpx2.AsyncClient(headers={"Authorization": "Bearer tok"}) as http,
            streamable_http_client(url, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            tools = (await session.list_tools()).tools
            ok = await session.call_tool("shout", {"text": "hi"})
            bad = await session.call_tool("shout", {"text": 3})
            return [t.name for t in tools], ok.content[0].text, bad.is_error, bad.content[0].text

    with http_server(backend, token="tok") as server:
        names, text, is_error, message = anyio.run(client, f"{server.url}/mcp")
    assert names == ["shout"] and text == "HI"
    assert is_error and message == "argument 'text' of 'shout' must be a string, got int 3"


def test_serve_mcp_refuses_what_it_cannot_serve() -> None:
    with pytest.raises(ValueError, match="not a tool env"):
        tool_backend("maze")
    with pytest.raises(ValueError, match="neither a registered env nor an importable module"):
        tool_backend("no_such_module_here")
    with pytest.raises(ValueError, match="unknown task_id"):
        tool_backend("tools", task_id="nope", suite="calculator")


def test_serve_mcp_serves_a_bfcl_entry_with_fresh_apis_per_session() -> None:
    from agentrl.envs.tools.bfcl import ground_truth_calls, load_entries

    entry = next(e for e in load_entries("multi_turn_base") if e["id"] == "multi_turn_base_0")
    backend = tool_backend("bfcl", task_id="multi_turn_base_0")
    with http_server(backend) as server:
        env = MCPToolEnv(f"{server.url}/mcp", [ToolTask("t", "go")], lambda task, episode: 0.0)
        try:
            assert sorted(env.mcp_tools) == sorted(d["name"] for d in entry["function"])
            for _ in range(2):  # the same calls succeed again in a new episode: the APIs start afresh
                env.reset(seed=0)
                for name, arguments in ground_truth_calls(entry)[0]:
                    _, _, _, _, info = env.step(call(name, **arguments))
                    assert info["valid"], info["tool_messages"]
        finally:
            env.close()


def test_the_serve_mcp_command_refuses_a_bad_transport_or_name() -> None:
    from typer.testing import CliRunner

    from agentrl.cli import app

    result = CliRunner().invoke(app, ["envs", "serve-mcp", "tools", "--transport", "carrier-pigeon"])
    assert result.exit_code == 2 and "stdio or http" in result.output
    result = CliRunner().invoke(
        app, ["envs", "serve-mcp", "tools", "--token", "t"], env={"AGENTRL_MCP_TOKEN": ""}
    )
    assert result.exit_code == 2 and "HTTP only" in result.output
    result = CliRunner().invoke(app, ["envs", "serve-mcp", "maze"])
    assert result.exit_code == 2 and "not a tool env" in result.output
