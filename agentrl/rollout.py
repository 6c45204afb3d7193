"""Rollout: G groups x N episodes against a batch of envs with one policy.

Group members reset with the same task id and seed, so they start from an identical state
(GiGPO, HGPO, SALT and GRPO rely on it). Envs are stepped in lockstep: every turn, one batched
policy call answers all running episodes, and a free env starts the next pending episode. Each
step keeps its prompt, prompt and response token ids and sampling log-probs, so the trainer can
recompute log-probs from ids. An env or policy call that raises ends only its own episode, which
is recorded as truncated with ``info["error"]``; the batch goes on.

``envs`` is either a list of in-process envs or any object with the env pool's batched
``reset(indices, seeds, options)`` / ``step(actions, indices)`` methods and ``num_envs``.

Starts that are not the initial state (``ExpertStart``: some of a group's episodes start where an
expert stood after its first turns) and in-prompt hints (``Hint``) are chosen by the trainer
(``agentrl.trainers.starts``); rollout plays them and marks their trajectories (``info["expert_turns"]``,
``info["hint_tier"]``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from agentrl.agents import ChatPrompt, StepPrompt, candidate_responses, get_format, parse_response
from agentrl.envs.base import EnvSnapshot
from agentrl.envs.branching import BranchError, BranchPoint, Prefix, resume
from agentrl.policies.base import Generation, Messages, Policy, SamplingParams
from agentrl.seeding import call_seed
from agentrl.types import Step, Trajectory, TrajectoryGroup

__all__ = [
    "ACTION_CHOICES",
    "Branching",
    "Episode",
    "ExpertStart",
    "Hint",
    "ListEnvs",
    "PromptBuilder",
    "as_env_batch",
    "check_action_choice",
    "head_entropy",
    "hinted_task",
    "rollout",
]

PromptBuilder = StepPrompt | ChatPrompt
Outcome = tuple[Any, ...]  # an env's (obs, info) or (obs, reward, terminated, truncated, info)


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class ListEnvs:
    """A plain list of in-process envs behind the pool's batched interface; errors are returned,
    not raised, one per env."""

    def __init__(self, envs: Sequence[Any]) -> None:
        if not envs:
            raise ValueError("need at least one env")
        self.envs = list(envs)
        self.num_envs = len(self.envs)

    def reset_each(
        self, indices: Sequence[int], seeds: Sequence[int | None], options: Sequence[dict[str, Any]]
    ) -> list[Outcome | BaseException]:
        out: list[Outcome | BaseException] = []
        for i, s, o in zip(indices, seeds, options):
            try:
                out.append(tuple(self.envs[i].reset(seed=s, options=o)))
            except Exception as e:
                out.append(e)
        return out

    def step_each(self, actions: Sequence[str], indices: Sequence[int]) -> list[Outcome | BaseException]:
        out: list[Outcome | BaseException] = []
        for i, a in zip(indices, actions):
            try:
                out.append(tuple(self.envs[i].step(a)))
            except Exception as e:
                out.append(e)
        return out

    @property
    def can_snapshot(self) -> bool:
        return all(getattr(env, "can_snapshot", False) for env in self.envs)

    def snapshot_each(self, indices: Sequence[int]) -> list[EnvSnapshot | None]:
        out: list[EnvSnapshot | None] = []
        for i in indices:
            try:
                out.append(self.envs[i].snapshot())
            except Exception:  # the branch point resumes by replay instead
                out.append(None)
        return out

    def resume_each(
        self, indices: Sequence[int], points: Sequence[BranchPoint], mode: str
    ) -> list[Outcome | BaseException]:
        out: list[Outcome | BaseException] = []
        for i, point in zip(indices, points):
            try:
                obs, info, _ = resume(self.envs[i], point, cast(Any, mode))
                out.append((obs, info))
            except Exception as e:
                out.append(e)
        return out


class _PoolEnvs:
    """An object with batched ``reset``/``step`` (the env pool). A call that raises for the whole
    batch is retried env by env, so one failing env cannot take the others with it."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.num_envs = int(pool.num_envs)

    def _each(
        self, call: Callable[..., list[Any]], n: int, *args_per_env: Sequence[Any]
    ) -> list[Outcome | BaseException]:
        try:
            return [tuple(r) for r in call(*args_per_env)]
        except Exception:
            out: list[Outcome | BaseException] = []
            for k in range(n):
                try:
                    out.append(tuple(call(*[[a[k]] for a in args_per_env])[0]))
                except Exception as e:
                    out.append(e)
            return out

    def reset_each(
        self, indices: Sequence[int], seeds: Sequence[int | None], options: Sequence[dict[str, Any]]
    ) -> list[Outcome | BaseException]:
        return self._each(
            lambda i, s, o: self.pool.reset(indices=i, seeds=s, options=o),
            len(indices),
            indices,
            seeds,
            options,
        )

    def step_each(self, actions: Sequence[str], indices: Sequence[int]) -> list[Outcome | BaseException]:
        return self._each(lambda a, i: self.pool.step(a, indices=i), len(indices), actions, indices)

    @property
    def can_snapshot(self) -> bool:
        try:
            return bool(getattr(self.pool, "can_snapshot", False))
        except Exception:
            return False

    def snapshot_each(self, indices: Sequence[int]) -> list[EnvSnapshot | None]:
        try:
            return list(self.pool.snapshot(indices=list(indices)))
        except Exception:  # the branch points resume by replay instead
            return [None] * len(indices)

    def resume_each(
        self, indices: Sequence[int], points: Sequence[BranchPoint], mode: str
    ) -> list[Outcome | BaseException]:
        """Restore a snapshot where there is one (and ``mode`` allows), else replay the prefix
        through the pool: the same reset, then its actions, checked against the recorded observation."""
        out: list[Outcome | BaseException] = []
        for i, point in zip(indices, points):
            try:
                if point.snapshot is not None and mode != "replay":
                    self.pool.restore([point.snapshot], indices=[i])
                    out.append((point.obs, copy.deepcopy(point.info)))
                    continue
                if mode == "restore":
                    raise BranchError("cannot restore: the branch point has no snapshot")
                ((obs, info),) = self.pool.reset(
                    indices=[i], seeds=[point.prefix.seed], options=[copy.deepcopy(point.prefix.options)]
                )
                for action in point.prefix.actions:
                    obs, _reward, _terminated, _truncated, info = tuple(
                        self.pool.step([action], indices=[i])[0]
                    )
                if obs != point.obs:
                    raise BranchError(
                        f"replaying {point.turn} action(s) did not reach the recorded observation"
                    )
                out.append((obs, info))
            except Exception as e:
                out.append(e)
        return out


