"""alfworld's handcoded expert, with the ``move``/``put`` fix, as an oracle policy.

Since alfworld 0.4.0 the put command reads ``move X to Y``, but the expert's state tracking
(``BasePolicy.update_state_tracking``) still looks for "put", so it never empties its inventory
and fails pick-two tasks about half the time. The fix rewrites the last action from ``move`` to
``put`` before the tracker sees it, per policy instance; site-packages is untouched. The expert's
random choices run on its own seeded generator, so a seed fixes its trajectory.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import alfworld.gen.constants as constants
from alfworld.agents.expert import HandCodedAgentFailed, HandCodedAgentTimeout, HandCodedTWAgent

from agentrl.types import Step, Trajectory


class ExpertGaveUp(RuntimeError):
    """The handcoded expert timed out or ran out of subgoals."""


def _tracker_with_move_fix(track: Callable[[Any, str], None]) -> Callable[[Any, str], None]:
    def update_state_tracking(game_state: Any, last_action: str) -> None:
        if last_action.startswith("move "):
            last_action = "put " + last_action[len("move ") :]
        track(game_state, last_action)

    return update_state_tracking


class Expert:
    """Handcoded ALFWorld expert: ``reset(traj_data, intro)``, then ``act(state, last_action)``.

    ``state`` needs ``feedback``, ``admissible_commands`` and ``facts`` (TextWorld propositions
    with display names), which ALFWorldEnv provides when made with ``expert=True``.
    """

    def __init__(self, max_steps: int = 150, seed: int = 0) -> None:
        self._agent = HandCodedTWAgent(max_steps=max_steps)
        self._rng_state = random.Random(seed).getstate()

    def reset(self, traj_data: Mapping[str, Any], intro: str, seed: int | None = None) -> None:
        params = {**traj_data["pddl_params"], "task_type": traj_data["task_type"]}
        params = {k: v.lower() if v in constants.OBJECTS else v for k, v in params.items()}
        agent = self._agent
        agent.task_params = params
        agent.policy = agent.get_task_policy(params)(params, max_steps=agent.max_steps)
        agent.policy.update_state_tracking = _tracker_with_move_fix(agent.policy.update_state_tracking)
        if seed is not None:
            self._rng_state = random.Random(seed).getstate()
        agent.observe(intro)

    def act(self, state: Mapping[str, Any], last_action: str) -> str:
        """The next command; ``last_action`` is the previous command ("" right after reset: "look")."""
        if not last_action:
            return "look"
        outer = random.getstate()
        random.setstate(self._rng_state)
        try:
            action = self._agent.act(state, 0, state.get("won", False), last_action)
        except (HandCodedAgentTimeout, HandCodedAgentFailed) as e:
            raise ExpertGaveUp(f"the handcoded expert gave up ({type(e).__name__})") from e
        finally:
            self._rng_state = random.getstate()
            random.setstate(outer)
        # alfworld's AlfredExpert wrapper does the same with a command the game would not take
        return action if action in state["admissible_commands"] else "look"


def solve(game_file: str, max_steps: int = 50, seed: int = 0, engine: Any = None) -> tuple[bool, list[str]]:
    """Play the expert on a game (real engine): (won within ``max_steps``, commands played).

    ``engine``: a ``GameEngine(facts=True)`` to reuse across games (else one is made and closed).
    """
    from agentrl.envs.alfworld.engine import GameEngine

    with open(os.path.join(os.path.dirname(game_file), "traj_data.json"), encoding="utf-8") as f:
        traj = json.load(f)
    env = engine if engine is not None else GameEngine(facts=True)
    try:
        env.load(game_file)
        state = env.reset()
        expert = Expert(seed=seed)
        expert.reset(traj, state["feedback"])
        actions: list[str] = []
        last = ""
        for _ in range(max_steps):
            last = expert.act(state, last)
            actions.append(last)
            state = env.step(last)
            if state["won"]:
                return True, actions
        return False, actions
    finally:
        if engine is None:
            env.close()


def expert_trajectories(env: Any, task_ids: Sequence[str] | None = None, seed: int = 0) -> list[Trajectory]:
    """One expert episode per task on an ``ALFWorldEnv(expert=True)``: oracle runs and SFT data.

    Each step holds the observation the expert acted on, its command (as ``action`` and
    ``response``), the env's reward and validity, and ``info["task_type"]``.
    """
    if not getattr(env, "has_expert", False):
        raise ValueError(
            "expert_trajectories needs an env made with expert=True, e.g. make('alfworld', expert=True)"
        )
    out = []
    for task_id in task_ids if task_ids is not None else env.task_ids():
        obs, info = env.reset(seed=seed, options={"task_id": task_id})
        steps: list[Step] = []
        terminated = truncated = False
        while not (terminated or truncated):
            action = info["expert_action"] or "look"  # the expert gave up: let the episode run out
            next_obs, reward, terminated, truncated, next_info = env.step(action)
            steps.append(
                Step(
                    obs=obs,
                    response=action,
                    action=action,
                    reward=float(reward),
                    valid=bool(next_info["valid"]),
                    state_key=info["state_key"],
                    info={"task_type": info["task_type"]},
                )
            )
            obs, info = next_obs, next_info
        out.append(
            Trajectory(
                task_id=task_id,
                group_id=task_id,
                traj_id=f"{task_id}#expert{seed}",
                steps=steps,
                terminated=terminated,
                truncated=truncated,
                success=bool(info["success"]),
                info={"task_type": info["task_type"], "task": info["task"], "policy": "handcoded-expert"},
            )
        )
    return out
