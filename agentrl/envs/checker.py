"""check_env: gymnasium's own checker plus what agentrl relies on.

On top of ``gymnasium.utils.env_checker.check_env`` it verifies the info keys of the contract,
that a reset with the same task and seed replays an identical episode (group resets), and that a
nonsense action is a no-op with ``valid=False`` rather than an exception. It also resumes the
episode from its middle, by replay (every env that replays a seed) and by snapshot/restore (envs
that declare ``snapshot_fields``, into this instance and into ``other``), and checks that the rest
continues exactly as the original did: the observations, rewards, ends, infos and admissible
actions. It returns what the env supports (``EnvSupport``); ``group_resets=False`` checks an env
that cannot replay a seed (a remote env that ignores seeds) and reports ``group_resets`` instead
of failing on it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium.utils import env_checker as gym_checker
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.utils.passive_env_checker import env_reset_passive_checker, env_step_passive_checker

from agentrl.envs.base import RESET_INFO_KEYS, STEP_INFO_KEYS, AgentEnv
from agentrl.envs.branching import BranchError, BranchPoint, Prefix, resume, supported_modes

INVALID_ACTION = "\u00a7 definitely not an action \u00a7"


class EnvCheckError(AssertionError):
    """The env breaks the agentrl env contract; the message says which part."""


@dataclass(frozen=True)
class EnvSupport:
    """What ``check_env`` found the env to support, beyond the contract every env keeps."""

    group_resets: bool  # the same seed, task and actions replay the same episode (GRPO-style groups)
    admissible_actions: bool  # info["admissible_actions"] lists the legal actions
    turn_reward: bool  # info["turn_reward"] scores turns
    task_ids: bool  # task_ids() enumerates the tasks
    # how an episode resumes from a prefix: ("restore", "replay"), ("replay",), or () without group resets
    resume: tuple[str, ...] = ()


def _gym_checks_without_seeding(env: AgentEnv) -> None:
    """gymnasium's checker less its seed-determinism parts, for an env that cannot replay a seed."""
    gym_checker.check_action_space(env.action_space)
    gym_checker.check_observation_space(env.observation_space)
    gym_checker.check_reset_return_type(env)
    gym_checker.check_reset_options(env)
    env_reset_passive_checker(env)
    env_step_passive_checker(env, env.action_space.sample())


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise EnvCheckError(msg)


def _check_info(info: Any, keys: tuple[str, ...], where: str) -> None:
    _expect(isinstance(info, dict), f"{where}: info must be a dict, got {type(info).__name__}")
    missing = [k for k in keys if k not in info]
    _expect(not missing, f"{where}: info lacks required key(s) {missing}")
    _expect(isinstance(info["state_key"], str), f"{where}: info['state_key'] must be a str")
    if "valid" in info:
        _expect(isinstance(info["valid"], (bool, np.bool_)), f"{where}: info['valid'] must be a bool")
    if "success" in info:
        _expect(isinstance(info["success"], (bool, np.bool_)), f"{where}: info['success'] must be a bool")
    if "admissible_actions" in info:
        acts = info["admissible_actions"]
        _expect(
            isinstance(acts, list) and all(isinstance(a, str) for a in acts),
            f"{where}: info['admissible_actions'] must be a list of str",
        )
    if info.get("turn_reward") is not None:
        tr = info["turn_reward"]
        _expect(
            isinstance(tr, (int, float)) and math.isfinite(tr),
            f"{where}: info['turn_reward'] must be a finite number or None",
        )


def _episode(
    env: AgentEnv, seed: int, options: dict[str, Any], max_steps: int, actions: list[str] | None
) -> tuple[list[Any], list[str]]:
    """Play one episode; pick admissible actions with a seeded RNG unless ``actions`` is given."""
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed, options=copy.deepcopy(options))
    _check_info(info, RESET_INFO_KEYS, "reset")
    transcript: list[Any] = [(obs, info)]
    chosen: list[str] = []
    for t in range(max_steps):
        if actions is not None:
            if t >= len(actions):
                break
            action = actions[t]
        elif info.get("admissible_actions"):
            action = str(rng.choice(info["admissible_actions"]))
        else:
            action = env.action_space.sample()
        chosen.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        _check_info(info, STEP_INFO_KEYS, f"step {t}")
        _expect(isinstance(obs, str), f"step {t}: observation must be str, got {type(obs).__name__}")
        _expect(
            isinstance(reward, (int, float, np.floating)) and math.isfinite(float(reward)),
            f"step {t}: reward must be a finite number",
        )
        transcript.append((obs, float(reward), bool(terminated), bool(truncated), info))
        if terminated or truncated:
            break
    return transcript, chosen


