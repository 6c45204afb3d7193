"""Starts that are not the initial state, and hints: two uses of an env's expert during RL.

**Expert-prefix starts** (``rollout.resets``). DR-PO (Chang et al. 2024, arXiv 2404.08495; code
Cornell-RL/drpo, ``src/tldr/drpo.py``) resets generation to a prefix of a good response and masks
the roll-in tokens out of the policy loss (``pg_loss * ~rollin_mask``); RLGF (arXiv 2306.11816)
rolls in with a guide policy and out with the learner. Here the guide is the env's expert
(``agentrl.trainers.experts``): in each group the last ``round(share * group_size)`` episodes start
where the expert stood after its first k actions on the group's task and seed (the env is resumed
by replaying them, ``agentrl.envs.branching``), k drawn per group, seeded by (seed, iteration, group):
``positions: uniform`` draws k from 1..L-1 (L: the expert's length, and k < max_turns so the policy
plays at least one turn), ``fixed`` draws it from ``turns``. The expert's turns are shown in the
prompts' history but are not steps of the episode: they are never rows, never trained (DR-PO's mask,
without the forward pass it would cost) and never counted in the episode's return. [inferred] The
reset episodes of a group share one k and form their own group (``group: own``), so a group baseline
(GRPO, GiGPO's anchors) compares episodes from one start state; ``group: shared`` puts them in the
task's group instead (one baseline for all starts, as DR-PO's single PPO batch has). Only tasks the
expert wins get resets (DR-PO resets to preferred responses).

**Hints** (``rollout.hints``), after Scaf-GRPO (arXiv 2510.19807; code not in the store): a task
whose normal episodes all failed ``after_failures`` times in a row (its iterations, counted per task)
gets an in-prompt hint in ``episodes`` of its group's episodes, which stay in the task's group (the
paper swaps the hinted rollout into the group for the GRPO advantage); the hint escalates one tier
per further failed iteration, and disappears once an episode of the task succeeds (with the hint or
without). Tiers, least to most concrete, from the expert's winning trajectory on the group's task
and seed: ``goal`` (the goal and the expert's number of actions), ``plan`` (the expert's actions
without their order), ``actions`` (its first ``actions`` actions). [inferred: the tier contents;
the paper's tiers are knowledge, planning and solution steps.] The per-task counters are trainer
state, saved in checkpoints (``state.json``).

Neither ever reaches evaluation (``agentrl.evaluation`` plays initial states without hints), and
metrics keep them apart: ``success_rate`` and ``reward_mean`` are over the episodes with neither,
``reset_success_rate`` and ``hint_success_rate`` over the others.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agentrl.agents import get_format, parse_response
from agentrl.envs.branching import BranchPoint, Prefix
from agentrl.rollout import ExpertStart, Hint
from agentrl.seeding import derive_rng
from agentrl.trainers.experts import ExpertTurn, get_expert
from agentrl.trainers.sft import render_response
from agentrl.types import Trajectory, TrajectoryGroup

__all__ = [
    "HINT_TIERS",
    "ExpertRun",
    "Starts",
    "hint_text",
    "plain_episodes",
    "play_expert",
    "reset_episode_count",
]

HINT_TIERS = ("goal", "plan", "actions")
STATE_KEY = "hint_failures"  # the key of the per-task counters in a checkpoint's state.json


@dataclass(frozen=True)
class ExpertRun:
    """The expert's episode on a task from ``reset(seed)``: ``observations[k]``/``infos[k]`` after k
    actions (``len(actions) + 1`` of each), each action and its rendered response."""

    task_id: str
    seed: int | None
    actions: tuple[str, ...]
    responses: tuple[str, ...]
    observations: tuple[str, ...]
    infos: tuple[dict[str, Any], ...]
    success: bool

    def start(
        self, k: int, episodes: int, *, own_group: bool, resume: str, subgoal: str | None
    ) -> ExpertStart:
        """Episodes starting after the expert's first ``k`` actions."""
        point = BranchPoint(
            Prefix(self.seed, {"task_id": self.task_id}, self.actions[:k]),
            self.observations[k],
            self.infos[k],
        )
        turns = tuple(zip(self.observations[:k], self.actions[:k], self.responses[:k]))
        return ExpertStart(point, turns, self.infos[0], episodes, own_group, resume, subgoal)


