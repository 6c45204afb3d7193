"""Experts for SFT warm starts: one per env that has an oracle, as a per-episode policy.

``EXPERTS.get(env_name)`` gives an ``Expert``; after ``env.reset(...)``, ``expert.start(env, task_id)``
returns the episode's policy ``(obs, info) -> ExpertTurn | None`` (None: the expert has nothing
more to play). A policy may be closed-loop (ALFWorld's handcoded expert reads the state after
every step) or replay a plan made at reset (maze, WebShop, search, tools, BFCL). ``env_kwargs``
are constructor arguments the env needs for its expert (``expert_env`` adds them).

| env | expert |
| --- | --- |
| maze | ``maze.solve``: a shortest plan from the start |
| alfworld | alfworld's handcoded expert (``info["expert_action"]``, env made with ``expert=True``) |
| webshop, webshop-browser | ``webshop.agents.oracle_actions``: search the instruction (the listed search; the product's name where that misses it), pick its options, buy |
| search | ``search.oracle_actions``: one search per hop of the gold decomposition, then the answer |
| tools | each built-in task's ``solution`` turns as ``<tool_call>`` text, then its ``final`` answer |
| bfcl | BFCL's ground-truth calls, turn by turn (``ground_truth_actions``) |
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentrl.registry import Registry

__all__ = ["EXPERTS", "EpisodeExpert", "Expert", "ExpertTurn", "expert_env", "get_expert", "replay"]


@dataclass(frozen=True)
class ExpertTurn:
    """What the expert does in one turn: the env action and, optionally, a short thought."""

    action: str
    think: str | None = None


EpisodeExpert = Callable[[str, dict[str, Any]], ExpertTurn | None]


@dataclass(frozen=True)
class Expert:
    """An env's expert: ``start(env, task_id)`` (called right after reset) -> the episode's policy.

    ``subgoal``: the one subgoal HiPER demonstrations name for the whole episode.
    """

    start: Callable[[Any, str], EpisodeExpert]
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    subgoal: str = "complete the task"


EXPERTS: Registry[Expert] = Registry("expert")


def get_expert(env_name: str) -> Expert:
    """The expert of ``env_name``; an env without one is a ValueError naming the envs that have one."""
    if env_name not in EXPERTS:
        raise ValueError(
            f"env {env_name!r} has no expert for SFT demonstrations; envs with an expert: {', '.join(EXPERTS.names())}"
        )
    return EXPERTS.get(env_name)


def expert_env(env_name: str, env_kwargs: Mapping[str, Any], env: Any = None) -> Any:
    """An env that can play its expert: ``env`` itself when the expert needs no extra constructor
    arguments, else a new one made with them (ALFWorld: ``expert=True``)."""
    from agentrl.envs import make

    extra = get_expert(env_name).env_kwargs
    if env is not None and all(env_kwargs.get(k) == v for k, v in extra.items()):
        return env
    return make(env_name, **{**env_kwargs, **extra})


def replay(turns: Iterable[ExpertTurn | str]) -> EpisodeExpert:
    """An episode policy that plays a fixed plan, one turn per call, then stops (None)."""
    queue = iter([t if isinstance(t, ExpertTurn) else ExpertTurn(t) for t in turns])
    return lambda obs, info: next(queue, None)


# ----------------------------------------------------------------------------- experts


def _maze(env: Any, task_id: str) -> EpisodeExpert:
    from agentrl.envs.maze import solve

    plan = solve(env.layout_for(task_id))
    if plan is None:
        raise ValueError(f"maze task {task_id!r} has no solution")
    return replay(plan)


def _alfworld(env: Any, task_id: str) -> EpisodeExpert:
    if not getattr(env, "has_expert", False):
        raise ValueError("the ALFWorld expert needs an env made with expert=True (env.kwargs.expert: true)")

    def act(obs: str, info: dict[str, Any]) -> ExpertTurn | None:
        action = info.get("expert_action")
        return ExpertTurn(action) if action else None  # None: the handcoded expert gave up

    return act


def _webshop(env: Any, task_id: str) -> EpisodeExpert:
    from agentrl.envs.webshop.agents import oracle_actions

    return replay(oracle_actions(env.shop, int(task_id), search="instruction"))


_THOUGHT = re.compile(r"\s*<think>(.*?)</think>(.*)", re.DOTALL)


def _search(env: Any, task_id: str) -> EpisodeExpert:
    """Search-R1 responses split into the thought and the ``<search>``/``<answer>`` action."""
    from agentrl.envs.search import oracle_actions

    turns = []
    for text in oracle_actions(env.question):
        m = _THOUGHT.fullmatch(text)
        turns.append(ExpertTurn(m.group(2).strip(), think=m.group(1).strip()) if m else ExpertTurn(text))
    return replay(turns)


def _tools(env: Any, task_id: str) -> EpisodeExpert:
    from agentrl.envs.tools import solution_action

    task = env.task
    if not task.final and not task.solution:
        raise ValueError(f"tool task {task_id!r} has no expert solution")
    return replay([solution_action(turn) for turn in task.solution] + [task.final])


def _bfcl(env: Any, task_id: str) -> EpisodeExpert:
    from agentrl.envs.tools.bfcl import ground_truth_actions

    return replay([action for turn in ground_truth_actions(env.entry) for action in turn])


EXPERTS.register("maze", Expert(_maze, subgoal="reach the goal"))
EXPERTS.register("alfworld", Expert(_alfworld, env_kwargs={"expert": True}))
EXPERTS.register("webshop", Expert(_webshop, subgoal="buy the product"))
EXPERTS.register("webshop-browser", Expert(_webshop, subgoal="buy the product"))
EXPERTS.register("search", Expert(_search, subgoal="find the answer"))
EXPERTS.register("tools", Expert(_tools))
EXPERTS.register("bfcl", Expert(_bfcl))