def as_env_batch(envs: Any) -> ListEnvs | _PoolEnvs:
    """Wrap a list of envs, or a pool with batched reset/step, for ``rollout``."""
    if isinstance(envs, (ListEnvs, _PoolEnvs)):
        return envs
    if isinstance(envs, (list, tuple)):
        return ListEnvs(envs)
    if all(hasattr(envs, a) for a in ("reset", "step", "num_envs")):
        return _PoolEnvs(envs)
    raise TypeError(
        f"envs must be a list of envs or a pool with num_envs and batched reset/step, got {type(envs).__name__}"
    )


@dataclass(frozen=True)
class ExpertStart:
    """Where some of a group's episodes start: the env after an expert's first ``len(turns)`` actions
    on the group's task and seed (DR-PO's dataset reset, RLGF's roll-in with the expert as guide).

    ``point`` is resumed like a branch point (``resume``: replay the expert's actions after the
    seeded reset, or ``auto``: restore its snapshot where there is one). ``turns``: each expert turn's
    (observation, action, response as the response format writes it), shown in the prompts' history
    but never steps of the episode, so never trained: DR-PO keeps its roll-in tokens in the sequence
    and masks them out of the policy loss. ``reset_info``: the reset's info (task text, tools).
    ``episodes`` of the group's ``group_size`` start here, the last ones; ``own_group``: they form the
    group ``<group id>r`` (one start state, so a group baseline compares like with like), else they
    join the task's group."""

    point: BranchPoint
    turns: tuple[tuple[str, str, str], ...]
    reset_info: dict[str, Any]
    episodes: int
    own_group: bool = True
    resume: str = "replay"
    subgoal: str | None = None  # the current subgoal there (response formats with subgoals)


@dataclass(frozen=True)
class Hint:
    """An in-prompt hint (Scaf-GRPO) for the first ``episodes`` episodes of a group; ``tier`` 1 is
    the least concrete. The hint is added to the task text of every prompt of those episodes."""

    text: str
    tier: int
    episodes: int


def hinted_task(task: str, hint: str) -> str:
    """The task text a hinted episode's prompts show."""
    return f"{task}\nHint: {hint}" if task else f"Hint: {hint}"


