"""WebShopBrowserEnv: the WebShop site driven in a real Chromium through Playwright.

Same verbs as the text env, mapped to real input: ``search[kw]`` types into the search box and
presses the Search button, ``click[label]`` clicks the button, product link or option radio
carrying that label (the page's script submits an option when it is clicked). Observation = the
page's visible text nodes joined by " [SEP] " (what the text env shows); reward = the server's,
read from the done page. Validity is judged from the page
the browser shows, so an invalid action touches nothing. Clicks are real mouse events and the
search box is filled through Playwright's ``fill`` (input events, as typing fires); both skip the
actionability waits (``force=True``: the pages are static, nothing animates), ~30 ms an action.

Chromium is Debian's (``/usr/bin/chromium`` or $WEBSHOP_CHROMIUM) launched by ``executable_path``;
``playwright install`` is never needed. One browser per process, one context per env, reused
across resets. Without ``base_url`` the env serves the shop itself on a free 127.0.0.1 port,
scoring with ``reward_config``; with ``base_url`` the running server's reward counts.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from agentrl.envs.base import AgentEnv
from agentrl.envs.webshop.loader import pick_goal
from agentrl.envs.webshop.pages import parse_action, selected_key
from agentrl.envs.webshop.reward import RewardConfig
from agentrl.envs.webshop.text_env import DEFAULT_MAX_STEPS, instruction_keywords, shop_from_args

DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

# One pass over the DOM: visible text, clickable labels (buttons first, then options, as the text
# env orders them), the search box, selected options, and the outcome once bought.
OBSERVE_JS = """() => {
  const texts = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const tag = n.parentElement ? n.parentElement.tagName : '';
    if (tag === 'SCRIPT' || tag === 'STYLE' || tag === 'NOSCRIPT' || tag === 'TEMPLATE') continue;
    const t = n.textContent.trim();
    if (t) texts.push(t);
  }
  const labelled = Array.from(document.querySelectorAll('[data-label]'));
  const buttons = labelled.filter(e => e.tagName !== 'INPUT').map(e => e.dataset.label);
  const radios = labelled.filter(e => e.tagName === 'INPUT').map(e => e.dataset.label);
  const selected = Array.from(document.querySelectorAll('#selection span'))
    .map(e => [e.dataset.group, e.dataset.value]);
  const outcome = document.getElementById('outcome');
  return {text: texts.join(' [SEP] '), buttons, radios, selected,
          has_search: document.getElementById('search_input') !== null,
          done: outcome !== null, reward: outcome ? outcome.dataset.reward : null};
}"""


class _SharedBrowser:
    """One Playwright driver and Chromium per thread and executable, shared by that thread's envs."""

    _local = threading.local()

    @classmethod
    def _states(cls) -> dict[str, dict[str, Any]]:
        if not hasattr(cls._local, "states"):
            cls._local.states = {}
        return cls._local.states

    @classmethod
    def acquire(cls, executable_path: str) -> Any:
        states = cls._states()
        state = states.get(executable_path)
        if state is None:
            if not os.path.exists(executable_path):
                raise FileNotFoundError(
                    f"Chromium not found at {executable_path}; install Debian's package (apt-get install -y chromium) "
                    "or set WEBSHOP_CHROMIUM to its path"
                )
            from playwright.sync_api import sync_playwright

            driver = sync_playwright().start()
            try:
                browser = driver.chromium.launch(executable_path=executable_path, args=list(CHROMIUM_ARGS))
            except Exception:
                driver.stop()
                raise
            state = states[executable_path] = {"driver": driver, "browser": browser, "users": 0}
        state["users"] += 1
        return state["browser"]

    @classmethod
    def release(cls, executable_path: str) -> None:
        state = cls._states().get(executable_path)
        if state is None:
            return
        state["users"] -= 1
        if state["users"] <= 0:
            state["browser"].close()
            state["driver"].stop()
            del cls._states()[executable_path]