def play_expert(
    env_name: str, env: Any, task_id: str, seed: int | None, response_format: str, max_turns: int
) -> ExpertRun:
    """Play the env's expert on ``task_id`` from ``reset(seed)`` for at most ``max_turns`` actions."""
    expert = get_expert(env_name)
    obs, info = env.reset(seed=seed, options={"task_id": task_id})
    observations, infos = [str(obs)], [dict(info or {})]
    actions: list[str] = []
    responses: list[str] = []
    policy = expert.start(env, task_id)
    done = False
    while not done and len(actions) < max_turns:
        turn = policy(observations[-1], infos[-1])
        if turn is None:
            break
        turn = turn if isinstance(turn, ExpertTurn) else ExpertTurn(str(turn))
        response = render_response(turn.action, response_format, len(actions), expert.subgoal, turn.think)
        action = parse_response(response, response_format).action or turn.action
        obs, _reward, terminated, truncated, info = env.step(action)
        actions.append(action)
        responses.append(response)
        observations.append(str(obs))
        infos.append(dict(info or {}))
        done = bool(terminated or truncated)
    return ExpertRun(
        str(task_id),
        seed,
        tuple(actions),
        tuple(responses),
        tuple(observations),
        tuple(infos),
        bool(infos[-1].get("success", False)) and bool(actions),
    )


def hint_text(kind: str, run: ExpertRun, goal: str, actions: int = 2) -> str:
    """The hint of tier ``kind`` (``HINT_TIERS``) from the expert's run."""
    if kind == "goal":
        return f"{goal}; an expert needs {len(run.actions)} action(s)."
    if kind == "plan":
        counts = Counter(run.actions)
        listed = ", ".join(f"{a} (x{n})" if n > 1 else a for a, n in sorted(counts.items()))
        return f"an expert's actions, in no particular order: {listed}."
    if kind == "actions":
        first = run.actions[:actions]
        return f"an expert's first {len(first)} action(s): {'; '.join(first)}."
    raise ValueError(f"unknown hint tier {kind!r}; allowed: {', '.join(HINT_TIERS)}")


def reset_episode_count(share: float, group_size: int) -> int:
    """Episodes per group that start on the expert's trajectory: ``share * group_size`` rounded
    half up, leaving at least one normal start."""
    return max(0, min(group_size - 1, math.floor(share * group_size + 0.5)))


def plain_episodes(trajs: Iterable[Trajectory]) -> list[Trajectory]:
    """The episodes that started from the initial state without a hint (the ones ``success_rate`` counts)."""
    return [t for t in trajs if "expert_turns" not in t.info and "hint_tier" not in t.info]


