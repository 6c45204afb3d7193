"""Remote envs: a real uvicorn server on 127.0.0.1, the client env, tokens, hostile requests, concurrency."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from agentrl.envs import check_env, make
from agentrl.envs.remote import RemoteEnv, RemoteEnvError, create_app, jsonable
from agentrl.envs.search import SearchEnv, oracle_actions
from agentrl.envs.tools import ToolEnv, ToolTask, builtin_tool_env, solution_action, tool
from agentrl.envs.tools.bfcl import BFCLMultiTurnEnv, ground_truth_actions
from agentrl.serving import ServerThread

TOKEN = "s3cret-token"
SMALL_SEARCH = {"seed": 7, "num_docs": 400, "num_train": 200, "num_test": 50}


@pytest.fixture(scope="module")
def maze_server():
    with ServerThread(create_app("maze", {"size": 3}, token=TOKEN, max_envs=12)) as server:
        yield server


def play(env, task_id, seed, actions=None, max_steps=12):
    """Transcript of an episode; random admissible actions (seeded) unless ``actions`` is given."""
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed, options={"task_id": task_id})
    out, chosen = [jsonable((obs, info))], []
    for t in range(max_steps):
        if actions is not None:
            if t >= len(actions):
                break
            action = actions[t]
        else:
            action = str(rng.choice(info["admissible_actions"])) if info.get("admissible_actions") else "noop"
        chosen.append(action)
        step = env.step(action)
        out.append(jsonable(step))
        if step[2] or step[3]:
            break
    return out, chosen


def test_remote_equals_local_and_passes_check_env(maze_server):
    remote = RemoteEnv(maze_server.url, token=TOKEN)
    local = make("maze", size=3)
    assert list(remote.task_ids()) == list(local.task_ids())
    for seed, task in [(0, "maze-0"), (1, "maze-5"), (2, "maze-17")]:
        mine, actions = play(local, task, seed)
        theirs, _ = play(remote, task, seed, actions)
        assert theirs == mine and len(mine) > 2
    check_env(remote, other=RemoteEnv(maze_server.url, token=TOKEN))
    remote.close()


def test_tokens_are_required_and_checked(maze_server):
    assert httpx.get(maze_server.url + "/health").json()["ok"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = httpx.post(maze_server.url + "/create", json={}, headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "missing or wrong bearer token"
    r = httpx.post(maze_server.url + "/step", content=b"{not json")  # the token is checked before the body
    assert r.status_code == 401 and r.json()["error"] == "missing or wrong bearer token"
    with pytest.raises(RemoteEnvError, match="answered 401: missing or wrong bearer token"):
        RemoteEnv(maze_server.url, token="wrong")


def test_hostile_requests_get_clear_errors_and_the_server_stays_up(maze_server):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    client = httpx.Client(base_url=maze_server.url, headers=auth, timeout=30)
    env_id = client.post("/create", json={}).json()["env_id"]
    huge = {"env_id": env_id, "action": "x" * 2_000_000}
    r = client.post("/step", json=huge)
    assert r.status_code == 413 and "request body too large (limit 1000000 bytes)" in r.json()["error"]

    def chunks():  # no content-length: the cap must hold while streaming
        for _ in range(300):
            yield b"x" * 10_000

    r = client.post("/step", content=chunks())
    assert r.status_code == 413
    cases = [
        (b"{not json", 400, "request body is not valid JSON"),
        (b"[1, 2]", 422, "the body must be a JSON object, got list"),
        (json.dumps({"env_id": env_id}).encode(), 422, "missing field(s) ['action']"),
        (json.dumps({"env_id": "nope", "action": "go"}).encode(), 404, "no open env with id 'nope'"),
    ]
    for body, status, message in cases:
        r = client.post("/step", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status and message in r.json()["error"], r.text
    r = client.post("/step", json={"env_id": env_id, "action": "go north"})
    assert r.status_code == 409 and "call reset() before step()" in r.json()["error"]
    r = client.post("/reset", json={"env_id": env_id, "seed": "zero"})
    assert r.status_code == 400 and "seed must be an int or null" in r.json()["error"]
    r = client.post("/reset", json={"env_id": env_id, "seed": 0, "options": {"task_id": "castle"}})
    assert r.status_code == 400 and "maze task ids look like 'maze-<n>'" in r.json()["error"]
    assert (
        client.post(
            "/reset", json={"env_id": env_id, "seed": 0, "options": {"task_id": "maze-1"}}
        ).status_code
        == 200
    )
    r = client.post("/step", json={"env_id": env_id, "action": {"not": "text"}})
    assert r.status_code == 200 and r.json()["info"]["valid"] is False
    assert client.post("/close", json={"env_id": env_id}).json() == {"closed": True}
    assert client.post("/close", json={"env_id": env_id}).status_code == 404
    assert client.get("/health").json()["ok"]


def test_client_maps_env_errors_like_a_local_env(maze_server):
    env = RemoteEnv(maze_server.url, token=TOKEN)
    with pytest.raises(ValueError, match="maze task ids look like"):
        env.reset(options={"task_id": "castle"})
    with pytest.raises(RuntimeError, match="call reset"):
        env.step("go north")
    env.close()
    env.close()  # closing twice is fine


def test_open_envs_are_bounded(maze_server):
    opened = [
        RemoteEnv(maze_server.url, token=TOKEN)
        for _ in range(12 - httpx.get(maze_server.url + "/health").json()["open_envs"])
    ]
    with pytest.raises(RemoteEnvError, match="429: too many open envs"):
        RemoteEnv(maze_server.url, token=TOKEN)
    for env in opened:
        env.close()
    RemoteEnv(maze_server.url, token=TOKEN).close()


def test_concurrent_clients_match_local(maze_server):
    local = make("maze", size=3)
    expected = {i: play(local, f"maze-{i}", i) for i in range(8)}

    def worker(i):
        env = RemoteEnv(maze_server.url, token=TOKEN)
        try:
            return play(env, f"maze-{i}", i, expected[i][1])[0]
        finally:
            env.close()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))
    assert results == [expected[i][0] for i in range(8)]


def test_search_and_tool_envs_over_http():
    with ServerThread(create_app(lambda: SearchEnv("test", **SMALL_SEARCH))) as server:
        remote, local = RemoteEnv(server.url), SearchEnv("test", **SMALL_SEARCH)
        q = local.questions["test-4"]
        mine, actions = play(local, q.id, 3, oracle_actions(q))
        assert play(remote, q.id, 3, actions)[0] == mine and mine[-1][1] == 1.0
        check_env(remote)
    with ServerThread(create_app(lambda: builtin_tool_env("store", "test", num_tasks=3))) as server:
        remote, local = RemoteEnv(server.url), builtin_tool_env("store", "test", num_tasks=3)
        task = local.tasks["store-test-1"]
        actions = [solution_action(turn) for turn in task.solution] + [task.final]
        mine, _ = play(local, task.id, 0, actions)
        assert play(remote, task.id, 0, actions)[0] == mine and mine[-1][1] == 1.0
        check_env(remote, task_id="store-test-2")
    with ServerThread(create_app(BFCLMultiTurnEnv)) as server:
        remote, local = RemoteEnv(server.url), BFCLMultiTurnEnv()
        entry = local.entries["multi_turn_base_3"]
        actions = [a for turn in ground_truth_actions(entry) for a in turn]
        mine, _ = play(local, entry["id"], 0, actions, max_steps=len(actions))
        assert play(remote, entry["id"], 0, actions, max_steps=len(actions))[0] == mine and mine[-1][1] == 1.0
        check_env(remote, task_id="multi_turn_base_3")
    with ServerThread(create_app("maze")) as server:
        env = make("remote", url=server.url)
        assert (
            env.reset(seed=0, options={"task_id": "maze-2"})[0]
            == make("maze").reset(seed=0, options={"task_id": "maze-2"})[0]
        )


def test_bad_server_setup_fails_at_start():
    with pytest.raises(KeyError, match="nosuchenv"):
        create_app("nosuchenv")
    with pytest.raises(ValueError, match="size must be in 2..5"):
        create_app("maze", {"size": 9})


class Fragile(type(make("maze"))):
    """A maze whose step breaks on one action, to see that an env bug is a 500 and not a dead server."""

    def step(self, action):
        if action == "explode":
            raise ZeroDivisionError("the env has a bug")
        return super().step(action)


def test_an_env_bug_is_reported_and_the_server_stays_up():
    with ServerThread(create_app(Fragile)) as server:
        env = RemoteEnv(server.url)
        env.reset(seed=0, options={"task_id": "maze-0"})
        with pytest.raises(
            RemoteEnvError, match="answered 500: step failed: ZeroDivisionError: the env has a bug"
        ):
            env.step("explode")
        obs, *_ = env.step("go north")
        assert isinstance(obs, str) and httpx.get(server.url + "/health").json()["ok"]


STALLS: list[threading.Thread] = []  # the thread that runs each call of `stall`
WAKE = threading.Event()


@tool
def stall(seconds: float) -> str:
    """Wait up to ``seconds`` (a tool that does not return in time)."""
    STALLS.append(threading.current_thread())
    WAKE.wait(seconds)
    return "woke up"


def test_a_hanging_tool_times_out_and_the_server_keeps_answering():
    env_factory = lambda: ToolEnv([stall], [ToolTask("t", "wait")], lambda task, ep: 0.0, call_timeout=0.2)
    WAKE.clear()
    with ServerThread(create_app(env_factory)) as server:
        try:
            env = RemoteEnv(server.url)
            env.reset(seed=0, options={"task_id": "t"})
            calls = len(STALLS)
            obs, _, _, _, info = env.step(
                '<tool_call>{"name": "stall", "arguments": {"seconds": 60}}</tool_call>'
            )
            assert "tool 'stall' did not return within 0.2 s" in obs and info["valid"] is False
            # the answer came while the call still runs, and the server answers others meanwhile
            assert len(STALLS) == calls + 1 and STALLS[-1].is_alive()
            assert httpx.get(server.url + "/health").json()["ok"]
            obs, *_ = env.step('<tool_call>{"name": "stall", "arguments": {"seconds": "x"}}</tool_call>')
            assert "argument 'seconds' of 'stall' must be a number, got str" in obs
        finally:
            WAKE.set()


@pytest.mark.slow
def test_module_entry_serves_an_env_in_its_own_process():
    import subprocess
    import sys

    from agentrl.serving import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentrl.envs.remote",
            "maze",
            "--port",
            str(port),
            "--token",
            TOKEN,
            "-o",
            "size=4",
            "-o",
            "slip=0.0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        env = RemoteEnv(f"http://127.0.0.1:{port}", token=TOKEN)
        local = make("maze", size=4)
        assert play(env, "maze-3", 5)[0] == play(local, "maze-3", 5, play(local, "maze-3", 5)[1])[0]
        env.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