@dataclass
class Episode:
    """One running episode: what the env said last and what has been done so far.

    ``task`` and ``tools`` come from the reset info (``info["task"]``, ``info["tools"]``); a step
    info with ``tools`` replaces them (BFCL adds functions mid-episode).
    """

    task_id: str
    group_id: str
    traj_id: str
    seed: int | None
    obs: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    task: str = ""
    tools: list[dict[str, Any]] | None = None
    steps: list[Step] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    subgoal: str | None = None
    terminated: bool = False
    truncated: bool = False
    success: bool = False
    error: str | None = None
    # tree rollouts: every turn's env info and snapshot are kept (branch points), and a branch
    # starts from its parent's point instead of a reset
    env_infos: list[dict[str, Any]] | None = None
    snapshots: dict[int, EnvSnapshot] = field(default_factory=dict)
    start_point: BranchPoint | None = None
    parent_id: str | None = None
    branch_turn: int | None = None
    # an expert-prefix start: the expert's turns before the start, (observation, action, response)
    # each; shown in the prompts' history, never steps of this episode (never trained)
    context: tuple[tuple[str, str, str], ...] = ()
    hint: Hint | None = None
    value_only: bool | None = None  # chain rollouts: True for a continuation that only estimates a value

    def finish_with_error(self, error: str) -> None:
        self.error, self.truncated = error, True

    def start(self, obs: Any, info: dict[str, Any] | None) -> None:
        """Take the env's reset answer (task and tools from its info)."""
        self.obs, self.info = str(obs), dict(info or {})
        self.task = str(self.info.get("task", self.task))  # an expert-prefix start keeps its reset's
        if self.info.get("tools") is not None:
            self.tools = list(self.info["tools"])
        self.observations.append(self.obs)
        if self.env_infos is not None:
            self.env_infos.append(self.info)

    def branch_point(self, turn: int) -> BranchPoint:
        """Where this episode stood after ``turn`` actions (its snapshot there, when one was taken)."""
        assert self.env_infos is not None, "branch points need an episode that kept its env infos"
        prefix = Prefix(self.seed, {"task_id": self.task_id}, tuple(s.action for s in self.steps[:turn]))
        return BranchPoint(prefix, self.observations[turn], self.env_infos[turn], self.snapshots.get(turn))

    def fork(self, turn: int, traj_id: str) -> Episode:
        """A new episode that continues this one after ``turn`` actions: its first steps are copies
        (``info["copy_of"]`` names the sampled step), its env is resumed from ``start_point``."""
        assert self.env_infos is not None and 0 < turn < len(self.steps) + 1
        child = Episode(self.task_id, self.group_id, traj_id, self.seed, env_infos=[], hint=self.hint)
        child.start(self.observations[0], self.env_infos[0])
        for k in range(turn):
            step = copy.deepcopy(self.steps[k])
            step.info["copy_of"] = self.steps[k].info.get("copy_of", f"{self.traj_id}#{k}")
            child.add_step(step)
            child.observe(self.observations[k + 1], self.env_infos[k + 1])
        child.start_point = self.branch_point(turn)
        child.parent_id, child.branch_turn = self.traj_id, turn
        return child

    def prompt(self, builder: PromptBuilder) -> Messages:
        """The messages ``builder`` gives for the next turn (SFT demonstrations are built with it too)."""
        actions = self.info.get("admissible_actions")
        task = self.task if self.hint is None else hinted_task(self.task, self.hint.text)
        if isinstance(builder, ChatPrompt):
            observations = [c[0] for c in self.context] + self.observations
            responses = [c[2] for c in self.context] + [s.response for s in self.steps]
            return builder.build(task, observations, responses, actions, tools=self.tools)
        history = [(c[0], c[1]) for c in self.context] + [(s.obs, s.action or s.response) for s in self.steps]
        return builder.build(task, self.obs, history, actions, subgoal=self.subgoal, tools=self.tools)

    def add_step(self, step: Step) -> None:
        """Append a turn; a HiPER turn's ``info["subgoal"]`` becomes the current subgoal (if not empty)."""
        self.steps.append(step)
        if "subgoal" in step.info:
            self.subgoal = step.info["subgoal"] or self.subgoal

    def observe(self, obs: Any, info: dict[str, Any]) -> None:
        """Take the env's answer to a step: the next observation and info (its ``tools`` replace them)."""
        self.obs, self.info = str(obs), info
        if info.get("tools") is not None:
            self.tools = list(info["tools"])
        self.observations.append(self.obs)
        if self.env_infos is not None:
            self.env_infos.append(info)

    def trajectory(self) -> Trajectory:
        info: dict[str, Any] = {"seed": self.seed}
        if self.error is not None:
            info["error"] = self.error
        if self.context:
            info["expert_turns"] = len(self.context)
        if self.hint is not None:
            info["hint_tier"], info["hint"] = self.hint.tier, self.hint.text
        if self.value_only is not None:
            info["value_only"] = self.value_only
        return Trajectory(
            task_id=self.task_id,
            group_id=self.group_id,
            traj_id=self.traj_id,
            steps=self.steps,
            terminated=self.terminated,
            truncated=self.truncated,
            success=self.success,
            info=info,
            parent_id=self.parent_id,
            branch_turn=self.branch_turn,
        )


def _generate(
    policy: Policy, prompts: list[Messages], params: SamplingParams
) -> list[Generation | BaseException]:
    """One batched call; if it raises, each prompt alone, so only the failing ones are lost."""
    try:
        out = policy.generate(prompts, params)
        if len(out) != len(prompts):
            raise RuntimeError(f"policy returned {len(out)} generations for {len(prompts)} prompts")
        return list(out)
    except Exception:
        results: list[Generation | BaseException] = []
        for p in prompts:
            try:
                results.append(policy.generate([p], params)[0])
            except Exception as e:
                results.append(e)
        return results


ACTION_CHOICES = ("generate", "admissible")


def check_action_choice(action_choice: str, policy: Any, fmt: str) -> bool:
    """Whether ``action_choice`` picks among admissible actions; a clear error when it cannot."""
    if action_choice not in ACTION_CHOICES:
        raise ValueError(f"action_choice must be one of {', '.join(ACTION_CHOICES)}, got {action_choice!r}")
    if action_choice == "generate":
        return False
    spec = get_format(fmt)
    if spec.render is None or spec.subgoals:
        raise ValueError(
            f"action_choice 'admissible' needs a response format that writes one action as a response "
            f"(think_action, tool_call); {fmt!r} cannot"
        )
    if policy is not None and not callable(getattr(policy, "choose", None)):
        raise ValueError(
            f"action_choice 'admissible' needs a policy that scores candidate responses (hf); "
            f"{type(policy).__name__} has no choose()"
        )
    return True


def _choose(
    policy: Any, prompts: list[Messages], candidates: list[list[str]], params: SamplingParams
) -> list[Generation | BaseException]:
    """``policy.choose`` in one batched call; if it raises, each prompt alone (as ``_generate``)."""
    try:
        out = policy.choose(prompts, candidates, params)
        if len(out) != len(prompts):
            raise RuntimeError(f"policy returned {len(out)} choices for {len(prompts)} prompts")
        return list(out)
    except Exception:
        results: list[Generation | BaseException] = []
        for p, c in zip(prompts, candidates):
            try:
                results.append(policy.choose([p], [c], params)[0])
            except Exception as e:
                results.append(e)
        return results


