"""EnvPool: batched reset/step over subprocess / in-process / Ray workers, crash recovery, shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agentrl.envs import make
from agentrl.envs.pool import EnvPool, StepResult, WorkerError

SEEDS = [0, 1, 2]


def _gone(pid: int, wait_s: float = 10.0) -> bool:
    """True once no process (not even a zombie of ours) has this pid."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] == "Z":
                    return True  # a zombie of another parent: dead, waiting to be reaped
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def _reference(actions_per_env: list[list[str]]) -> list[list[tuple]]:
    """The same episodes played directly, one env at a time."""
    out = []
    for seed, actions in zip(SEEDS, actions_per_env):
        env = make("maze")
        obs, info = env.reset(seed=seed)
        out.append([(obs, info)] + [tuple(env.step(a)) for a in actions])
    return out


def _first_actions(pool: EnvPool, n_steps: int) -> tuple[list[list[str]], list[list[tuple]]]:
    resets = pool.reset(seeds=SEEDS)
    trace = [[r] for r in resets]
    actions: list[list[str]] = [[] for _ in SEEDS]
    infos = [info for _, info in resets]
    for _ in range(n_steps):
        chosen = [info["admissible_actions"][-1] for info in infos]
        results = pool.step(chosen)
        for k, (a, r) in enumerate(zip(chosen, results)):
            actions[k].append(a)
            trace[k].append(tuple(r))
        infos = [r.info for r in results]
    return actions, trace


@pytest.mark.parametrize("backend", ["process", "inprocess"])
def test_batched_episodes_match_direct_play(backend: str) -> None:
    with EnvPool("maze", 3, backend=backend) as pool:
        actions, trace = _first_actions(pool, 4)
    assert trace == _reference(actions)


def test_killed_worker_is_restarted_and_only_its_episode_is_truncated() -> None:
    with EnvPool("maze", 3) as pool:
        pool.reset(seeds=SEEDS)
        victim = pool.pids()[1]
        os.kill(victim, signal.SIGKILL)
        results = pool.step(["go north", "go east", "go east"])
        assert isinstance(results[1], StepResult)
        assert results[1].truncated and not results[1].terminated and results[1].reward == 0.0
        assert (
            "killed by signal 9" in results[1].info["error"] and results[1].info["worker_restarted"] is True
        )
        assert pool.restarts == [0, 1, 0] and pool.pids()[1] != victim
        for k in (0, 2):  # the rest of the batch is exactly what direct play gives
            env = make("maze")
            env.reset(seed=SEEDS[k])
            assert tuple(results[k]) == tuple(env.step(["go north", "go east", "go east"][k]))
            assert "error" not in results[k].info
        obs, info = pool.reset(indices=[1], seeds=[SEEDS[1]])[0]
        env = make("maze")
        assert (obs, info) == env.reset(seed=SEEDS[1])
        assert not pool.step(["look"], indices=[1])[0].truncated
        pids = pool.pids()
    assert _gone(victim)
    assert all(_gone(p) for p in pids), "close() left worker processes behind"


def test_hung_worker_times_out_and_is_replaced() -> None:
    with EnvPool("maze", 2, step_timeout_s=3.0) as pool:
        pool.reset(seeds=[0, 1])
        stuck = pool.pids()[0]
        os.kill(stuck, signal.SIGSTOP)
        results = pool.step(["look", "look"])
        assert results[0].truncated and "no answer within 3.0s" in results[0].info["error"]
        assert not results[1].truncated and "error" not in results[1].info
        assert _gone(stuck) and pool.restarts == [1, 0]


def test_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from agentrl.envs.pool import EnvPool
        pool = EnvPool("maze", 2)
        print(*pool.pids(), flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2
    parent.kill()
    parent.wait()
    assert all(_gone(p) for p in pids), "workers outlived their SIGKILLed parent"


def test_memory_limit_is_applied_per_worker() -> None:
    with EnvPool("maze", 1, memory_limit_mb=2048) as pool:
        with open(f"/proc/{pool.pids()[0]}/limits") as f:
            line = next(x for x in f if x.startswith("Max address space"))
        assert line.split()[3] == str(2048 * 1024 * 1024)
    # WebShop's imports (numba's LLVM among them) need far more than 64 MiB of address space; the
    # maze's may fit in it, depending on the numpy build
    with pytest.raises(WorkerError, match="could not make env 'webshop'|died while starting"):
        EnvPool("webshop", 1, memory_limit_mb=64)


def test_pool_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown env 'nope'"):
        EnvPool("nope", 1)
    with pytest.raises(ValueError, match="num_envs"):
        EnvPool("maze", 0)
    with pytest.raises(ValueError, match="backend"):
        EnvPool("maze", 1, backend="threads")
    with pytest.raises(WorkerError, match="could not make env 'maze'.*size"):
        EnvPool("maze", 1, env_kwargs={"size": -1})
    with EnvPool("maze", 2, backend="inprocess") as pool:
        pool.reset()
        with pytest.raises(ValueError, match="actions has 1 entries for 2 envs"):
            pool.step(["look"])
        with pytest.raises(IndexError, match="out of range"):
            pool.step(["look"], indices=[5])
    with pytest.raises(RuntimeError, match="closed"):
        pool.step(["look", "look"])


@pytest.mark.slow
def test_ray_backend_recovers_a_killed_actor() -> None:
    ray = pytest.importorskip("ray", reason="the ray backend needs the ray extra")
    try:
        with EnvPool("maze", 3, backend="ray") as pool:
            actions, trace = _first_actions(pool, 2)
            victim = pool.pids()[0]
            os.kill(victim, signal.SIGKILL)
            results = pool.step(["look", "look", "look"])
            assert results[0].truncated and results[0].info["worker_restarted"] is True
            assert not results[1].truncated and not results[2].truncated
            assert pool.pids()[0] != victim
    finally:
        ray.shutdown()
    assert trace == _reference(actions)
