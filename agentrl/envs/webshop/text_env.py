"""WebShopEnv: the WebShop task in the original "text" observation format.

Observation: the page's visible strings joined by " [SEP] " (``observation="text"``, the default), or
the original's "text_rich" format (``observation="text_rich"``: buttons, options and product ids
marked, the selected options and visited products marked as clicked; ``Page.rich_text``). The
"text" format does not show which options are selected, so two steps on one product page read
alike; "text_rich" tells them apart. Actions: ``search[keywords]`` (only
where the search box is shown) and ``click[label]``. ``info["admissible_actions"]`` lists every
click and one search action whose keywords are the instruction (any other keywords are valid
too). Reward comes once, at ``click[buy now]`` (the original ``get_reward``); success = reward 1.
``reward_config`` (a ``RewardConfig`` or a mapping of its fields) changes how the reward is computed;
the default is the original's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from agentrl.envs.base import AgentEnv
from agentrl.envs.webshop.loader import Shop, load_shop, pick_goal
from agentrl.envs.webshop.pages import Page, PageMachine, Session
from agentrl.envs.webshop.reward import RewardConfig

PRICE_PHRASE = ", and price lower than"
DEFAULT_MAX_STEPS = 15
OBSERVATION_MODES = ("text", "text_rich")


def instruction_keywords(instruction: str) -> str:
    """The instruction without its price bound: the search listed among the admissible actions."""
    return instruction.split(PRICE_PHRASE)[0].strip()


def shop_from_args(data_dir: str | None, num_products: int | None, seed: int, goals: str) -> Shop:
    """The user's original files when ``data_dir`` (or $WEBSHOP_DATA) is set, else the generated catalogue."""
    data_dir = data_dir if data_dir is not None else os.environ.get("WEBSHOP_DATA") or None
    return load_shop(data_dir, num_products, seed if data_dir is None else 0, goals)


class WebShopEnv(AgentEnv):
    """Text WebShop (``make("webshop", split="test"|"eval"|"train")``)."""

    snapshot_fields = ("session", "_page", "_t", "_last_obs")

    def __init__(
        self,
        split: str = "test",
        *,
        data_dir: str | None = None,
        num_products: int | None = None,
        seed: int = 0,
        goals: str = "human",
        max_steps: int = DEFAULT_MAX_STEPS,
        reward_config: RewardConfig | Mapping[str, Any] | None = None,
        observation: str = "text",
        render_mode: str | None = None,
    ) -> None:
        super().__init__(render_mode=render_mode)
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if observation not in OBSERVATION_MODES:
            raise ValueError(f"observation must be one of {list(OBSERVATION_MODES)}, got {observation!r}")
        self.observation = observation
        self.shop = shop_from_args(data_dir, num_products, seed, goals)
        self.machine = PageMachine(self.shop, reward_config)
        self.split = split
        self.max_steps = max_steps
        self._goal_ids = self.shop.split_indices(split)
        self.session: Session | None = None
        self._page: Page | None = None
        self._t = 0

    def task_ids(self) -> Sequence[str]:
        return [str(i) for i in self._goal_ids]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        idx = pick_goal(self._goal_ids, self.split, (options or {}).get("task_id"), self.np_random)
        self.session = self.machine.new_session(idx)
        self._t = 0
        obs, info = self._observe()
        info.update(task_id=str(idx), instruction=self.session.goal["instruction_text"])
        return obs, info

    def _observe(self) -> tuple[str, dict[str, Any]]:
        assert self.session is not None
        self._page = self.machine.render(self.session)
        obs = self._page.text() if self.observation == "text" else self._page.rich_text(self.session.visited)
        self._last_obs = obs
        info = {
            "state_key": self.machine.state_key(self.session, self._page),
            "admissible_actions": []
            if self.session.done
            else self._page.admissible(instruction_keywords(self.session.goal["instruction_text"])),
        }
        return obs, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.session is None or self._page is None:
            raise RuntimeError("WebShopEnv.step() called before reset()")
        result = self.machine.step(self.session, action, self._page)
        self._t += 1
        obs, info = self._observe()
        reward = float(result.reward)
        success = bool(result.valid and result.done and math.isclose(self.session.reward, 1.0))
        truncated = bool(not result.done and self._t >= self.max_steps)
        info.update(valid=bool(result.valid), success=success, turn_reward=None)
        if result.done and result.valid:
            info["reward_info"] = dict(self.session.reward_info)
        return obs, reward, bool(self.session.done), truncated, info