def _respond(
    policy: Policy,
    episodes: list[Episode],
    messages: list[Messages | BaseException],
    ok: list[int],
    params: SamplingParams,
    fmt: str,
    choose: bool,
) -> dict[int, Generation | BaseException]:
    """The policy's response to each prompt ``ok`` indexes. ``choose``: where the env lists
    admissible actions, pick one of them, rendered in the response format (``Policy.choose``);
    elsewhere (an empty list, e.g. WebShop's search page) generate."""
    can_render = get_format(fmt).render is not None
    picking = [k for k in ok if choose and episodes[k].info.get("admissible_actions")] if can_render else []
    chosen = set(picking)
    writing = [k for k in ok if k not in chosen]
    out: dict[int, Generation | BaseException] = {}
    if writing:
        out.update(zip(writing, _generate(policy, [cast(Messages, messages[k]) for k in writing], params)))
    if picking:
        candidates = [
            candidate_responses(fmt, episodes[k].info["admissible_actions"], len(episodes[k].steps))
            for k in picking
        ]
        out.update(
            zip(picking, _choose(policy, [cast(Messages, messages[k]) for k in picking], candidates, params))
        )
    return out


def _record_step(
    ep: Episode,
    messages: Messages,
    gen: Generation,
    fmt: str,
    result: Outcome | BaseException,
    max_turns: int,
) -> None:
    parsed = parse_response(gen.text, fmt)
    info: dict[str, Any] = {
        **parsed.step_info(ep.subgoal),
        "format_valid": parsed.valid,
        "finish_reason": gen.finish_reason,
    }
    if parsed.reason:
        info["parse_error"] = parsed.reason
    if gen.top_logprobs is not None:  # asked for by entropy-triggered branching
        info["head_entropy"] = head_entropy(gen.logprobs, gen.top_logprobs)
    if "choice" in gen.info:  # picked among the admissible actions (rollout's action_choice)
        info.update({k: gen.info[k] for k in ("choice", "choices", "choice_logprob")})
    if get_format(fmt).subgoals:  # a malformed turn keeps the current subgoal: every row has both columns
        info.setdefault("switch", "KEEP")
        info.setdefault("subgoal", ep.subgoal or "")
    step = Step(
        obs=ep.obs,
        response=gen.text,
        action=parsed.action,
        valid=parsed.valid,
        state_key=ep.info.get("state_key"),
        prompt=messages,
        prompt_ids=list(gen.prompt_ids),
        response_ids=list(gen.response_ids),
        response_logprobs=[float(x) for x in gen.logprobs],
        info=info,
    )
    ep.add_step(step)
    if isinstance(result, BaseException):
        info["error"] = _error_text(result)
        step.valid = False
        ep.finish_with_error(info["error"])
        return
    obs, reward, terminated, truncated, env_info = result
    env_info = dict(env_info or {})
    step.reward = float(reward)
    step.valid = bool(parsed.valid and env_info.get("valid", True))
    if env_info.get("turn_reward") is not None:
        step.turn_reward = float(env_info["turn_reward"])
    if env_info.get("tool_call") is not None:  # the env ran the call and returned its result
        info["tool_call"] = bool(env_info["tool_call"])
    ep.success = bool(env_info.get("success", False))
    if env_info.get("error"):  # a pool reports a crashed worker this way
        info["error"] = str(env_info["error"])
        ep.finish_with_error(info["error"])
        return
    ep.observe(obs, env_info)
    ep.terminated, ep.truncated = (
        bool(terminated),
        bool(truncated) or (not terminated and len(ep.context) + len(ep.steps) >= max_turns),
    )