def _rate(values: Sequence[bool]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


class Starts:
    """The trainer's expert starts and hints: ``plan`` before each rollout, ``observe`` after it.

    ``resets``/``hints``: the config sections (``rollout.resets``, ``rollout.hints``), each used when
    enabled. ``env`` plays the expert (``expert_env``: ALFWorld's needs ``expert=True``)."""

    def __init__(
        self,
        env_name: str,
        env: Any,
        *,
        seed: int,
        group_size: int,
        max_turns: int,
        response_format: str,
        resets: Any = None,
        hints: Any = None,
    ) -> None:
        self.env_name, self.env, self.seed = env_name, env, seed
        self.group_size, self.max_turns, self.fmt = group_size, max_turns, response_format
        self.resets = resets if resets is not None and resets.enabled else None
        self.hints = hints if hints is not None and hints.enabled else None
        self.expert = get_expert(env_name)
        self.failures: dict[
            str, int
        ] = {}  # per task: its iterations in a row with every normal episode failed

    # ------------------------------------------------------------------ hint state
    def tier(self, task_id: str) -> int:
        """The hint tier a task gets now (0: none)."""
        if self.hints is None:
            return 0
        f = self.failures.get(task_id, 0) - self.hints.after_failures
        return 0 if f < 0 else min(len(self.hints.tiers), f + 1)

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (JSON)."""
        return {STATE_KEY: dict(sorted(self.failures.items()))} if self.hints is not None else {}

    def load(self, state: dict[str, Any]) -> None:
        """Take a checkpoint's state back; a checkpoint of a run with hints must hold the counters."""
        if self.hints is None:
            return
        if STATE_KEY not in state:
            raise ValueError(
                "the checkpoint has no hint counters but rollout.hints is enabled; resume with the config "
                "the run was started with, or use a new run directory"
            )
        self.failures = {str(k): int(v) for k, v in state[STATE_KEY].items()}

    # ------------------------------------------------------------------ per iteration
    def plan(
        self, it: int, tasks: Sequence[str], seeds: Sequence[int], groups: Sequence[int]
    ) -> tuple[list[ExpertStart | None] | None, list[Hint | None] | None]:
        """Per group (``groups``: the groups' indices in the iteration, which seed their draws): its
        expert start and its hint, or None."""
        starts: list[ExpertStart | None] = []
        hints: list[Hint | None] = []
        runs: dict[tuple[str, int], ExpertRun] = {}

        def run_of(task: str, seed: int) -> ExpertRun:
            if (task, seed) not in runs:
                runs[task, seed] = play_expert(self.env_name, self.env, task, seed, self.fmt, self.max_turns)
            return runs[task, seed]

        subgoal = self.expert.subgoal if get_format(self.fmt).subgoals else None
        for task, seed, g in zip(tasks, seeds, groups):
            start = None
            n_reset = 0
            if self.resets is not None:
                run = run_of(task, seed)
                k = self._position(run, derive_rng(self.seed, it, 2, g))
                if k is not None:
                    n_reset = reset_episode_count(self.resets.share, self.group_size)
                    start = run.start(
                        k,
                        n_reset,
                        own_group=self.resets.group == "own",
                        resume=self.resets.resume,
                        subgoal=subgoal,
                    )
            starts.append(start)
            hint = None
            tier = self.tier(task)
            if tier > 0 and self.hints is not None:
                run = run_of(task, seed)
                if run.success:
                    text = hint_text(self.hints.tiers[tier - 1], run, self.expert.subgoal, self.hints.actions)
                    hint = Hint(text, tier, min(self.hints.episodes, self.group_size - n_reset))
            hints.append(hint)
        return (starts if self.resets is not None else None), (hints if self.hints is not None else None)

    def _position(self, run: ExpertRun, rng: np.random.Generator) -> int | None:
        """The expert turn k the group's reset episodes start after (None: no reset for this group)."""
        assert self.resets is not None
        last = min(len(run.actions) - 1, self.max_turns - 1)
        if not run.success or last < 1:
            return None
        if self.resets.positions == "uniform":
            return int(rng.integers(1, last + 1))
        valid = [t for t in self.resets.turns if 1 <= t <= last]
        return int(rng.choice(valid)) if valid else None

    def observe(self, groups: Sequence[TrajectoryGroup]) -> dict[str, Any]:
        """Update the per-task failure counters from the iteration's groups; the metrics of the
        reset and hinted episodes."""
        trajs = [t for g in groups for t in g]
        record: dict[str, Any] = {}
        if self.resets is not None:
            reset = [t for t in trajs if "expert_turns" in t.info]
            record["reset_episodes"] = len(reset)
            record["reset_success_rate"] = _rate([t.success for t in reset])
            record["reset_turns_mean"] = (
                float(np.mean([t.info["expert_turns"] for t in reset])) if reset else 0.0
            )
        if self.hints is not None:
            hinted = [t for t in trajs if "hint_tier" in t.info]
            record["hinted_episodes"] = len(hinted)
            record["hint_success_rate"] = _rate([t.success for t in hinted])
            record["hinted_tasks"] = len({t.task_id for t in hinted})
            solved: dict[str, bool] = {}
            for t in trajs:
                if "expert_turns" not in t.info:
                    solved[t.task_id] = solved.get(t.task_id, False) or t.success
            for task, won in solved.items():
                if won:
                    self.failures.pop(task, None)
                else:
                    self.failures[task] = self.failures.get(task, 0) + 1
            record["stuck_tasks"] = sum(self.tier(t) > 0 for t in self.failures)
        return record
