"""OpenEnv both ways against the real openenv-core: its client on agentrl's server, agentrl's adapter on its.

Every server binds 127.0.0.1 on a free port and stops when its test ends. Transcripts are compared
as (text, info, reward, done, truncated) per turn, with the local env's info in JSON types.
"""

import json
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from openenv.core.client_types import StepResult
from openenv.core.env_client import EnvClient
from openenv.core.env_server import Action, Environment, Observation, State, create_fastapi_app
from websockets.sync.client import connect

from agentrl.envs import EnvCheckError, check_env, make
from agentrl.envs.openenv import OpenEnvEnv, OpenEnvError, create_openenv_app
from agentrl.envs.pool import EnvPool
from agentrl.envs.remote import jsonable
from agentrl.serving import ServerThread, free_port
from tests.test_alfworld import SPLIT, alf_cache, games_dir  # noqa: F401 - shared session fixtures

# openenv-core 0.2's client opens its WebSocket the way websockets 17 deprecates (it still works)
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")

TOKEN = "open-s3same"
SMALL_SEARCH = {"seed": 7, "num_docs": 400, "num_train": 200, "num_test": 50}


# ----------------------------------------------------------------------------- openenv-core's client


class AgentrlClient(EnvClient):
    """openenv-core's EnvClient for an agentrl env served with --protocol openenv (what a TRL user writes)."""

    def _step_payload(self, action):
        return {"message": action}

    def _parse_result(self, payload):
        return StepResult(
            observation=payload["observation"], reward=payload.get("reward"), done=payload.get("done", False)
        )

    def _parse_state(self, payload):
        return State(**payload)


def openenv_client(url):
    """openenv-core's client, synchronous (0.2 is; 0.3 and later are async with a .sync() wrapper)."""
    client = AgentrlClient(base_url=url)
    client = client.sync() if hasattr(client, "sync") else client
    if hasattr(client, "connect"):
        client.connect()
    return client


def remote_turn(result):
    obs = result.observation
    return obs["text"], obs["info"], result.reward, result.done, obs["truncated"]


def local_reset(env, seed, task_id):
    obs, info = env.reset(seed=seed, options={"task_id": task_id} if task_id is not None else None)
    return obs, jsonable(info), None, False, False


def local_step(env, action):
    obs, reward, terminated, truncated, info = env.step(action)
    return obs, jsonable(info), float(reward), bool(terminated or truncated), bool(truncated)


def play_local(env, seed, task_id, actions):
    out = [local_reset(env, seed, task_id)]
    for action in actions:
        out.append(local_step(env, action))
        if out[-1][3]:
            break
    return out


def play_client(client, seed, task_id, actions):
    kwargs = {"seed": seed} if task_id is None else {"seed": seed, "task_id": task_id}
    out = [remote_turn(client.reset(**kwargs))]
    for action in actions:
        out.append(remote_turn(client.step(action)))
        if out[-1][3]:
            break
    return out


def maze_actions(env, seed, task_id, n=12):
    rng = np.random.default_rng(seed)
    _obs, info = env.reset(seed=seed, options={"task_id": task_id})
    actions = []
    for _ in range(n):
        actions.append(str(rng.choice(info["admissible_actions"])))
        _obs, _r, terminated, truncated, info = env.step(actions[-1])
        if terminated or truncated:
            break
    return actions


def expert_actions(env, seed, task_id, n=60):
    """Solve the task with the env's own expert or oracle (the episode ends in success)."""
    _obs, info = env.reset(seed=seed, options={"task_id": task_id})
    name = type(env).__name__
    if name == "SearchEnv":
        from agentrl.envs.search import oracle_actions

        return oracle_actions(env.question)
    if name == "ToolEnv":
        from agentrl.envs.tools import solution_action

        return [solution_action(turn) for turn in env.task.solution] + [env.task.final]
    actions = []
    for _ in range(n):  # ALFWorld with expert=True
        actions.append(info["expert_action"])
        _obs, _r, terminated, truncated, info = env.step(actions[-1])
        if terminated or truncated:
            break
    return actions