@dataclass(frozen=True)
class Branching:
    """Tree rollouts: the group's episodes (the roots) play first; then each root is continued
    from ``points`` of its turns by ``width`` new episodes each (branches), which resume the env at
    that turn (snapshot/restore where the env can, else replay; ``resume``) and copy the turns
    before it (``Step.info["copy_of"]``; trained once, see ``StepBatch.node``).

    at: "random" draws a root's branch turns uniformly from 1..len-1 (seeded), "fixed" uses ``turns``
    (those shorter than the root). ``budget``: env steps per task, roots included; branch points are
    taken in a random order while the branches' expected steps (the parent's steps after the point,
    per branch) fit in what the roots left, so the sampled total can differ from it a little
    (``None``: every drawn point).

    at: "entropy" branches where the sampler was unsure, by ``rule`` (``entropy_tree``): ``arpo``
    (Dong et al. 2025) or ``aepo`` (its entropy-balanced successor); ``trajectories`` episodes per
    task in all (the roots are the group's episodes, ARPO's initial rollouts), up to ``width``
    branches per episode and turn, ``entropy_weight`` and ``threshold`` in the rule, ``penalty``
    AEPO's damping per consecutive branching round, ``vocab_size`` the entropy's normaliser
    (default: the policy's ``vocab_size``); ``dynamic_roots``: AEPO's number of roots per task from
    two probe episodes (``dynamic_roots``), instead of the group size.

    at: "chain" estimates values for SPO-chain (``credit.spo_chain``): every root is continued from
    each boundary turn ``interval``, 2 ``interval``, ... before its end by ``width`` episodes, whose
    mean outcome is the value of the state there. These continuations only estimate values
    (``Trajectory.info["value_only"]``; the trainer leaves their own turns out of the loss, as
    VinePPO trains only its main trajectories) unless ``train_branches``, which trains them as
    ordinary leaves. ``budget`` drops boundaries as for "random" (a root's values are then missing
    there); ``points`` is not used.
    """

    width: int = 2
    points: int = 1
    at: str = "random"
    turns: tuple[int, ...] = ()
    budget: int | None = None
    resume: str = "auto"
    rule: str = "arpo"
    trajectories: int | None = None
    entropy_weight: float = 0.2
    threshold: float = 0.5
    penalty: float = 0.05
    vocab_size: int | None = None
    dynamic_roots: bool = False
    interval: int | None = None
    train_branches: bool = False

    def __post_init__(self) -> None:
        if self.width < 1 or self.points < 1:
            raise ValueError(f"branching width and points must be >= 1, got {self.width} and {self.points}")
        if self.at not in BRANCH_MODES:
            raise ValueError(
                f"branching 'at' must be 'random', 'fixed', 'entropy' or 'chain', got {self.at!r}"
            )
        if self.at == "chain" and (self.interval is None or self.interval < 1):
            raise ValueError(
                f"branching at chain needs interval >= 1: a value boundary every interval turns, got {self.interval!r}"
            )
        if self.at != "chain" and (self.interval is not None or self.train_branches):
            raise ValueError(
                "branching interval and train_branches are for at: chain (the other modes' branches are "
                f"always trained), got at: {self.at}"
            )
        if self.at == "fixed" and (not self.turns or min(self.turns) < 1):
            raise ValueError(f"branching at fixed turns needs turns >= 1, got {self.turns!r}")
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"branching budget must be >= 1 env step, got {self.budget}")
        if self.resume not in ("auto", "restore", "replay"):
            raise ValueError(f"branching resume must be auto, restore or replay, got {self.resume!r}")
        if self.rule not in ENTROPY_RULES:
            raise ValueError(f"branching rule must be one of {', '.join(ENTROPY_RULES)}, got {self.rule!r}")
        if self.at == "entropy":
            if self.trajectories is None or self.trajectories < 1:
                raise ValueError(
                    "branching at entropy needs trajectories >= 1: the episodes per task, roots included "
                    f"(ARPO's n), got {self.trajectories!r}"
                )
            if self.budget is not None:
                raise ValueError("branching at entropy budgets trajectories per task; leave budget unset")
        if not (0.0 <= self.threshold <= 1.0 and self.entropy_weight >= 0.0 and self.penalty >= 0.0):
            raise ValueError(
                "branching needs threshold in [0, 1], entropy_weight >= 0 and penalty >= 0, got "
                f"{self.threshold}, {self.entropy_weight}, {self.penalty}"
            )
        if self.dynamic_roots and self.at != "entropy":
            raise ValueError("branching dynamic_roots (AEPO's initial rollouts per task) needs at: entropy")
        if self.vocab_size is not None and self.vocab_size < 2:
            raise ValueError(f"branching vocab_size must be >= 2, got {self.vocab_size}")


BRANCH_MODES = ("random", "fixed", "entropy", "chain")
ENTROPY_RULES = ("arpo", "aepo")
AEPO_ROOT_TOKENS = 50  # AEPO's initial_entropy_tokens: the cap of the generation that measures H_root
HEAD_TOKENS = 20  # ARPO and AEPO measure a response's uncertainty over its first 20 tokens
TOP_LOGPROBS = 10  # ... from the 10 largest log-probs per token (vLLM's logprobs=10)


def head_entropy(
    logprobs: Sequence[float], top: Sequence[Sequence[float]], tokens: int = HEAD_TOKENS
) -> float:
    """ARPO's uncertainty of a response's start (unnormalised): over its first ``tokens`` tokens, the
    sum of ``-p log p`` over each token's top log-probs plus the sampled token's when it is not among
    them (what vLLM's ``logprobs=k`` returns, and the authors' ``_calc_entropy`` sums). A sampled
    token whose log-prob equals the k-th largest counts as among them."""
    total = 0.0
    for chosen, row in zip(logprobs[:tokens], top[:tokens]):
        values = list(row)
        if not values or chosen < values[-1]:
            values.append(chosen)
        total -= sum(math.exp(v) * v for v in values)
    return total


def _branch_points(
    roots: list[Episode], branching: Branching, rng: np.random.Generator
) -> list[tuple[Episode, int]]:
    """(root, turn) pairs to branch from, for one task's roots, within the budget."""
    candidates: list[tuple[Episode, int]] = []
    for ep in roots:
        if ep.error is not None or ep.env_infos is None or len(ep.steps) < 2:
            continue
        turns = np.arange(1, len(ep.steps))
        if branching.at == "chain":
            chosen = list(range(cast(int, branching.interval), len(ep.steps), cast(int, branching.interval)))
        elif branching.at == "fixed":
            chosen = [t for t in branching.turns if t < len(ep.steps)][: branching.points]
        else:
            chosen = sorted(rng.choice(turns, size=min(branching.points, turns.size), replace=False).tolist())
        candidates.extend((ep, int(t)) for t in chosen)
    if branching.budget is None:
        return candidates
    left = branching.budget - sum(len(ep.steps) for ep in roots)
    kept = []
    for k in rng.permutation(len(candidates)).tolist():
        ep, turn = candidates[k]
        cost = branching.width * (len(ep.steps) - turn)
        if cost <= left:
            kept.append(candidates[k])
            left -= cost
    return sorted(kept, key=lambda c: (c[0].traj_id, c[1]))


