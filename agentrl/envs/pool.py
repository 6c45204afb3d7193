"""EnvPool: M copies of any registered env, stepped as a batch, surviving crashed workers.

Why: rollout steps many episodes at once, and real engines (ALFWorld's Fast Downward, browsers)
can crash, hang or leak. Backends: ``"process"`` (default; one subprocess per env, so M envs use M
cores), ``"inprocess"`` (no isolation, for debugging and cheap envs) and ``"ray"`` (one Ray actor
per env, for envs spread over machines; needs ``pip install ray``).

A worker that dies (killed, out of memory, ``exit()`` in native code) or does not answer within
``step_timeout_s`` is replaced by a fresh one; the episode it was playing comes back from ``step``
as truncated, with ``info["error"]`` saying what happened and ``info["worker_restarted"]``, and
nothing else in the batch is lost. The caller resets that env before stepping it again. Workers
get an optional address-space limit (``memory_limit_mb``, via ``resource.setrlimit``), die with
their parent (``PR_SET_PDEATHSIG`` on Linux, and end-of-pipe detection elsewhere), and
``close()`` (or leaving the ``with`` block) stops them all.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, cast

from agentrl.envs.base import EnvSnapshot

BACKENDS = ("process", "inprocess", "ray")


@dataclass
class StepResult:
    """What ``env.step`` returned, for one env of the batch."""

    obs: str
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any] = field(default_factory=dict)

    def __iter__(self):  # unpacks like gymnasium's 5-tuple
        return iter((self.obs, self.reward, self.terminated, self.truncated, self.info))


class WorkerError(RuntimeError):
    """A worker could not be (re)started or failed to reset its env."""


def _failed_step(error: str, restarted: bool) -> StepResult:
    info = {"error": error, "worker_restarted": restarted, "state_key": "", "valid": False, "success": False}
    return StepResult("", 0.0, False, True, info)


# ----------------------------------------------------------------------------- worker process


def _set_limits(memory_limit_mb: int | None) -> None:
    if memory_limit_mb is not None:
        limit = int(memory_limit_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # die with the parent even if it is SIGKILLed
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _apply(env: Any, msg: tuple[Any, ...]) -> Any:
    """One pool command on an env: ("reset", seed, options) | ("step", action) | ("snapshot",) |
    ("restore", snapshot)."""
    if msg[0] == "reset":
        return env.reset(seed=msg[1], options=msg[2])
    if msg[0] == "step":
        return tuple(env.step(msg[1]))
    if msg[0] == "snapshot":
        return env.snapshot()
    if msg[0] == "restore":
        return env.restore(msg[1])
    if msg[0] == "can_snapshot":
        return bool(env.can_snapshot)
    raise ValueError(f"unknown pool command {msg[0]!r}")


def _worker_main(conn: Connection) -> None:
    """Serve one env over a socket: first (env_name, env_kwargs, memory_limit_mb), then the
    commands of ``_apply``, or ("close",)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which closes us
    env_name = "?"
    try:
        env_name, env_kwargs, memory_limit_mb = conn.recv()
        _set_limits(memory_limit_mb)
        from agentrl.envs import make

        env = make(env_name, **env_kwargs)
        conn.send(("ok", os.getpid()))
    except BaseException as e:
        conn.send(("error", f"could not make env {env_name!r}: {type(e).__name__}: {e}"))
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        if msg[0] == "close":
            break
        try:
            conn.send(("ok", _apply(env, msg)))
        except BaseException as e:
            try:
                conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"))
            except (OSError, ValueError):
                break
    try:
        env.close()
    finally:
        conn.close()