WEBSHOP_ACTIONS = ["search[voice control digital camera compact]", "click[b0ufdekn4g]", "click[sd card]"]
CASES = {
    "maze": ({"size": 3}, [(0, "maze-0"), (3, "maze-7")], maze_actions),
    "tools": (
        {"suite": "store", "split": "test"},
        [(0, "store-test-0"), (1, "store-test-3")],
        expert_actions,
    ),
    "search": ({**SMALL_SEARCH, "split": "test"}, [(0, "test-0"), (2, "test-5")], expert_actions),
    "webshop": ({"split": "test"}, [(0, "3")], lambda *a: [*WEBSHOP_ACTIONS, "click[buy now]"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_openenv_core_client_plays_agentrl_envs_as_locally(name):
    kwargs, episodes, policy = CASES[name]
    local = make(name, **kwargs)
    with ServerThread(create_openenv_app(name, kwargs, token=TOKEN)) as server:
        client = openenv_client(server.url.replace("http://", f"http://agentrl:{TOKEN}@"))
        for seed, task_id in episodes:
            actions = policy(local, seed, task_id)
            mine = play_local(local, seed, task_id, actions)
            theirs = play_client(client, seed, task_id, actions)
            assert theirs == mine and len(mine) >= 3
            assert mine[-1][3] or name == "maze"  # the solved episodes end
            state = client.state()
            assert state.step_count == len(mine) - 1 and state.task_id == task_id
        client.close()
    if name in ("tools", "search", "webshop"):
        assert mine[-1][2] == 1.0  # the solution earns the full reward over the wire too


@pytest.mark.slow
def test_openenv_core_client_plays_alfworld_as_locally(games_dir):  # noqa: F811
    kwargs = {"split": SPLIT, "data_dir": str(games_dir), "expert": True}
    local = make("alfworld", **kwargs)
    task_id = local.task_ids()[0]
    actions = expert_actions(local, 0, task_id)
    with ServerThread(create_openenv_app("alfworld", kwargs)) as server:
        client = openenv_client(server.url)
        mine = play_local(local, 0, task_id, actions)
        assert play_client(client, 0, task_id, actions) == mine
        assert mine[-1][2] == 1.0 and mine[-1][3] and mine[-1][1]["success"] is True
        client.close()
    local.close()


@pytest.fixture(scope="module")
def maze_server():
    with ServerThread(create_openenv_app("maze", {"size": 3}, token=TOKEN, max_envs=20)) as server:
        yield server


def test_concurrent_openenv_clients_each_get_their_own_env(maze_server):
    local_transcripts = {}
    for k in range(8):
        env = make("maze", size=3)
        actions = maze_actions(env, k, f"maze-{k}")
        local_transcripts[k] = (actions, play_local(env, k, f"maze-{k}", actions))

    def run(k):
        client = openenv_client(maze_server.url.replace("http://", f"http://u:{TOKEN}@"))
        actions, _ = local_transcripts[k]
        out = [play_client(client, k, f"maze-{k}", actions) for _ in range(3)]
        client.close()
        return out

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(8)))
    for k, runs in enumerate(results):
        assert all(r == local_transcripts[k][1] for r in runs)


def test_agentrl_adapter_on_agentrl_openenv_server_is_the_local_env(maze_server):
    env = make("openenv", url=maze_server.url, token=TOKEN)
    local = make("maze", size=3)
    assert list(env.task_ids()) == list(local.task_ids())
    for seed, task_id in [(0, "maze-0"), (5, "maze-9")]:
        actions = maze_actions(local, seed, task_id)
        mine = [jsonable(local.reset(seed=seed, options={"task_id": task_id}))]
        theirs = [jsonable(env.reset(seed=seed, options={"task_id": task_id}))]
        for action in actions:
            mine.append(jsonable(local.step(action)))
            theirs.append(jsonable(env.step(action)))
        assert theirs == mine
    assert env.state()["step_count"] == len(actions)
    with pytest.raises(ValueError, match="maze task ids look like"):
        env.reset(options={"task_id": "castle"})
    support = check_env(env, other=OpenEnvEnv(maze_server.url, token=TOKEN))
    assert support.group_resets and support.admissible_actions and support.task_ids


def test_tokens_guard_the_session_and_the_routes(maze_server):
    import httpx

    assert httpx.get(maze_server.url + "/health").json() == {"status": "healthy"}
    assert httpx.get(maze_server.url + "/tasks").status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(maze_server.url + "/tasks", headers=auth).json()["task_ids"][:2] == ["maze-0", "maze-1"]
    assert httpx.get(maze_server.url + "/schema", headers=auth).json()["action"]["required"] == ["message"]
    with pytest.raises(OpenEnvError, match="HTTP 403"):
        OpenEnvEnv(maze_server.url)
    with pytest.raises(OpenEnvError, match="HTTP 403"):
        OpenEnvEnv(maze_server.url, token="wrong")
    with pytest.raises(ConnectionError):  # openenv-core's client, without and with a wrong password
        openenv_client(maze_server.url).reset()
    with pytest.raises(ConnectionError):
        openenv_client(maze_server.url.replace("http://", "http://u:wrong@")).reset()


def test_protocol_errors_answer_and_the_session_goes_on(maze_server):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with connect(maze_server.url.replace("http", "ws") + "/ws", additional_headers=headers) as ws:
        _protocol_errors(ws)


def _protocol_errors(ws):

    def ask(raw):
        ws.send(raw if isinstance(raw, str) else json.dumps(raw))
        return json.loads(ws.recv(timeout=30))

    cases = [
        ("{not json", "INVALID_JSON", "Invalid JSON"),
        ([1, 2], "VALIDATION_ERROR", "a message is a JSON object"),
        ({"type": "dance"}, "UNKNOWN_TYPE", "Unknown message type: dance"),
        ({"type": "step", "data": {"message": "go north"}}, "EXECUTION_ERROR", "call reset() before step()"),
        ({"type": "reset", "data": {"seed": -1}}, "VALIDATION_ERROR", "seed must be a non-negative int"),
        ({"type": "reset", "data": {"task_id": "castle"}}, "EXECUTION_ERROR", "maze task ids look like"),
        ({"type": "step", "data": {"text": "go"}}, "VALIDATION_ERROR", "unknown field(s) ['text']"),
        ({"type": "step", "data": {"message": "x" * 1_100_000}}, "VALIDATION_ERROR", "message too large"),
    ]
    for message, code, text in cases:
        answer = ask(message)
        assert (
            answer["type"] == "error" and answer["data"]["code"] == code and text in answer["data"]["message"]
        )
    answer = ask({"type": "reset", "data": {"seed": 1, "task_id": "maze-2", "episode_id": "ep-1"}})
    assert answer["type"] == "observation" and answer["data"]["reward"] is None
    answer = ask({"type": "step", "data": {"message": {"not": "text"}}})  # a bad action is a no-op
    assert answer["data"]["observation"]["info"]["valid"] is False
    assert ask({"type": "state"})["data"] == {
        "episode_id": "ep-1",
        "step_count": 1,
        "env": "maze",
        "task_id": "maze-2",
    }
    ws.send(json.dumps({"type": "close"}))


def test_sessions_are_bounded_and_freed():
    with ServerThread(create_openenv_app("maze", {"size": 2}, max_envs=1)) as server:
        first = OpenEnvEnv(server.url)
        first.reset(seed=0)
        with pytest.raises(OpenEnvError, match="CAPACITY_REACHED"):
            OpenEnvEnv(server.url).reset(seed=0)
        first.close()
        deadline = time.monotonic() + 10
        while True:  # the server frees the slot once it has seen the close
            try:
                again = OpenEnvEnv(server.url)
                again.reset(seed=0)
                break
            except OpenEnvError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        again.close()


def test_env_pool_of_openenv_envs_does_group_resets(maze_server):
    kwargs = {"url": maze_server.url, "token": TOKEN}
    with EnvPool("openenv", 3, env_kwargs=kwargs, backend="process") as pool:
        resets = pool.reset(seeds=[4, 4, 4], options=[{"task_id": "maze-3"}] * 3)
        assert resets[0] == resets[1] == resets[2]
        action = resets[0][1]["admissible_actions"][0]
        results = pool.step([action] * 3)
        assert results[0].obs == results[1].obs == results[2].obs


# ----------------------------------------------------------------------------- openenv-core's server


class GuessAction(Action):
    message: str


class GuessObservation(Observation):
    text: str
    legal: list[str]


NUMBERS = [str(n) for n in range(1, 21)]
_unseeded = [0]
_unseeded_lock = threading.Lock()


class GuessEnvironment(Environment):
    """Guess a number from 1 to 20 in 6 tries, told higher or lower: a text env in openenv-core's classes."""

    SUPPORTS_CONCURRENT_SESSIONS = True
    SEEDED = True

    def __init__(self):
        super().__init__()
        self._state = State(episode_id=None, step_count=0)
        self.secret = 0

    def reset(self, seed=None, episode_id=None, **kwargs):
        if not self.SEEDED:  # ignores the seed: every reset draws a new number
            with _unseeded_lock:
                _unseeded[0] += 1
                seed = 1000 + _unseeded[0]
        self.secret = random.Random(seed).randint(1, 20)
        self._state = State(episode_id=episode_id, step_count=0)
        return GuessObservation(text="Guess a number from 1 to 20.", legal=NUMBERS, done=False, reward=None)

    def step(self, action, timeout_s=None, **kwargs):
        self._state.step_count += 1
        guess = action.message.strip()
        if guess not in NUMBERS:
            text, reward = f"{guess!r} is not a number from 1 to 20.", 0.0
        elif int(guess) == self.secret:
            text, reward = "Correct!", 1.0
        else:
            text, reward = ("Higher." if int(guess) < self.secret else "Lower."), 0.0
        done = reward == 1.0 or self._state.step_count >= 6
        return GuessObservation(text=text, legal=NUMBERS, done=done, reward=reward)

    @property
    def state(self):
        return self._state


class UnseededGuessEnvironment(GuessEnvironment):
    SEEDED = False


def guess_server(env_cls):
    return ServerThread(create_fastapi_app(env_cls, GuessAction, GuessObservation, max_concurrent_envs=8))


def play_guess_locally(seed, guesses):
    env = GuessEnvironment()
    obs = env.reset(seed=seed)
    out = [(obs.text, None, obs.done)]
    for guess in guesses:
        obs = env.step(GuessAction(message=guess))
        out.append((obs.text, obs.reward, obs.done))
        if obs.done:
            break
    return out


def test_agentrl_adapter_plays_an_openenv_core_env_as_locally():
    with guess_server(GuessEnvironment) as server:
        env = OpenEnvEnv(server.url, observation_field="text", admissible_field="legal")
        assert env.task_ids() == []
        for seed, guesses in [(0, ["10", "5", "15", "3", "18", "7"]), (3, ["banana", "10", "12"])]:
            obs, info = env.reset(seed=seed)
            theirs = [(obs, None, False)]
            assert info["admissible_actions"] == NUMBERS and info["state_key"] == obs
            for guess in guesses:
                obs, reward, terminated, truncated, info = env.step(guess)
                theirs.append((obs, reward, terminated))
                assert not truncated and info["valid"] is (guess in NUMBERS)
                assert info["success"] is (reward == 1.0) and info["observation"]["text"] == obs
                if terminated:
                    break
            assert theirs == play_guess_locally(seed, guesses)
        # the secret of seed 0, found by bisection through the adapter, wins
        env.reset(seed=0)
        low, high = 1, 20
        while True:
            mid = (low + high) // 2
            obs, reward, terminated, _, info = env.step(str(mid))
            if obs != "Higher." and obs != "Lower.":
                break
            low, high = (mid + 1, high) if obs == "Higher." else (low, mid - 1)
        assert obs == "Correct!" and reward == 1.0 and terminated and info["success"]
        support = check_env(
            env, other=OpenEnvEnv(server.url, observation_field="text", admissible_field="legal")
        )
        assert support.group_resets and support.admissible_actions and not support.task_ids


def test_check_env_says_when_an_openenv_env_cannot_replay_a_seed():
    with guess_server(UnseededGuessEnvironment) as server:
        kwargs = {"url": server.url, "observation_field": "text", "admissible_field": "legal"}
        guesses = [str(n) for n in range(1, 7)]
        transcripts = []
        for _ in range(4):  # the same seed and actions, different episodes
            env = make("openenv", **kwargs)
            env.reset(seed=0)
            transcripts.append([env.step(g)[:3] for g in guesses])
            env.close()
        assert len({json.dumps(t) for t in transcripts}) > 1
        with pytest.raises(EnvCheckError, match="not deterministic"):
            check_env(make("openenv", **kwargs))
        support = check_env(make("openenv", **kwargs), group_resets=False)
        assert not support.group_resets and support.admissible_actions


def test_openenv_core_server_errors_reach_the_adapter():
    with guess_server(GuessEnvironment) as server:
        env = OpenEnvEnv(server.url, action_field="guess")  # not the env's action field
        env.reset(seed=0)
        with pytest.raises(ValueError, match="VALIDATION_ERROR"):
            env.step("3")
        env.close()
        with pytest.raises(OpenEnvError, match="cannot open an OpenEnv session"):
            OpenEnvEnv(f"http://127.0.0.1:{free_port()}", connect_timeout=5)
        with pytest.raises(ValueError, match="starts with http"):
            OpenEnvEnv("ftp://127.0.0.1:1")


# ----------------------------------------------------------------------------- the command line


def test_envs_serve_protocol_openenv_runs_a_real_server():
    """`agentrl envs serve maze --protocol openenv` in a subprocess; openenv-core's client plays on it."""
    port = free_port()
    cmd = [sys.executable, "-m", "agentrl.cli", "envs", "serve", "maze", "--protocol", "openenv"]
    cmd += ["--port", str(port), "--token", "t0k", "-o", "size=2"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=Path(__file__).parents[1]
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                client = openenv_client(f"http://agentrl:t0k@127.0.0.1:{port}")
                first = client.reset(seed=2, task_id="maze-1")
                break
            except ConnectionError:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        local = make("maze", size=2)
        assert remote_turn(first) == local_reset(local, 2, "maze-1")
        client.close()
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert b"serving env 'maze' to OpenEnv clients at http://127.0.0.1:" in err


def test_envs_serve_rejects_an_unknown_protocol():
    from typer.testing import CliRunner

    from agentrl.cli import app

    result = CliRunner().invoke(app, ["envs", "serve", "maze", "--protocol", "grpc"])
    assert result.exit_code != 0 and "--protocol must be agentrl or openenv" in result.output
