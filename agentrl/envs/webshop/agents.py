"""Reference agents for WebShop: an oracle (upper bound, and expert data) and a random agent (floor)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from agentrl.envs.base import AgentEnv
from agentrl.envs.webshop.loader import Shop
from agentrl.envs.webshop.pages import PRODUCT_WINDOW
from agentrl.envs.webshop.text_env import instruction_keywords


def oracle_actions(shop: Shop, goal_idx: int, search: str = "title") -> list[str]:
    """Buy the goal product with the goal options: search, page to it, pick options, buy.

    ``search="title"`` searches the product's own name, which always finds it. ``"instruction"``
    searches the instruction's keywords (the search the env lists among the admissible actions, so
    a policy that chooses among them can copy these demonstrations) and falls back to the title
    when the product is not among those hits.
    """
    if search not in ("title", "instruction"):
        raise ValueError(f"search must be 'title' or 'instruction', got {search!r}")
    goal = shop.goals[goal_idx]
    asin = goal["asin"]
    product = shop.by_asin[asin]
    keywords = ""
    hits: tuple[str, ...] = ()
    if search == "instruction":
        keywords = instruction_keywords(goal["instruction_text"])
        hits = shop.search.search(keywords)
    if asin not in hits:  # the title search, or the fallback when the listed search misses it
        keywords = product["Title"].lower().strip()
        hits = shop.search.search(keywords)
    if asin not in hits:
        raise LookupError(
            f"goal {goal_idx}: product {asin} is not among the top {len(hits)} hits for its own name"
        )
    actions = [f"search[{keywords}]"]
    actions += ["click[next >]"] * (hits.index(asin) // PRODUCT_WINDOW)
    actions.append(f"click[{asin.lower()}]")
    for value in (
        goal["goal_options"] if isinstance(goal["goal_options"], list) else goal["goal_options"].values()
    ):
        if any(value in values for values in product["options"].values()):
            actions.append(f"click[{value}]")
    actions.append("click[buy now]")
    return actions


Policy = Callable[[str, dict[str, Any]], str]


def random_policy(seed: int) -> Policy:
    """Uniform over the admissible actions (the listed search included)."""
    rng = np.random.default_rng(seed)

    def act(obs: str, info: dict[str, Any]) -> str:
        acts = info["admissible_actions"]
        return str(acts[int(rng.integers(len(acts)))])

    return act


def run_episode(env: AgentEnv, policy: Policy, task_id: str, seed: int = 0) -> dict[str, Any]:
    """Play one episode; returns reward, success, steps and the actions taken."""
    obs, info = env.reset(seed=seed, options={"task_id": task_id})
    total, actions, success = 0.0, [], False
    while True:
        action = policy(obs, info)
        actions.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        success = success or bool(info["success"])
        if terminated or truncated:
            return {"reward": total, "success": success, "steps": len(actions), "actions": actions}


def scripted_policy(actions: list[str]) -> Policy:
    """Replays a fixed action list (e.g. ``oracle_actions``)."""
    it = iter(actions)
    return lambda obs, info: next(it, "click[buy now]")