class _ProcessWorker:
    """One env in a fresh interpreter (``python -m agentrl.envs.pool FD``), talking over a socket.

    A plain subprocess rather than multiprocessing's spawn: the caller's script is not
    re-imported, so it needs no ``if __name__ == "__main__"`` guard.
    """

    def __init__(
        self, env_name: str, env_kwargs: dict[str, Any], memory_limit_mb: int | None, start_timeout_s: float
    ) -> None:
        parent_sock, child_sock = socket.socketpair()
        self.conn = Connection(parent_sock.detach())
        fd = child_sock.fileno()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentrl.envs.pool", str(fd)], pass_fds=[fd], close_fds=True
        )
        self.pid = self.proc.pid
        child_sock.close()  # so that the parent sees EOF when the child dies
        try:
            self.conn.send((env_name, env_kwargs, memory_limit_mb))
            if not self.conn.poll(start_timeout_s):
                raise WorkerError(f"env worker for {env_name!r} did not start within {start_timeout_s:.0f}s")
            status, payload = self.conn.recv()
        except (EOFError, OSError) as e:
            self.kill()
            raise WorkerError(
                f"env worker for {env_name!r} died while starting (exit code {self.proc.poll()})"
            ) from e
        except WorkerError:
            self.kill()
            raise
        if status != "ok":
            self.kill()
            raise WorkerError(payload)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.conn.close()

    def stop(self, timeout_s: float) -> None:
        try:
            self.conn.send(("close",))
            self.proc.wait(timeout=timeout_s)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        self.kill()


# ----------------------------------------------------------------------------- the pool