def entropy_tree(
    roots_of: list[list[Episode]],
    branching: Branching,
    rng: np.random.Generator,
    log_vocab: float,
    play: Callable[[list[Episode]], None],
) -> list[Episode]:
    """The episodes ARPO's or AEPO's entropy-triggered rollout adds to each task's played roots.

    Follows the authors' rollout (dongguanting/ARPO, ``vllm_rollout_with_tools.py``; AEPO's copy in
    the same repository), where every active episode of the batch takes one turn per round; an
    episode's turn j falls in round ``start + j``. After each round, per task, while it has fewer
    than ``trajectories`` episodes, each episode still running (in creation order) gets up to
    ``width`` branches (the authors' ``beam_size - 1``) that copy it so far and go on from its next
    turn. Each is drawn with u ~ U(0, 1) and dH = (H_now - H_init) / log |V|, H the ``head_entropy``
    of the turn just taken, H_init of the episode's first own turn (a branch: its first new one):
    ``arpo``: branch if clip(u - w dH, 0, 1) <= threshold; ``aepo``: if clip((u + w dH)(1 - penalty
    c), 0, 1) >= threshold, c the task's count of consecutive rounds that added episodes (reset by
    a round that added none to it, left alone by a round that added none anywhere). A task with no
    episode running but trajectories left gets one fresh episode per round. Branches may branch.

    Deviations, named: the rounds are replayed here wave by wave (the episodes a round adds play to
    their ends before the next round's decisions, which depend only on turns already taken, so the
    decisions have the authors' distribution); u comes from the seeded ``rng`` instead of Python's
    global ``random``; H_init is per episode of this rollout (the authors' dictionary is keyed by
    batch index and never cleared between batches). AEPO's dynamic count of initial rollouts is
    ``dynamic_roots`` (off: the roots are the group's episodes)."""
    n = cast(int, branching.trajectories)
    per_task = [list(roots) for roots in roots_of]
    start = {ep.traj_id: 0 for roots in roots_of for ep in roots}  # the round of an episode's turn 0
    consecutive = [0] * len(per_task)
    added: list[Episode] = []
    fresh = [0] * len(per_task)

    def entropy(ep: Episode, turn: int) -> float:
        value = ep.steps[turn].info.get("head_entropy")
        if value is None:
            raise ValueError(
                f"episode {ep.traj_id} turn {turn} has no head_entropy: branching at entropy needs a "
                "sampler that returns top log-probs (SamplingParams.top_logprobs), and generated responses"
            )
        return float(value) / log_vocab

    r = 0
    while any(start[ep.traj_id] + len(ep.steps) - 1 >= r for trajs in per_task for ep in trajs):
        new: list[Episode] = []
        origins: set[int] = set()
        for g, trajs in enumerate(per_task):
            active = []
            for ep in trajs:
                turn = r - start[ep.traj_id]
                own = ep.branch_turn or 0
                if ep.error is None and own <= turn < len(ep.steps) - 1:  # took its turn and goes on
                    active.append((ep, turn))
            left = n - len(trajs)
            made: list[Episode] = []
            for ep, turn in active if left > 0 else ():
                per_source = min(branching.width, left - len(made))
                if per_source <= 0:
                    break
                for j in range(per_source):
                    d_h = entropy(ep, turn) - entropy(ep, ep.branch_turn or 0)
                    u = float(rng.random())
                    if branching.rule == "arpo":
                        go = min(1.0, max(0.0, u - branching.entropy_weight * d_h)) <= branching.threshold
                    else:
                        damp = max(0.0, 1.0 - branching.penalty * consecutive[g])
                        p = min(1.0, max(0.0, (u + branching.entropy_weight * d_h) * damp))
                        go = p >= branching.threshold
                    if go:
                        child = ep.fork(turn + 1, f"{ep.traj_id}.b{turn + 1}-{j}")
                        start[child.traj_id] = start[ep.traj_id]
                        made.append(child)
                if len(made) >= left:
                    break
            if not active and left > 0:  # every episode of the task ended: one more from the start
                root = trajs[0]
                ep = Episode(
                    root.task_id, root.group_id, f"{root.group_id}-e{fresh[g]}", root.seed, env_infos=[]
                )
                fresh[g] += 1
                start[ep.traj_id] = r + 1
                made.append(ep)
            if made:
                origins.add(g)
                trajs.extend(made)
                new += made
        if new:
            for g in range(len(per_task)):
                consecutive[g] = consecutive[g] + 1 if g in origins else 0
            play(new)
            added += new
        r += 1
    return added


def dynamic_roots(
    probe: Callable[[list[Episode], int, SamplingParams], None],
    tasks: Sequence[str],
    seeds: Sequence[int],
    id_prefix: str,
    params: SamplingParams,
    max_turns: int,
    trajectories: int,
    log_vocab: float,
) -> list[int]:
    """AEPO's number of initial rollouts per task (``_calculate_initial_rollouts_dynamical`` in the
    authors' AEPO rollout): H_root, the head entropy of one response to the task's first prompt
    (at most 50 tokens), and H_high, the mean head entropy over the turns of one whole probe
    episode (H_root when it took none), both divided by log |V|; then
    ``clamp(int(n sigmoid(0.5 (H_root - H_high))) + 1, 1, n)``. The probes are not kept, as there."""
    heads = [
        Episode(str(t), f"{id_prefix}g{g}", f"{id_prefix}g{g}-head", seeds[g]) for g, t in enumerate(tasks)
    ]
    probe(heads, 1, dataclasses.replace(params, max_new_tokens=AEPO_ROOT_TOKENS))
    probes = [
        Episode(str(t), f"{id_prefix}g{g}", f"{id_prefix}g{g}-probe", seeds[g]) for g, t in enumerate(tasks)
    ]
    probe(probes, max_turns, params)
    out = []
    for head, ep in zip(heads, probes):
        h_root = float(head.steps[0].info.get("head_entropy", 0.0)) / log_vocab if head.steps else 0.0
        turns = [float(s.info.get("head_entropy", 0.0)) / log_vocab for s in ep.steps]
        h_high = sum(turns) / len(turns) if turns else h_root
        share = 1.0 / (1.0 + math.exp(-0.5 * (h_root - h_high)))
        out.append(max(1, min(int(trajectories * share) + 1, trajectories)))
    return out


