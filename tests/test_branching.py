"""Resume an episode from a prefix: snapshot/restore where the env copies its state, replay for every
env, both verified by check_env, and through an EnvPool's workers."""

from __future__ import annotations

import itertools
import pickle
from typing import Any

import numpy as np
import pytest

from agentrl.envs import make
from agentrl.envs.base import AgentEnv, EnvSnapshot
from agentrl.envs.branching import BranchError, BranchPoint, Prefix, branch_point, resume, supported_modes
from agentrl.envs.checker import EnvCheckError, check_env
from agentrl.envs.pool import EnvPool, WorkerError

SNAPSHOT_ENVS = [
    ("maze", {"size": 3, "slip": 0.3, "turn_rewards": True, "subgoals": True}),
    ("tools", {"suite": "store"}),
    ("search", {}),
    ("webshop", {}),
    ("bfcl", {}),
]


def play(env: Any, info: dict[str, Any], rng: np.random.Generator, n: int) -> tuple[list[str], list[Any]]:
    """Up to n steps with seeded admissible actions (or a fixed text action); actions and transcript."""
    actions, out = [], []
    for _ in range(n):
        acts = info.get("admissible_actions") or ["look"]
        action = str(rng.choice(acts))
        obs, reward, terminated, truncated, info = env.step(action)
        actions.append(action)
        out.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            break
    return actions, out


@pytest.mark.parametrize(("name", "kwargs"), SNAPSHOT_ENVS, ids=[n for n, _ in SNAPSHOT_ENVS])
def test_check_env_verifies_restore_and_replay(name: str, kwargs: dict[str, Any]) -> None:
    report = check_env(make(name, **kwargs), other=make(name, **kwargs), skip_gymnasium=True)
    assert report.resume == ("restore", "replay")


def test_the_slipping_maze_continues_the_same_way_after_restore_and_replay_in_another_instance() -> None:
    """The maze's slips come from its RNG: a restored branch draws the same slips as the original."""
    kwargs = {"size": 3, "slip": 0.5}
    env = make("maze", **kwargs)
    obs, info = env.reset(seed=7, options={"task_id": "maze-3"})
    rng = np.random.default_rng(0)
    prefix_actions, steps = play(env, info, rng, 3)
    obs, info = steps[-1][0], steps[-1][-1]
    point = branch_point(env, Prefix(7, {"task_id": "maze-3"}, tuple(prefix_actions)), obs, info)
    assert point.turn == 3 and point.snapshot is not None
    _rest_actions, original = play(env, info, np.random.default_rng(1), 8)
    for mode in ("restore", "replay"):
        other = make("maze", **kwargs)
        other.reset(seed=99, options={"task_id": "maze-0"})  # somewhere else entirely
        got_obs, got_info, used = resume(other, point, mode)
        assert (got_obs, used) == (obs, mode) and got_info["state_key"] == info["state_key"]
        _, again = play(other, got_info, np.random.default_rng(1), 8)
        assert again == original


def test_a_snapshot_pickles_and_is_reusable() -> None:
    env = make("tools", suite="store")
    _obs, _info = env.reset(seed=0, options={"task_id": env.task_ids()[2]})
    snap = pickle.loads(pickle.dumps(env.snapshot()))
    call = '<tool_call>{"name": "search_products", "arguments": {"query": "shirt"}}</tool_call>'
    first = env.step(call)
    for _ in range(2):
        env.restore(snap)
        assert env.step(call) == first


def test_env_without_snapshot_fields_offers_replay_only() -> None:
    env = Counter()
    assert not env.can_snapshot and supported_modes(env) == ("replay",)
    with pytest.raises(NotImplementedError, match="declares no snapshot_fields"):
        env.snapshot()
    assert check_env(env, skip_gymnasium=True).resume == ("replay",)
    point = BranchPoint(Prefix(0, {}, ("a", "b")), "2", {"state_key": "2"})
    with pytest.raises(BranchError, match="no snapshot"):
        resume(env, point, "restore")
    assert resume(env, point)[2] == "replay" and env.step("c")[0] == "3"
    with pytest.raises(ValueError, match="mode"):
        resume(env, point, "rewind")  # type: ignore[arg-type]


def test_check_env_catches_a_snapshot_that_misses_part_of_the_state() -> None:
    """A forgotten field (the step counter) makes the restored episode end at another step."""

    class Forgetful(AgentEnv):
        snapshot_fields = ("pos",)  # forgets "t"

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
            super().reset(seed=seed)
            self.pos, self.t = 0, 0
            return "0", {"state_key": "0", "admissible_actions": ["left", "right"]}

        def step(self, action: str):
            self.t += 1
            self.pos += 1 if action == "right" else -1
            info = {
                "state_key": str(self.pos),
                "valid": True,
                "success": False,
                "admissible_actions": ["left", "right"],
            }
            return str(self.pos), 0.0, False, self.t >= 6, info

    with pytest.raises(EnvCheckError, match="restore at turn 3"):
        check_env(Forgetful(), skip_gymnasium=True)