def css_string(text: str) -> str:
    """``text`` as a double-quoted CSS string (for attribute selectors)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):x} ")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


class WebShopBrowserEnv(AgentEnv):
    """WebShop in a real browser (``make("webshop-browser", split=...)``)."""

    def __init__(
        self,
        split: str = "test",
        *,
        base_url: str | None = None,
        data_dir: str | None = None,
        num_products: int | None = None,
        seed: int = 0,
        goals: str = "human",
        max_steps: int = DEFAULT_MAX_STEPS,
        executable_path: str | None = None,
        timeout_ms: int = 15_000,
        reward_config: RewardConfig | Mapping[str, Any] | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(render_mode=render_mode)
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.shop = shop_from_args(data_dir, num_products, seed, goals)
        self.split = split
        self.max_steps = max_steps
        self._goal_ids = self.shop.split_indices(split)
        self._server = None
        if base_url is None:
            from agentrl.envs.webshop.site import create_app
            from agentrl.serving import ServerThread

            app = create_app(
                split,
                data_dir=data_dir,
                num_products=num_products,
                seed=seed,
                goals=goals,
                reward_config=reward_config,
            )
            self._server = ServerThread(app).start()
            base_url = self._server.url
        self.base_url = base_url.rstrip("/")
        self._executable = executable_path or os.environ.get("WEBSHOP_CHROMIUM") or DEFAULT_CHROMIUM
        self._browser = _SharedBrowser.acquire(self._executable)
        self._context = self._browser.new_context(java_script_enabled=True)
        self._page = self._context.new_page()
        self._page.set_default_timeout(timeout_ms)
        self._view: dict[str, Any] = {}
        self._goal_idx: int | None = None
        self._t = 0
        self._closed = False

    def task_ids(self) -> Sequence[str]:
        return [str(i) for i in self._goal_ids]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        idx = pick_goal(self._goal_ids, self.split, (options or {}).get("task_id"), self.np_random)
        self._context.clear_cookies()
        self._page.goto(f"{self.base_url}/?goal={idx}")
        self._goal_idx, self._t = idx, 0
        obs, info = self._observe()
        info.update(task_id=str(idx), instruction=self.shop.goals[idx]["instruction_text"])
        return obs, info

    def _observe(self) -> tuple[str, dict[str, Any]]:
        self._view = self._page.evaluate(OBSERVE_JS)
        self._last_obs = self._view["text"]
        return self._last_obs, self._info()

    def _info(self) -> dict[str, Any]:
        """state_key and admissible actions of the page last observed (built as the text env builds them)."""
        view = self._view
        if view["done"]:
            return {"state_key": view["text"], "admissible_actions": []}
        assert self._goal_idx is not None
        keywords = instruction_keywords(self.shop.goals[self._goal_idx]["instruction_text"])
        admissible = [f"search[{keywords}]"] if view["has_search"] else []
        admissible += [f"click[{x}]" for x in dict.fromkeys(view["buttons"] + view["radios"])]
        return {
            "state_key": selected_key(view["text"], [tuple(x) for x in view["selected"]]),
            "admissible_actions": admissible,
        }

    def _perform(self, verb: str, arg: str) -> bool:
        """Do the action in the browser when the current page allows it; False (and nothing done) otherwise."""
        view, page = self._view, self._page
        if view["done"]:
            return False
        if verb == "search":
            if not view["has_search"] or not arg:
                return False
            page.fill("#search_input", arg, force=True)
            with page.expect_navigation(wait_until="domcontentloaded"):
                page.click("#search_btn", force=True)
            return True
        if verb != "click" or arg == "search" or arg not in set(view["buttons"]) | set(view["radios"]):
            return False
        target = page.locator(f"[data-label={css_string(arg)}]").first
        with page.expect_navigation(wait_until="domcontentloaded"):
            target.click(force=True)
        return True

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._goal_idx is None:
            raise RuntimeError("WebShopBrowserEnv.step() called before reset()")
        was_done = bool(self._view.get("done"))
        parsed = parse_action(action) if isinstance(action, str) else None
        valid = parsed is not None and self._perform(*parsed)
        self._t += 1
        obs, info = self._observe() if valid else (self._last_obs, self._info())
        done = bool(self._view["done"])
        reward = float(self._view["reward"]) if valid and done and not was_done else 0.0
        info.update(valid=bool(valid), success=bool(valid and done and reward == 1.0), turn_reward=None)
        truncated = bool(not done and self._t >= self.max_steps)
        return obs, reward, done, truncated, info

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._context.close()
        _SharedBrowser.release(self._executable)
        if self._server is not None:
            self._server.stop()