class EnvPool:
    """``num_envs`` copies of ``make(env_name, **env_kwargs)``; ``reset``/``step`` take and return lists.

    ``indices`` selects which envs a call addresses (default: all, in order); the other lists are
    aligned with it. ``step`` never raises for a crashed or failing env: it returns that env's
    episode as truncated with ``info["error"]``.
    """

    def __init__(
        self,
        env_name: str,
        num_envs: int,
        *,
        env_kwargs: dict[str, Any] | None = None,
        backend: str = "process",
        memory_limit_mb: int | None = None,
        step_timeout_s: float | None = None,
        start_timeout_s: float = 600.0,
        ray_options: dict[str, Any] | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown pool backend {backend!r}; choose one of {list(BACKENDS)}")
        if memory_limit_mb is not None and memory_limit_mb < 64:
            raise ValueError(f"memory_limit_mb must be >= 64 (MiB), got {memory_limit_mb}")
        from agentrl.envs import list_envs

        if env_name not in list_envs():
            raise ValueError(f"unknown env {env_name!r}; registered: {list_envs()}")
        self.env_name = env_name
        self._can_snapshot: bool | None = None
        self.num_envs = num_envs
        self.env_kwargs = dict(env_kwargs or {})
        self.backend = backend
        self.memory_limit_mb = memory_limit_mb
        self.step_timeout_s = step_timeout_s
        self.start_timeout_s = start_timeout_s
        # Ray resources per actor; num_cpus=0 never leaves actors pending on a small machine,
        # pass {"num_cpus": 1} (or a scheduling strategy) to spread envs over a cluster
        self.ray_options = {"num_cpus": 0, **(ray_options or {})}
        self.restarts = [0] * num_envs
        self._closed = False
        self._workers: list[Any] = []
        try:
            if backend == "process":
                self._workers = [self._spawn() for _ in range(num_envs)]
            elif backend == "inprocess":
                self._workers = [self._make_local() for _ in range(num_envs)]
            else:
                self._workers = _ray_actors(
                    env_name, self.env_kwargs, num_envs, memory_limit_mb, self.ray_options
                )
        except BaseException:
            self.close()
            raise

    # -- workers

    def _spawn(self) -> _ProcessWorker:
        return _ProcessWorker(self.env_name, self.env_kwargs, self.memory_limit_mb, self.start_timeout_s)

    def _make_local(self) -> Any:
        from agentrl.envs import make

        return make(self.env_name, **self.env_kwargs)

    def _restart(self, i: int) -> None:
        self.restarts[i] += 1
        old = self._workers[i]
        if self.backend == "process":
            old.kill()
            self._workers[i] = self._spawn()
        elif self.backend == "inprocess":
            with contextlib.suppress(Exception):
                old.close()
            self._workers[i] = self._make_local()
        else:
            _ray_kill(old)
            self._workers[i] = _ray_actors(
                self.env_name, self.env_kwargs, 1, self.memory_limit_mb, self.ray_options
            )[0]

    def pids(self) -> list[int]:
        """Process id of each env's worker (process and ray backends)."""
        if self.backend == "process":
            return [w.pid for w in self._workers]
        if self.backend == "ray":
            return _ray().get([a.pid.remote() for a in self._workers])
        raise ValueError("in-process envs have no worker processes")

    # -- batched calls

    def _indices(self, indices: Sequence[int] | None) -> list[int]:
        if self._closed:
            raise RuntimeError("EnvPool is closed")
        idx = list(range(self.num_envs)) if indices is None else [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < self.num_envs]
        if bad:
            raise IndexError(f"env indices {bad} out of range for a pool of {self.num_envs}")
        if len(set(idx)) != len(idx):
            raise ValueError(f"env indices must be distinct, got {idx}")
        return idx

    @staticmethod
    def _aligned(name: str, values: Sequence[Any] | None, n: int) -> list[Any]:
        if values is None:
            return [None] * n
        values = list(values)
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries for {n} envs")
        return values

    def reset(
        self,
        indices: Sequence[int] | None = None,
        seeds: Sequence[int | None] | None = None,
        options: Sequence[dict[str, Any] | None] | None = None,
    ) -> list[tuple[str, dict[str, Any]]]:
        """Reset the selected envs; a worker found dead is restarted and the reset retried once."""
        idx = self._indices(indices)
        seeds = self._aligned("seeds", seeds, len(idx))
        options = self._aligned("options", options, len(idx))
        msgs = [("reset", s, o) for s, o in zip(seeds, options)]
        out = self._call(idx, msgs)
        results = []
        for k, (i, (status, payload, died)) in enumerate(zip(idx, out)):
            if status != "ok" and died:
                self._restart(i)
                status, payload, died = self._call([i], [msgs[k]])[0]
            if status != "ok":
                raise WorkerError(f"env {i} ({self.env_name}) failed to reset: {payload}")
            results.append((payload[0], payload[1]))
        return results

    def step(self, actions: Sequence[str], indices: Sequence[int] | None = None) -> list[StepResult]:
        """Step the selected envs with one action each; failures come back as truncated episodes."""
        idx = self._indices(indices)
        actions = self._aligned("actions", actions, len(idx))
        out = self._call(idx, [("step", a) for a in actions])
        results = []
        for i, (status, payload, died) in zip(idx, out):
            if status == "ok":
                obs, reward, terminated, truncated, info = payload
                results.append(StepResult(obs, float(reward), bool(terminated), bool(truncated), info))
                continue
            if died:
                self._restart(i)
            results.append(_failed_step(payload, restarted=died))
        return results

    @property
    def can_snapshot(self) -> bool:
        """Whether the pool's env snapshots its episodes (asked of a worker once)."""
        if self._can_snapshot is None:
            status, payload, died = self._call([0], [("can_snapshot",)])[0]
            if status != "ok":
                if died:
                    self._restart(0)
                raise WorkerError(f"env 0 ({self.env_name}) did not say whether it can snapshot: {payload}")
            self._can_snapshot = bool(payload)
        return self._can_snapshot

    def snapshot(self, indices: Sequence[int] | None = None) -> list[EnvSnapshot]:
        """Snapshots of the selected envs' episodes (envs that declare ``snapshot_fields``)."""
        idx = self._indices(indices)
        out = self._call(idx, [("snapshot",)] * len(idx))
        for i, (status, payload, died) in zip(idx, out):
            if status != "ok":
                if died:
                    self._restart(i)
                raise WorkerError(f"env {i} ({self.env_name}) could not take a snapshot: {payload}")
        return [payload for _status, payload, _died in out]

    def restore(self, snapshots: Sequence[EnvSnapshot], indices: Sequence[int] | None = None) -> None:
        """Put the selected envs at the given snapshots (any env of the pool takes any snapshot)."""
        idx = self._indices(indices)
        snapshots = self._aligned("snapshots", snapshots, len(idx))
        out = self._call(idx, [("restore", snap) for snap in snapshots])
        for i, (status, payload, died) in zip(idx, out):
            if status != "ok":
                if died:
                    self._restart(i)
                raise WorkerError(f"env {i} ({self.env_name}) could not restore a snapshot: {payload}")

    def _call(self, idx: list[int], msgs: list[tuple[Any, ...]]) -> list[tuple[str, Any, bool]]:
        """(status, payload, worker_died) per env, the calls running concurrently."""
        if self.backend == "inprocess":
            return [self._local_call(self._workers[i], m) for i, m in zip(idx, msgs)]
        if self.backend == "ray":
            return _ray_call([self._workers[i] for i in idx], msgs, self.step_timeout_s)
        return self._process_call(idx, msgs)

    @staticmethod
    def _local_call(env: Any, msg: tuple[Any, ...]) -> tuple[str, Any, bool]:
        try:
            return "ok", _apply(env, msg), False
        except Exception as e:  # a failed reset or step leaves the env unusable; a refused snapshot does not
            return "error", f"{type(e).__name__}: {e}", msg[0] in ("reset", "step")

    def _process_call(self, idx: list[int], msgs: list[tuple[Any, ...]]) -> list[tuple[str, Any, bool]]:
        out: dict[int, tuple[str, Any, bool]] = {}
        waiting: dict[Any, int] = {}
        for i, msg in zip(idx, msgs):
            w = self._workers[i]
            try:
                w.conn.send(msg)
                waiting[w.conn] = i
            except (OSError, ValueError):
                out[i] = ("error", self._death_note(i), True)
        deadline = None if self.step_timeout_s is None else time.monotonic() + self.step_timeout_s
        while waiting:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait(list(waiting), timeout=left)
            if not ready:  # timed out: kill the stragglers so they can be replaced
                for i in waiting.values():
                    self._workers[i].kill()
                    out[i] = (
                        "error",
                        f"env worker {i} gave no answer within {self.step_timeout_s}s and was killed",
                        True,
                    )
                break
            for conn in ready:
                i = waiting.pop(conn)
                try:
                    status, payload = cast(Connection, conn).recv()
                    out[i] = (status, payload, False)
                except (EOFError, OSError):
                    out[i] = ("error", self._death_note(i), True)
        return [out[i] for i in idx]

    def _death_note(self, i: int) -> str:
        proc = self._workers[i].proc
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return f"env worker {i} (pid {proc.pid}) died ({how})"

    # -- shutdown

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop every worker (gracefully, then by force); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            try:
                if self.backend == "process":
                    w.stop(timeout_s)
                elif self.backend == "inprocess":
                    w.close()
                else:
                    _ray_kill(w)
            except Exception:
                pass
        self._workers = []

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close(timeout_s=1.0)


# ----------------------------------------------------------------------------- ray backend


class _RayEnv:
    """The body of a Ray actor: one env."""

    def __init__(self, env_name: str, env_kwargs: dict[str, Any], memory_limit_mb: int | None) -> None:
        if memory_limit_mb is not None:
            limit = int(memory_limit_mb) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        from agentrl.envs import make

        self.env = make(env_name, **env_kwargs)

    def pid(self) -> int:
        return os.getpid()

    def call(self, msg: tuple[Any, ...]) -> tuple[str, Any]:
        try:
            return "ok", _apply(self.env, msg)
        except Exception as e:
            return "error", f"{type(e).__name__}: {e}"


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ImportError(
            "the 'ray' pool backend needs Ray: pip install 'agentrl[ray]' (or pip install ray)"
        ) from e
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    return ray


def _ray_actors(
    env_name: str, env_kwargs: dict[str, Any], n: int, memory_limit_mb: int | None, options: dict[str, Any]
) -> list[Any]:
    ray = _ray()
    actor = ray.remote(max_restarts=0, **options)(_RayEnv)
    return [actor.remote(env_name, env_kwargs, memory_limit_mb) for _ in range(n)]


def _ray_kill(actor: Any) -> None:
    _ray().kill(actor)


def _ray_call(
    actors: list[Any], msgs: list[tuple[Any, ...]], timeout_s: float | None
) -> list[tuple[str, Any, bool]]:
    ray = _ray()
    refs = [a.call.remote(m) for a, m in zip(actors, msgs)]
    out = []
    for ref in refs:
        try:
            status, payload = ray.get(ref, timeout=timeout_s)
            out.append((status, payload, False))
        except Exception as e:
            out.append(("error", f"ray actor failed: {type(e).__name__}: {e}", True))
    return out


if __name__ == "__main__":
    _worker_main(Connection(int(sys.argv[1])))
