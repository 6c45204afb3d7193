"""ToolEnv: tools + tasks + a reward function = an environment.

Each turn the model either calls tools (``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
text, or OpenAI JSON: one call, a list, or ``{"tool_calls": [...]}``) or writes a final answer
(text without a call), which ends the episode and is scored by the task's reward function. Tool
results come back as Qwen/Hermes ``<tool_response>`` blocks (and as OpenAI ``tool`` messages in
``info["tool_messages"]``). An unknown tool, bad JSON, wrong argument types, an exception inside
the tool or a call that runs past ``call_timeout`` becomes an error message to the model with
``valid=False``; the env never raises on model output.

Per-episode state: ``ToolTask.state`` is deep-copied at every reset and passed to tools that have
a ``state`` parameter, so the same task and seed replay identically. Each call works on a copy of
the state that is kept only when the call returns: a call that raises or times out changes
nothing (a timed-out call keeps running in a daemon thread, on its own discarded copy).
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agentrl.agents.formats import ToolCall, parse_tool_calls
from agentrl.envs.base import AgentEnv
from agentrl.envs.tools.schema import Tool, ToolArgumentError, tool

__all__ = [
    "CallRecord",
    "Episode",
    "Reward",
    "Solution",
    "ToolEnv",
    "ToolTask",
    "clip_result",
    "format_tool_response",
    "index_tasks",
    "solution_action",
]

MAX_CALLS_PER_TURN = 8
Solution = tuple[tuple[tuple[str, Mapping[str, Any]], ...], ...]  # turns of (tool name, arguments) calls


@dataclass(frozen=True)
class ToolTask:
    """One task: the user's request, what the reward needs (``answer``), the initial ``state``, and an
    expert ``solution`` (a list of turns, each a list of ``(tool name, arguments)``) with its ``final`` answer."""

    id: str
    prompt: str
    answer: Any = None
    state: Any = None
    solution: Solution = ()
    final: str = ""


@dataclass(frozen=True)
class CallRecord:
    name: str
    arguments: Mapping[str, Any]
    ok: bool
    content: str  # the result (as text) or the error message


@dataclass
class Episode:
    """What the reward function sees: the final ``answer`` text, the episode ``state``, every call."""

    answer: str | None = None
    state: Any = None
    calls: list[CallRecord] = field(default_factory=list)


Reward = Callable[[ToolTask, Episode], float]


def format_tool_response(name: str, content: str) -> str:
    return (
        "<tool_response>"
        + json.dumps({"name": name, "content": content}, ensure_ascii=False)
        + "</tool_response>"
    )


def solution_action(calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """A turn of expert calls written as ``<tool_call>`` text."""
    return "\n".join(
        "<tool_call>" + json.dumps({"name": n, "arguments": dict(a)}, ensure_ascii=False) + "</tool_call>"
        for n, a in calls
    )


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(value)


def index_tasks(tasks: Sequence[ToolTask]) -> dict[str, ToolTask]:
    """Tasks by id, checked: ToolTask objects, unique ids, at least one."""
    out: dict[str, ToolTask] = {}
    for task in tasks:
        if not isinstance(task, ToolTask):
            raise TypeError(f"tasks must be ToolTask objects, got {type(task).__name__}")
        if task.id in out:
            raise ValueError(f"duplicate task id {task.id!r}")
        out[task.id] = task
    if not out:
        raise ValueError("ToolEnv needs at least one task")
    return out


def clip_result(text: str, limit: int) -> str:
    """A tool result cut to ``limit`` characters, saying how long it was."""
    return text if len(text) <= limit else text[:limit] + f"... [truncated, {len(text)} characters]"


def _run_with_timeout(fn: Callable[[], Any], timeout: float | None) -> tuple[bool, Any]:
    """(finished, result or exception); the call runs in a daemon thread so a hung tool cannot block us."""
    if timeout is None:
        try:
            return True, fn()
        except Exception as e:
            return True, e
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["value"] = e

    worker = threading.Thread(target=target, daemon=True, name="agentrl-tool-call")
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return False, None
    return True, box["value"]


class ToolEnv(AgentEnv):
    """An env from tools, tasks and a reward: ``ToolEnv(tools=[add, mul], tasks=[...], reward=fn)``."""

    snapshot_fields: ClassVar[tuple[str, ...]] = ("task", "episode", "_t", "_done", "_last_obs")
    snapshot_shared = ("task",)  # read-only task data

    def __init__(
        self,
        tools: Sequence[Tool | Callable[..., Any]],
        tasks: Sequence[ToolTask],
        reward: Reward,
        *,
        max_turns: int = 8,
        call_timeout: float | None = 5.0,
        max_result_chars: int = 4000,
        success_threshold: float = 1.0,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(render_mode=render_mode)
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        if call_timeout is not None and call_timeout <= 0:
            raise ValueError(f"call_timeout must be > 0 seconds or None, got {call_timeout}")
        if not callable(reward):
            raise TypeError(
                f"reward must be a function (task, episode) -> float, got {type(reward).__name__}"
            )
        self.tools: dict[str, Tool] = {}
        for t in tools:
            t = t if isinstance(t, Tool) else tool(t)
            if t.name in self.tools:
                raise ValueError(f"two tools are named {t.name!r}")
            self.tools[t.name] = t
        if not self.tools:
            raise ValueError("ToolEnv needs at least one tool")
        self.tasks = index_tasks(tasks)
        self.reward_fn = reward
        self.max_turns, self.call_timeout, self.max_result_chars = max_turns, call_timeout, max_result_chars
        self.success_threshold = success_threshold
        self.schemas = [t.schema for t in self.tools.values()]
        self.task: ToolTask | None = None
        self.episode = Episode()
        self._t = 0
        self._done = True

    def task_ids(self) -> Sequence[str]:
        return list(self.tasks)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        task_id = (options or {}).get("task_id")
        ids = list(self.tasks)
        if task_id is None:
            task_id = ids[int(self.np_random.integers(len(ids)))]
        if task_id not in self.tasks:
            raise ValueError(f"unknown task_id {task_id!r}; e.g. {ids[:3]}")
        self.task = self.tasks[task_id]
        self.episode = Episode(state=copy.deepcopy(self.task.state))
        self._t, self._done = 0, False
        self._last_obs = self.task.prompt
        # ``task``: the request, which step-wise prompts keep in view after the first observation scrolls out
        return self._last_obs, {
            "state_key": f"{task_id}\n{self._last_obs}",
            "task_id": task_id,
            "tools": self.schemas,
            "task": self.task.prompt,
        }

    def _call(self, call: ToolCall) -> CallRecord:
        t = self.tools.get(call.name)
        if t is None:
            return CallRecord(
                call.name,
                call.arguments,
                False,
                f"Error: unknown tool {call.name!r}; available tools: {sorted(self.tools)}",
            )
        try:
            t.check_arguments(call.arguments)
        except ToolArgumentError as e:
            return CallRecord(call.name, call.arguments, False, f"Error: {e}")
        work = copy.deepcopy(self.episode.state) if t.wants_state else None
        finished, value = _run_with_timeout(lambda: t.invoke(call.arguments, work), self.call_timeout)
        if not finished:
            return CallRecord(
                call.name,
                call.arguments,
                False,
                f"Error: tool {call.name!r} did not return within {self.call_timeout} s",
            )
        if isinstance(value, BaseException):
            return CallRecord(
                call.name,
                call.arguments,
                False,
                f"Error: tool {call.name!r} raised {type(value).__name__}: {value}",
            )
        if t.wants_state:
            self.episode.state = work  # only a call that returned changes the state
        return CallRecord(
            call.name, call.arguments, True, clip_result(_as_text(value), self.max_result_chars)
        )

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.task is None or self._done:
            raise RuntimeError("the episode is over or not started: call reset() before step()")
        parsed = parse_tool_calls(action) if isinstance(action, str) else None
        self._t += 1
        reward, terminated, turn_reward = 0.0, False, 0.0
        info: dict[str, Any] = {"task_id": self.task.id, "tool_call": False}
        if parsed is None or not parsed.valid:
            reason = (
                parsed.reason
                if parsed is not None
                else f"the action must be text, got {type(action).__name__}"
            )
            obs = f"Error: could not read your tool call: {reason}"
            info.update(valid=False, success=False, reason=reason)
        elif parsed.tool_calls:
            calls = parsed.tool_calls
            records = [self._call(c) for c in calls[:MAX_CALLS_PER_TURN]]
            if len(calls) > MAX_CALLS_PER_TURN:
                records.append(
                    CallRecord(
                        "",
                        {},
                        False,
                        f"Error: at most {MAX_CALLS_PER_TURN} calls per turn; "
                        f"{len(calls) - MAX_CALLS_PER_TURN} were not run",
                    )
                )
            self.episode.calls.extend(records)
            obs = "\n".join(format_tool_response(r.name, r.content) for r in records)
            ok = all(r.ok for r in records)
            turn_reward = float(ok)
            info.update(
                valid=ok,
                success=False,
                tool_call=True,
                tool_messages=[
                    {
                        "role": "tool",
                        "tool_call_id": c.id or f"call_{i}",
                        "name": r.name,
                        "content": r.content,
                    }
                    for i, (c, r) in enumerate(zip(calls, records))
                ],
            )
        else:
            self.episode.answer = parsed.action
            reward = float(self.reward_fn(self.task, self.episode))
            terminated = True
            obs = "Episode finished."
            info.update(valid=True, success=reward >= self.success_threshold, answer=parsed.action)
        truncated = not terminated and self._t >= self.max_turns
        self._done = terminated or truncated
        self._last_obs = obs
        info.update(state_key=f"{self.task.id}\n{obs}", turn_reward=turn_reward)
        return obs, reward, terminated, truncated, info
