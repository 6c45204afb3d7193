"""The WebShop page machine: one set of pages and transitions behind every front-end.

Pages (as the original site): index (instruction + search box), search results (top 50 hits,
10 a page, ``Back to Search``, ``< Prev``, ``Next >``), item (option groups, title, price, rating,
``Description``, ``Features``, ``Reviews``, ``Buy Now``), item sub-page (``< Prev``), done.
A page is a list of visible elements; the text env joins their texts with " [SEP] " (the original
"text" observation) and the site renders the same elements as HTML, so both show the same strings.

Actions: ``search[keywords]`` where a search box is shown, ``click[label]`` where label is a
lower-cased button text, a product id or an option value; anything else is invalid (a no-op).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from agentrl.envs.webshop.loader import Shop
from agentrl.envs.webshop.reward import RewardConfig, get_reward

PRODUCT_WINDOW = 10
SEP = " [SEP] "
SUB_PAGES = ("Description", "Features", "Reviews")
_ACTION = re.compile(r"(\w+)\[(.*)\]", re.DOTALL)


@dataclass(frozen=True)
class Element:
    """One visible string of a page; ``label`` is set when it can be clicked."""

    kind: str  # heading | text | button | product | option_name | option | search
    text: str
    label: str = ""
    group: str = ""
    checked: bool = False


@dataclass(frozen=True)
class PageState:
    """Where a session is: the page kind and what it shows (hashable, so it can key caches)."""

    kind: str = "index"  # index | results | item | sub | done
    keywords: str = ""
    page: int = 1
    asin: str = ""
    sub: str = ""
    options: tuple[tuple[str, str], ...] = ()


@dataclass
class Session:
    """One shopper: the goal, the current page, and the outcome once bought."""

    goal_idx: int
    goal: dict[str, Any]
    state: PageState = field(default_factory=PageState)
    done: bool = False
    reward: float = 0.0
    reward_info: dict[str, Any] = field(default_factory=dict)
    bought: tuple[str, tuple[tuple[str, str], ...]] | None = None
    # product ids clicked in this session (the original's ``session["asins"]``), marked in text_rich
    visited: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Page:
    """A rendered page: its elements, whether it has a search box, and label -> clickable element."""

    elements: tuple[Element, ...]
    has_search: bool
    clickables: dict[str, Element]

    def text(self) -> str:
        return SEP.join(e.text for e in self.elements)

    def rich_text(self, visited: set[str] | frozenset[str] = frozenset()) -> str:
        """The original's "text_rich" observation, which marks what can be clicked and what was.

        Follows ``WebAgentTextEnv.convert_html_to_text(simple=False)`` (princeton-nlp/WebShop,
        ``web_agent_site/envs/web_agent_text_env.py`` @3b1894d): a button's text as ``[button] t
        [button_]``; an option as ``  [button] t [button_]``, or ``  [clicked button] t [clicked
        button_]`` when selected, with ``You have clicked t.`` put before the whole observation; a
        product id as ``\n[clicked button] t [clicked button_]`` when it was clicked in this session
        (``visited``), else ``\n[button] t [button_]``; other text as it is; each followed by a new
        line. The original tells a selected option by its quoted value in the page's URL; here it is
        the option selected in its group, what that test is for.
        """
        out = ""
        for e in self.elements:
            if e.kind in ("button", "search"):
                t = f"[button] {e.text} [button_]"
            elif e.kind == "option" and e.checked:
                t = f"  [clicked button] {e.text} [clicked button_]"
                out = f"You have clicked {e.text}.\n" + out
            elif e.kind == "option":
                t = f"  [button] {e.text} [button_]"
            elif e.kind == "product":
                mark = "clicked button" if e.text in visited else "button"
                t = f"\n[{mark}] {e.text} [{mark}_]"
            else:
                t = e.text
            out += t + "\n"
        return out

    def admissible(self, search_keywords: str) -> list[str]:
        """Valid actions: the clickable labels, plus one search (the given keywords) when a box is shown."""
        acts = [f"search[{search_keywords}]"] if self.has_search else []
        acts.extend(f"click[{label}]" for label in self.clickables)
        return acts


@dataclass(frozen=True)
class StepResult:
    valid: bool
    reward: float
    done: bool


def parse_action(action: str) -> tuple[str, str] | None:
    """``"click[Buy Now]"`` -> ``("click", "buy now")``; None when it is not ``verb[argument]``."""
    m = _ACTION.fullmatch(action.strip())
    if m is None:
        return None
    return m.group(1).lower(), m.group(2).strip().lower()


# The original done page as its text env shows it (the hidden debug fields are text nodes too;
# the text env passes no goal, so they read "None" or stay empty).
DONE_HEAD = (
    "Thank you for shopping with us!",
    "Your code:",
    "None",
    "(Paste it in your MTurk interface.)",
    "Purchased",
    "asin",
)
DONE_MIDDLE = (
    "attrs",
    "None",
    "category",
    "None",
    "query",
    "None",
    "product category",
    "None",
    "Target",
    "asin",
    "options",
    "attrs",
    "price upper",
    "instuction text",
    "category",
    "product category",
    "query",
    "Goal",
    "None",
    "Reward",
    "Your score (min 0.0, max 1.0)",
)


def options_json(options: dict[str, str]) -> str:
    """Options as Jinja's ``tojson`` writes them (sorted keys, ASCII, HTML-special characters escaped)."""
    text = json.dumps(options, sort_keys=True)
    for ch, code in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("'", "\\u0027")):
        text = text.replace(ch, code)
    return text