def test_replay_of_a_nondeterministic_env_fails_loudly() -> None:
    counter = itertools.count()

    class Drifting(AgentEnv):
        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
            super().reset(seed=seed)
            self.k = next(counter)  # a global the seed does not control
            return f"start {self.k}", {"state_key": f"start {self.k}"}

        def step(self, action: str):
            return "x", 0.0, False, False, {"state_key": "x", "valid": True, "success": False}

    point = BranchPoint(Prefix(0, {}, ()), "start 0", {"state_key": "start 0"})
    env = Drifting()
    env.reset(seed=0)
    with pytest.raises(BranchError, match="not deterministic"):
        resume(env, point, "replay")


def test_restore_refuses_another_envs_snapshot() -> None:
    maze, tools = make("maze"), make("tools", suite="calculator")
    maze.reset(seed=0)
    tools.reset(seed=0)
    with pytest.raises(ValueError, match="its own snapshots, got 'MazeEnv'"):
        tools.restore(maze.snapshot())
    with pytest.raises(ValueError, match="got 'str'"):
        tools.restore("not a snapshot")  # type: ignore[arg-type]
    assert isinstance(maze.snapshot(), EnvSnapshot)


@pytest.mark.parametrize("backend", ["inprocess", "process"])
def test_pool_snapshots_travel_between_workers(backend: str) -> None:
    kwargs = {"size": 3, "slip": 0.5}
    with EnvPool("maze", 2, env_kwargs=kwargs, backend=backend) as pool:
        (_obs, info), _ = pool.reset(seeds=[5, 6], options=[{"task_id": "maze-1"}, {"task_id": "maze-2"}])
        action = info["admissible_actions"][0]
        pool.step([action], indices=[0])
        assert pool.can_snapshot
        (snap,) = pool.snapshot(indices=[0])
        after = [pool.step([a], indices=[0])[0] for a in ("north", "south", "east", "west")]
        pool.restore([snap], indices=[1])  # the other worker continues worker 0's episode
        again = [pool.step([a], indices=[1])[0] for a in ("north", "south", "east", "west")]
        assert [tuple(r) for r in again] == [tuple(r) for r in after]


class Counter(AgentEnv):
    """Replay only: no snapshot_fields."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.n = 0
        return "0", {"state_key": "0"}

    def step(self, action: str):
        self.n += 1
        return (
            str(self.n),
            0.0,
            self.n >= 5,
            False,
            {"state_key": str(self.n), "valid": True, "success": False},
        )


def test_pool_reports_an_env_that_cannot_snapshot_and_keeps_its_episode() -> None:
    from agentrl.envs import register_env

    register_env("test_counter", Counter)
    with EnvPool("test_counter", 1, backend="inprocess") as pool:
        pool.reset(seeds=[0])
        pool.step(["a"])
        assert not pool.can_snapshot
        with pytest.raises(WorkerError, match="could not take a snapshot: NotImplementedError"):
            pool.snapshot()
        assert pool.step(["b"])[0].obs == "2"  # the episode was not lost


def test_remote_envs_snapshot_on_the_server_and_siblings_restore_them() -> None:
    from agentrl.envs.remote import RemoteEnv, RemoteEnvError, ServerThread, create_app

    kwargs = {"size": 3, "slip": 0.5}
    with ServerThread(create_app("maze", kwargs, token="t", max_snapshots=2)) as server:
        a, b = RemoteEnv(server.url, token="t"), RemoteEnv(server.url, token="t")
        report = check_env(a, other=b, skip_gymnasium=True)  # closes a
        assert report.resume == ("restore", "replay")
        a = RemoteEnv(server.url, token="t")
        a.reset(seed=3, options={"task_id": "maze-1"})
        a.step("north")
        snap = a.snapshot()
        assert set(snap.fields) == {"server", "id"}  # a handle: the state stays on the server
        original = [a.step(x) for x in ("east", "south", "west")]
        b.restore(snap)
        assert [b.step(x) for x in ("east", "south", "west")] == original
        a.snapshot(), a.snapshot()  # two newer snapshots push the first one out (max_snapshots=2)
        with pytest.raises(ValueError, match="expired"):
            b.restore(snap)
        a.close(), b.close()
    with ServerThread(create_app(Counter, token=None)) as server:
        c = RemoteEnv(server.url)
        assert not c.can_snapshot and check_env(c, skip_gymnasium=True).resume == ("replay",)
        c = RemoteEnv(server.url)  # check_env closed the first
        c._can_snapshot = True  # a client that thinks otherwise gets the server's refusal
        c.reset(seed=0)
        with pytest.raises(RemoteEnvError, match="501.*cannot snapshot"):
            c.snapshot()
        c.close()
