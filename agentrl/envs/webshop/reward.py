"""WebShop's reward, as the original ``get_reward`` defines it.

``r = r_type * (n_attr_match + n_option_match + [price <= price_upper]) / (|attrs| + |options| + 1)``

- attribute match: fuzzy ``token_set_ratio > 85`` against one of the product's attributes, else the
  lower-cased attribute is a substring of the title, the bullet points or the description;
- option match: ``token_set_ratio > 85`` after colour normalisation (first colour word found);
- ``r_type``: 1.0 if the query matches, or >= 2 category levels are shared, or the title overlap is
  > 0.2; 0.5 otherwise; then 0.1 if the overlap is < 0.1 and 0.0 if it is 0 (in that order).
  Title overlap = share of the goal name's nouns found among the bought product's nouns.

The original scores with thefuzz, whose token_set_ratio lower-cases and strips punctuation first;
rapidfuzz does that only with ``processor=default_process`` (without it "4K" vs "4k" scores 50).
The original finds nouns with spaCy; a dependency-free heuristic stands in for it here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

MATCH_THRESHOLD = 85

# First colour word found wins, checked in this (alphabetical) order, as substrings: "dark blue" -> "blue".
COLOR_SET = (
    "alabaster", "apricot", "aqua", "ash", "asphalt", "azure", "banana", "beige", "black", "blue", "blush",
    "bordeaux", "bronze", "brown", "burgundy", "camel", "camo", "caramel", "champagne", "charcoal", "cheetah",
    "chestnut", "chocolate", "christmas", "coffee", "cognac", "copper", "coral", "cranberry", "cream", "crystal",
    "dark", "denim", "eggplant", "elephant", "espresso", "fuchsia", "gold", "granite", "grape", "graphite",
    "grass", "gray", "green", "grey", "heather", "indigo", "ivory", "ivy", "khaki", "lavender", "lemon",
    "leopard", "light", "lilac", "lime", "magenta", "maroon", "mauve", "merlot", "midnight", "mint", "mocha",
    "multicolor", "mushroom", "mustard", "natural", "navy", "nude", "olive", "orange", "peach", "pewter", "pink",
    "plum", "purple", "rainbow", "red", "rose", "royal", "rust", "sand", "sapphire", "seashell", "silver",
    "skull", "slate", "steel", "stone", "stripe", "tan", "taupe", "teal", "tiger", "turquoise", "violet",
    "walnut", "wheat", "white", "wine", "yellow",
)

_STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were will with "
    "without your you our we i me my he she they them his her their".split()
)
_ADJECTIVES = frozenset(
    "new small large big high low long short soft hard light heavy quick fast slow easy free wide thick thin "
    "compact modern classic premium natural smart digital electric portable wireless mini extra super ultra best "
    "great good cute durable non anti dual double single multi full half top bottom real pure fresh warm cool "
    "hot cold dark bright clear quiet professional original simple basic deluxe standard open".split()
) | frozenset(COLOR_SET)
_ADJECTIVE_SUFFIXES = ("able", "ible", "ful", "ous", "ive", "less", "ish", "ly")
_WORD = re.compile(r"[a-z][a-z0-9']*")


def normalize_color(text: str) -> str:
    """The first colour word contained in ``text`` (substring match, fixed order), else ``text``."""
    for colour in COLOR_SET:
        if colour in text:
            return colour
    return text


def fuzzy_score(a: str, b: str) -> float:
    """thefuzz-compatible token_set_ratio (lower-cased, punctuation stripped)."""
    return fuzz.token_set_ratio(a, b, processor=default_process)


@lru_cache(maxsize=65536)
def title_nouns(title: str) -> frozenset[str]:
    """Nouns of a product name, by heuristic: content words that are not adjectives or numbers."""
    out = set()
    for word in _WORD.findall(title.lower()):
        if len(word) < 2 or word in _STOPWORDS or word in _ADJECTIVES or word.endswith(_ADJECTIVE_SUFFIXES):
            continue
        out.add(word)
    return frozenset(out)


def type_reward(product: Mapping[str, Any], goal: Mapping[str, Any]) -> dict[str, Any]:
    """r_type and its parts: query match, category match (>= 2 shared levels), title noun overlap."""
    query_match = product["query"] == goal["query"]
    bought_levels = {x.strip() for x in product["product_category"].split("›")}
    goal_levels = {x.strip() for x in goal["product_category"].split("›")}
    category_match = len(bought_levels & goal_levels) >= 2
    desired = title_nouns(goal["name"])
    title_score = 0.2 if not desired else len(title_nouns(product["name"]) & desired) / len(desired)
    r_type = 1.0 if (query_match or category_match or title_score > 0.2) else 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return {"r_type": r_type, "query_match": query_match, "category_match": category_match, "title_score": title_score}


def attribute_matches(product: Mapping[str, Any], goal_attributes: Sequence[str]) -> int:
    """How many goal attributes the product has (fuzzy on its attributes, else a substring of its text)."""
    title = product["Title"].lower()
    bullets = " ".join(product["BulletPoints"]).lower()
    description = product["Description"].lower()
    n = 0
    for wanted in goal_attributes:
        if any(fuzzy_score(have, wanted) > MATCH_THRESHOLD for have in product["Attributes"]):
            n += 1
        elif wanted in title or wanted in bullets or wanted in description:
            n += 1
    return n


def option_matches(bought_options: Iterable[str], goal_options: Iterable[str]) -> int:
    """How many goal option values are matched by a bought option value (colour-normalised, fuzzy)."""
    bought = [normalize_color(o) for o in bought_options]
    n = 0
    for wanted in (normalize_color(o) for o in goal_options):
        if any(fuzzy_score(have, wanted) > MATCH_THRESHOLD for have in bought):
            n += 1
    return n


def goal_option_values(goal: Mapping[str, Any]) -> list[str]:
    """Goal options as values: human goals hold a list, synthetic goals a {name: value} dict."""
    options = goal["goal_options"]
    return list(options.values()) if isinstance(options, Mapping) else list(options)


def get_reward(product: Mapping[str, Any], goal: Mapping[str, Any], price: float,
               options: Mapping[str, str]) -> tuple[float, dict[str, Any]]:
    """The original WebShop reward of buying ``product`` at ``price`` with ``options`` for ``goal``.

    Returns the reward and its parts (``r_type``, ``r_att``, ``r_option``, ``r_price`` and weights).
    """
    goal_opts = goal_option_values(goal)
    n_attr = attribute_matches(product, goal["attributes"])
    n_opt = option_matches(list(options.values()), goal_opts)
    r_price = bool(price <= goal["price_upper"])
    denom = len(goal["attributes"]) + len(goal_opts) + 1
    parts = type_reward(product, goal)
    reward = parts["r_type"] * (n_attr + n_opt + int(r_price)) / denom
    if not math.isfinite(reward):
        raise ValueError(f"reward is not finite for goal {goal.get('asin')!r}: {reward}")
    info = dict(parts)
    info.update(
        r_att=n_attr / len(goal["attributes"]) if goal["attributes"] else None,
        w_att=len(goal["attributes"]) / denom,
        r_option=n_opt / len(goal_opts) if goal_opts else None,
        w_option=len(goal_opts) / denom,
        r_price=r_price,
        w_price=1 / denom,
    )
    return reward, info