class PageMachine:
    """Renders pages and applies actions for sessions of one Shop; sessions hold all state (this holds caches)."""

    def __init__(self, shop: Shop, reward_config: RewardConfig | Mapping[str, Any] | None = None) -> None:
        self.shop = shop
        self.reward_config = RewardConfig.coerce(reward_config)
        self._results_cache: dict[tuple[str, int], tuple[Element, ...]] = {}

    def new_session(self, goal_idx: int) -> Session:
        if not 0 <= goal_idx < len(self.shop.goals):
            raise ValueError(f"goal index {goal_idx} is out of range [0, {len(self.shop.goals)})")
        return Session(goal_idx=goal_idx, goal=self.shop.goals[goal_idx])

    # ---- rendering -------------------------------------------------------------------------
    def render(self, session: Session) -> Page:
        s = session.state
        instruction = session.goal["instruction_text"]
        head = (Element("text", "Instruction:"), Element("text", instruction))
        if s.kind == "index":
            body = (Element("heading", "WebShop"), *head, Element("search", "Search"))
            return _page(body, has_search=True)
        back = Element("button", "Back to Search", "back to search")
        if s.kind == "results":
            return _page((*head, back, *self._results_body(s.keywords, s.page)))
        if s.kind in ("item", "sub"):
            prev = Element("button", "< Prev", "< prev")
            if s.kind == "item":
                return _page((*head, back, prev, *self._item_body(s.asin, dict(s.options))))
            return _page((*head, back, prev, *self._sub_body(s.asin, s.sub)))
        return _page(self._done_body(session))

    def _results_body(self, keywords: str, page: int) -> tuple[Element, ...]:
        key = (keywords, page)
        cached = self._results_cache.get(key)
        if cached is not None:
            return cached
        hits = self.shop.search.search(keywords)
        out = [Element("text", f"Page {page} (Total results: {len(hits)})")]
        if page > 1:
            out.append(Element("button", "< Prev", "< prev"))
        if page * PRODUCT_WINDOW < len(hits):
            out.append(Element("button", "Next >", "next >"))
        for asin in hits[(page - 1) * PRODUCT_WINDOW : page * PRODUCT_WINDOW]:
            p = self.shop.by_asin[asin]
            out.extend(
                (
                    Element("product", asin, asin.lower()),
                    Element("text", p["Title"]),
                    Element("text", p["Price"]),
                )
            )
        body = tuple(out)
        if len(self._results_cache) > 20_000:
            self._results_cache.clear()
        self._results_cache[key] = body
        return body

    def _item_body(self, asin: str, options: dict[str, str]) -> tuple[Element, ...]:
        p = self.shop.by_asin[asin]
        opts = []
        for group, values in p["options"].items():
            opts.append(Element("option_name", group))
            opts.extend(Element("option", v, v, group, options.get(group) == v) for v in values)
        tail = [
            Element("text", p["Title"]),
            Element("text", f"Price: {p['Price']}"),
            Element("text", f"Rating: {p['Rating']}"),
        ]
        tail.extend(Element("button", name, name.lower()) for name in SUB_PAGES)
        tail.append(Element("button", "Buy Now", "buy now"))
        return (*opts, *tail)

    def _sub_body(self, asin: str, sub: str) -> tuple[Element, ...]:
        p = self.shop.by_asin[asin]
        if sub == "description":
            texts = [p["Description"]]
        elif sub == "features":
            texts = list(p["BulletPoints"])
        else:
            # the original review page (web_agent_site/templates/review_page.html) shows, per review,
            # '"title"', the score and the body, and nothing at all when there are no reviews
            texts = [
                x
                for r in p["Reviews"]
                for x in (f'"{r.get("title", "")}"', str(r.get("score", "")), str(r.get("body", "")))
            ]
        return tuple(Element("text", t) for t in texts)

    def _done_body(self, session: Session) -> tuple[Element, ...]:
        asin, options = session.bought or ("", ())
        texts = [
            *DONE_HEAD,
            asin,
            "options",
            options_json(dict(options)),
            *DONE_MIDDLE,
            str(session.reward),
            "Reward Details",
            "None",
        ]
        return tuple(Element("text", t) for t in texts)

    # ---- transitions -----------------------------------------------------------------------
    def step(self, session: Session, action: str, page: Page | None = None) -> StepResult:
        """Apply one action text; invalid actions leave the session untouched."""
        if session.done or not isinstance(action, str):
            return StepResult(False, 0.0, session.done)
        parsed = parse_action(action)
        if parsed is None:
            return StepResult(False, 0.0, False)
        verb, arg = parsed
        page = page if page is not None else self.render(session)
        if verb == "search":
            if not page.has_search or not arg:
                return StepResult(False, 0.0, False)
            session.state = PageState("results", keywords=arg, page=1)
            return StepResult(True, 0.0, False)
        if verb != "click" or arg == "search" or arg not in page.clickables:
            return StepResult(False, 0.0, False)
        return self._click(session, page.clickables[arg])

    def _click(self, session: Session, el: Element) -> StepResult:
        s = session.state
        if el.kind == "option":
            options = dict(s.options)
            options[el.group] = el.label
            session.state = replace(s, options=tuple(options.items()))
        elif el.kind == "product":
            session.state = PageState("item", keywords=s.keywords, page=s.page, asin=el.text)
            session.visited.add(el.text)
        elif el.label == "back to search":
            session.state = PageState()
        elif el.label == "next >":
            session.state = replace(s, page=s.page + 1)
        elif el.label == "< prev":
            if s.kind == "results":
                session.state = replace(s, page=max(1, s.page - 1))
            elif s.kind == "item":
                session.state = PageState("results", keywords=s.keywords, page=s.page)
            else:
                session.state = replace(s, kind="item", sub="")
        elif el.label in ("description", "features", "reviews"):
            session.state = replace(s, kind="sub", sub=el.label)
        elif el.label == "buy now":
            return self._buy(session)
        return StepResult(True, 0.0, False)

    def _buy(self, session: Session) -> StepResult:
        s = session.state
        product = self.shop.by_asin[s.asin]
        reward, info = get_reward(
            product, session.goal, self.shop.prices[s.asin], dict(s.options), self.reward_config
        )
        session.reward, session.reward_info, session.done = float(reward), info, True
        session.bought = (s.asin, s.options)
        session.state = PageState("done", asin=s.asin, options=s.options)
        return StepResult(True, float(reward), True)

    def selected(self, session: Session) -> list[tuple[str, str]]:
        """Selected options of an item or sub-page, in the product's group order (not click order)."""
        s = session.state
        if not s.options or s.kind not in ("item", "sub"):
            return []
        chosen = dict(s.options)
        return [(g, chosen[g]) for g in self.shop.by_asin[s.asin]["options"] if g in chosen]

    def state_key(self, session: Session, page: Page) -> str:
        """The raw observation, plus the selected options (the text format does not show them)."""
        return selected_key(page.text(), self.selected(session))


def selected_key(text: str, selected: list[tuple[str, str]]) -> str:
    """State key of a page with options selected (in the product's group order, whatever the click order)."""
    return text + "\n[selected] " + ", ".join(f"{k}: {v}" for k, v in selected) if selected else text


def _page(elements: tuple[Element, ...], has_search: bool = False) -> Page:
    # strings are shown stripped and empty ones not at all (as text nodes of the HTML page are read)
    elements = tuple(
        e if e.text == e.text.strip() else replace(e, text=e.text.strip()) for e in elements if e.text.strip()
    )
    clickables: dict[str, Element] = {}
    for e in elements:
        if e.kind in ("button", "product"):
            clickables[e.label] = e
    for e in elements:
        if e.kind == "option":
            clickables[e.label] = e
    return Page(elements=elements, has_search=has_search, clickables=clickables)