def rollout(
    policy: Policy,
    envs: Any,
    tasks: Sequence[str],
    group_size: int,
    *,
    max_turns: int,
    params: SamplingParams,
    builder: PromptBuilder | None = None,
    seeds: Sequence[int] | None = None,
    id_prefix: str = "",
    branching: Branching | None = None,
    action_choice: str = "generate",
    starts: Sequence[ExpertStart | None] | None = None,
    hints: Sequence[Hint | None] | None = None,
) -> list[TrajectoryGroup]:
    """Play ``group_size`` episodes of each task in ``tasks`` (one group per entry).

    ``seeds[g]`` is the reset seed of every member of group g (default g). ``params.seed``, when
    set, is combined with a call counter, so a rollout is reproducible as a whole. Ids:
    ``{id_prefix}g{g}`` for groups, ``{id_prefix}g{g}-{n}`` for trajectories. The response format
    comes from ``builder`` (default ``StepPrompt()``); generation stops at the format's stop
    strings unless ``params.stop`` names others. ``branching``: tree rollouts (``Branching``); the
    branches join their root's group, with ids ``{parent}.b{turn}-{j}``. ``action_choice``:
    "generate" (write each response) or "admissible" (where the env lists admissible actions,
    pick one by its probability under the policy, ``Policy.choose``; see ``policies.choice``).

    ``starts[g]``: the last ``episodes`` of group g start on an expert's trajectory (``ExpertStart``;
    ids ``{id_prefix}g{g}r-{j}``); they are never roots of branches. ``hints[g]``: the group's first
    ``episodes`` episodes (of those that start normally) see the hint in their prompts.
    """
    if group_size < 1 or max_turns < 1:
        raise ValueError(f"group_size and max_turns must be >= 1, got {group_size} and {max_turns}")
    if not tasks:
        raise ValueError("tasks is empty: rollout needs at least one task (one group per task)")
    seeds = list(range(len(tasks))) if seeds is None else list(seeds)
    if len(seeds) != len(tasks):
        raise ValueError(f"need one seed per task, got {len(seeds)} seeds for {len(tasks)} tasks")
    builder = builder if builder is not None else StepPrompt()
    fmt = builder.response_format
    choose = check_action_choice(action_choice, policy, fmt)
    if not params.stop and get_format(fmt).stop:
        params = dataclasses.replace(params, stop=get_format(fmt).stop)
    for name, per_group in (("starts", starts), ("hints", hints)):
        if per_group is not None and len(per_group) != len(tasks):
            raise ValueError(
                f"need one entry of {name} per task, got {len(per_group)} for {len(tasks)} tasks"
            )
    log_vocab = 1.0
    if branching is not None and branching.at == "entropy":
        vocab = branching.vocab_size or getattr(policy, "vocab_size", None)
        if vocab is None:
            raise ValueError(
                f"branching at entropy normalises entropies by log(vocabulary size), and {type(policy).__name__} "
                "does not say its own: set the branching's vocab_size"
            )
        if choose:
            raise ValueError(
                "branching at entropy reads the sampler's entropies: it needs action_choice 'generate'"
            )
        log_vocab = math.log(vocab)
        params = dataclasses.replace(params, top_logprobs=max(params.top_logprobs, TOP_LOGPROBS))
    batch = as_env_batch(envs)
    snapshots = branching is not None and branching.resume != "replay" and batch.can_snapshot
    calls = 0
    n_roots = [group_size] * len(tasks)
    if branching is not None and branching.dynamic_roots:
        if starts is not None or hints is not None:
            raise ValueError("branching dynamic_roots does not go with expert starts or hints")

        def probe(eps: list[Episode], turns: int, probe_params: SamplingParams) -> None:
            nonlocal calls
            calls = _play(policy, batch, eps, builder, fmt, probe_params, turns, calls, False)

        n_roots = dynamic_roots(
            probe, tasks, seeds, id_prefix, params, max_turns, cast(int, branching.trajectories), log_vocab
        )
    episodes: list[Episode] = []
    roots_of: list[list[Episode]] = []  # per group, the episodes that start normally (branch roots)
    for g, task in enumerate(tasks):
        start = starts[g] if starts is not None else None
        hint = hints[g] if hints is not None else None
        n_normal = n_roots[g] - (start.episodes if start is not None else 0)
        if n_normal < 1 or (hint is not None and not 1 <= hint.episodes <= n_normal):
            raise ValueError(
                f"group {g}: {group_size - n_normal} expert starts and {hint.episodes if hint else 0} hinted "
                f"episodes do not fit a group of {group_size} (at least one normal start, hints among them)"
            )
        roots_of.append(
            [
                Episode(
                    str(task),
                    f"{id_prefix}g{g}",
                    f"{id_prefix}g{g}-{n}",
                    seeds[g],
                    env_infos=None if branching is None else [],
                    hint=hint if hint is not None and n < hint.episodes else None,
                )
                for n in range(n_normal)
            ]
        )
        episodes += roots_of[-1]
        if start is not None:
            episodes += [
                _expert_start(start, str(task), f"{id_prefix}g{g}", seeds[g], j)
                for j in range(start.episodes)
            ]
    reset_mode = next((s.resume for s in starts or () if s is not None), "replay")
    calls = _play(
        policy, batch, episodes, builder, fmt, params, max_turns, calls, snapshots, reset_mode, choose=choose
    )
    if branching is not None and branching.at == "entropy":

        def play(new: list[Episode]) -> None:
            nonlocal calls
            calls = _play(
                policy,
                batch,
                new,
                builder,
                fmt,
                params,
                max_turns,
                calls,
                snapshots,
                branching.resume,
                choose=choose,
            )

        rng = np.random.default_rng([params.seed or 0, *seeds])
        episodes += entropy_tree(roots_of, branching, rng, log_vocab, play)
    elif branching is not None:
        rng = np.random.default_rng([params.seed or 0, *seeds])
        branches = []
        for roots in roots_of:
            for parent, turn in _branch_points(roots, branching, rng):
                branches += [
                    parent.fork(turn, f"{parent.traj_id}.b{turn}-{j}") for j in range(branching.width)
                ]
        if branching.at == "chain":  # every trajectory says whether it is trained
            for ep in episodes:
                ep.value_only = False
            for ep in branches:
                ep.value_only = not branching.train_branches
        _play(
            policy,
            batch,
            branches,
            builder,
            fmt,
            params,
            max_turns,
            calls,
            False,
            branching.resume,
            choose=choose,
        )
        episodes += branches
    groups: dict[str, list[Trajectory]] = {}
    for ep in episodes:
        groups.setdefault(ep.group_id, []).append(ep.trajectory())
    return [
        TrajectoryGroup(task_id=trajs[0].task_id, group_id=gid, trajectories=trajs)
        for gid, trajs in groups.items()
    ]