def _continue(env: AgentEnv, actions: list[str]) -> list[Any]:
    out: list[Any] = []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        out.append((obs, float(reward), bool(terminated), bool(truncated), info))
    return out


def _check_resume(
    env: AgentEnv,
    other: AgentEnv | None,
    seed: int,
    options: dict[str, Any],
    first: list[Any],
    actions: list[str],
) -> None:
    """Resume at the episode's middle turn k by every mode the env offers; the rest must match."""
    k = len(actions) // 2
    prefix = Prefix(seed, copy.deepcopy(options), tuple(actions[:k]))
    obs_k, info_k = first[k][0], first[k][-1]
    rest = first[k + 1 :]
    point = BranchPoint(prefix, obs_k, copy.deepcopy(info_k))
    targets = [env] if other is None else [env, other]
    for target in targets:
        try:
            obs, info, _ = resume(target, point, "replay")
        except BranchError as e:
            raise EnvCheckError(f"resume by replay at turn {k}: {e}") from e
        _expect(obs == obs_k and info == info_k, f"resume by replay at turn {k}: a different state")
        _expect(_continue(target, actions[k:]) == rest, f"resume by replay at turn {k}: the episode diverged")
    if not env.can_snapshot:
        return
    env.reset(seed=seed, options=copy.deepcopy(options))
    _continue(env, actions[:k])
    try:
        point = BranchPoint(prefix, obs_k, copy.deepcopy(info_k), env.snapshot())
    except Exception as e:
        raise EnvCheckError(f"snapshot() at turn {k} raised {type(e).__name__}: {e}") from e
    _expect(_continue(env, actions[k:]) == rest, f"taking a snapshot at turn {k} changed the episode")
    for target in targets:  # twice into the same instance: a snapshot stays reusable
        for _ in range(2 if target is env else 1):
            resume(target, point, "restore")
            _expect(
                _continue(target, actions[k:]) == rest,
                f"resume by restore at turn {k}: the episode diverged from the original"
                + (" (on the other instance)" if target is not env else ""),
            )


def check_env(
    env: AgentEnv,
    *,
    seed: int = 0,
    task_id: str | None = None,
    max_steps: int = 30,
    other: AgentEnv | None = None,
    skip_gymnasium: bool = False,
    group_resets: bool = True,
) -> EnvSupport:
    """Raise EnvCheckError (an AssertionError) when ``env`` breaks the contract; else say what it supports.

    ``other``: a second instance of the same env; the replayed episode must be identical there
    too (what a pool of workers relies on), and a snapshot restores there too. ``group_resets=False``:
    a replay that diverges is reported (``EnvSupport.group_resets``) rather than an error.
    """
    _expect(isinstance(env, AgentEnv), f"env must be an agentrl AgentEnv, got {type(env).__name__}")
    if not skip_gymnasium:
        if group_resets:
            gym_check_env(env, skip_render_check=True, skip_close_check=True)
        else:
            _gym_checks_without_seeding(env)

    if task_id is None:
        ids = list(env.task_ids())
        task_id = ids[0] if ids else None
    options = {} if task_id is None else {"task_id": task_id}

    first, actions = _episode(env, seed, options, max_steps, None)
    again, _ = _episode(env, seed, options, max_steps, actions)
    replays = first == again
    _expect(
        replays or not group_resets,
        f"group reset is not deterministic: replaying seed={seed} task={task_id!r} "
        "with the same actions diverged",
    )
    if other is not None:
        theirs, _ = _episode(other, seed, options, max_steps, actions)
        replays = replays and first == theirs
        _expect(
            replays or not group_resets, "two instances of the env diverge on the same seed, task and actions"
        )
    if actions and replays:
        _check_resume(env, other, seed, options, first, actions)
    infos = [step[-1] for step in first]
    support = EnvSupport(
        group_resets=replays,
        admissible_actions=all("admissible_actions" in info for info in infos),
        turn_reward=any(info.get("turn_reward") is not None for info in infos[1:]),
        task_ids=task_id is not None,
        resume=tuple(supported_modes(env)) if replays else (),
    )

    env.reset(seed=seed, options=copy.deepcopy(options))
    try:
        _obs, _reward, _terminated, _truncated, info = env.step(INVALID_ACTION)
    except Exception as e:
        raise EnvCheckError(
            f"a nonsense action must be a no-op with valid=False, but step raised {type(e).__name__}: {e}"
        ) from e
    _check_info(info, STEP_INFO_KEYS, "invalid-action step")
    if "admissible_actions" in info:
        _expect(
            info["valid"] is False or info["valid"] == np.False_,
            "a nonsense action must give info['valid'] == False",
        )

    env.close()
    env.close()
    return support