def _expert_start(start: ExpertStart, task_id: str, group_id: str, seed: int | None, j: int) -> Episode:
    """The j-th episode of a group that starts at ``start`` (its env is resumed there by ``_play``)."""
    ep = Episode(
        task_id,
        f"{group_id}r" if start.own_group else group_id,
        f"{group_id}r-{j}",
        seed,
        start_point=start.point,
        context=start.turns,
        subgoal=start.subgoal,
    )
    ep.task = str(start.reset_info.get("task", ""))
    if start.reset_info.get("tools") is not None:
        ep.tools = list(start.reset_info["tools"])
    return ep


def _play(
    policy: Policy,
    batch: ListEnvs | _PoolEnvs,
    episodes: list[Episode],
    builder: PromptBuilder,
    fmt: str,
    params: SamplingParams,
    max_turns: int,
    calls: int,
    snapshots: bool,
    resume_mode: str = "auto",
    choose: bool = False,
) -> int:
    """Play the episodes to their ends in lockstep (a free env starts the next pending one: by a
    reset, or by resuming a branch's start point); returns the policy-call counter after them.
    ``snapshots``: keep every turn's env snapshot on the episode (branch points to restore)."""
    pending = deque(episodes)
    active: dict[int, Episode] = {}
    while pending or active:
        free = [i for i in range(batch.num_envs) if i not in active][: len(pending)]
        starting = [(i, pending.popleft()) for i in free]
        fresh = [(i, ep) for i, ep in starting if ep.start_point is None]
        resumed = [(i, ep) for i, ep in starting if ep.start_point is not None]
        results: list[Outcome | BaseException] = []
        if fresh:
            results += batch.reset_each(
                [i for i, _ in fresh],
                [ep.seed for _, ep in fresh],
                [{"task_id": ep.task_id} for _, ep in fresh],
            )
        if resumed:
            points = [cast(BranchPoint, ep.start_point) for _, ep in resumed]
            results += batch.resume_each([i for i, _ in resumed], points, resume_mode)
        for (i, ep), res in zip(fresh + resumed, results):
            if isinstance(res, BaseException):
                what = (
                    "reset"
                    if ep.start_point is None
                    else "resuming the expert's state"
                    if ep.context
                    else "resuming the branch point"
                )
                ep.finish_with_error(f"{what} failed: {_error_text(res)}")
                continue
            if not ep.observations:  # a branch was started by its fork
                ep.start(res[0], res[1])
            active[i] = ep
        if not active:
            continue
        slots = sorted(active)
        messages: list[Messages | BaseException] = []
        for i in slots:
            try:
                messages.append(active[i].prompt(builder))
            except Exception as e:
                messages.append(e)
        ok = [k for k, m in enumerate(messages) if not isinstance(m, BaseException)]
        call_params = (
            params if params.seed is None else dataclasses.replace(params, seed=call_seed(params.seed, calls))
        )
        calls += 1
        gen_of = _respond(policy, [active[i] for i in slots], messages, ok, call_params, fmt, choose)
        stepping: list[tuple[int, Generation, Messages]] = []
        for k, i in enumerate(slots):
            ep, msgs = active[i], messages[k]
            gen = msgs if isinstance(msgs, BaseException) else gen_of[k]  # a failed prompt fails the slot
            if isinstance(gen, BaseException):
                ep.finish_with_error(f"policy failed: {_error_text(gen)}")
                del active[i]
                continue
            stepping.append((i, gen, cast(Messages, msgs)))
        actions = [parse_response(gen.text, fmt).action for _, gen, _ in stepping]
        results = batch.step_each(actions, [i for i, _, _ in stepping]) if stepping else []
        for (i, gen, msgs), res in zip(stepping, results):
            ep = active[i]
            _record_step(ep, msgs, gen, fmt, res, max_turns)
            if ep.terminated or ep.truncated:
                del active[i]
        if snapshots:
            live = [i for i, _, _ in stepping if i in active]
            for i, snap in zip(live, batch.snapshot_each(live) if live else []):
                if snap is not None:
                    active[i].snapshots[len(active[i].steps)] = snap
    return calls
