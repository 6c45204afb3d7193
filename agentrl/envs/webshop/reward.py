"""WebShop's reward, as the original ``get_reward`` defines it.

Source: princeton-nlp/WebShop, ``web_agent_site/engine/goal.py`` (``get_reward``,
``get_type_reward``, ``get_attribute_reward``, ``get_option_reward``) and
``web_agent_site/engine/normalize.py`` (``COLOR_SET``, ``normalize_color``); the goal.py read for this
is at commit d149d0d7a5219c1ea4e60c80f2364a15eb324d7b (the commit of normalize.py was not visible).

``r = r_type * (n_attr_match + n_option_match + [price <= price_upper]) / (|attrs| + |options| + 1)``

- attribute match: ``token_set_ratio > 85`` against one of the product's attributes, else the
  lower-cased attribute is a substring of the title, the bullet points or the description;
- option match: ``token_set_ratio > 85`` after colour normalisation (first colour word found);
- ``r_type``: 1.0 if the query matches, or >= 2 category levels are shared, or the title score is
  > 0.2; 0.5 otherwise; then 0.1 if the title score is < 0.1 and 0.0 if it is 0 (in that order).
  Title score = ``|set(bought nouns) & set(goal nouns)| / len(goal nouns)``: the denominator is the
  goal's noun *list* (repeats count), as the original divides by ``len(desired_type_parse)``.

``token_set_ratio`` is thefuzz's (integer-rounded, code points 128-255 deleted; see ``fuzz.py``) and
the nouns are spaCy's (see ``nouns.py``). ``RewardConfig`` names each choice; its defaults follow the
original, and ``RewardConfig.agentrl_v0()`` is what agentrl computed before (heuristic nouns divided
by the noun set, float fuzzy scores with accents kept, agentrl's colour list).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from agentrl.envs.webshop.colours import AGENTRL_COLOR_SET, COLOR_SET
from agentrl.envs.webshop.fuzz import FUZZ_VARIANTS, token_set_ratio
from agentrl.envs.webshop.nouns import check_tagger, noun_list

MATCH_THRESHOLD = 85

COLOUR_LISTS = {"webshop": COLOR_SET, "agentrl": AGENTRL_COLOR_SET}
TITLE_DENOMINATORS = ("list", "set")


@dataclass(frozen=True)
class RewardConfig:
    """How the reward is computed; every default follows the original WebShop.

    - ``nouns``: noun tagger for r_type's title score: ``"lexicon"`` (spaCy-derived context lexicon,
      pure Python), ``"heuristic"`` (agentrl's earlier rules) or ``"spacy:<model>"`` (a real spaCy
      pipeline you install); see ``nouns.py``.
    - ``title_denominator``: ``"list"`` (the original: the goal's noun list, repeats counted) or
      ``"set"`` (agentrl's earlier choice: distinct nouns).
    - ``fuzz``: ``"thefuzz-0.19"`` (WebShop's pinned thefuzz), ``"thefuzz-0.20"`` (thefuzz on
      rapidfuzz) or ``"agentrl"`` (float scores, accents kept); see ``fuzz.py``.
    - ``colours``: ``"webshop"`` (the original COLOR_SET) or ``"agentrl"`` (agentrl's earlier list).
    """

    nouns: str = "lexicon"
    title_denominator: str = "list"
    fuzz: str = "thefuzz-0.19"
    colours: str = "webshop"

    def __post_init__(self) -> None:
        check_tagger(self.nouns)
        if self.title_denominator not in TITLE_DENOMINATORS:
            raise ValueError(
                f"title_denominator must be one of {TITLE_DENOMINATORS}, got {self.title_denominator!r}"
            )
        if self.fuzz not in FUZZ_VARIANTS:
            raise ValueError(f"fuzz must be one of {FUZZ_VARIANTS}, got {self.fuzz!r}")
        if self.colours not in COLOUR_LISTS:
            raise ValueError(f"colours must be one of {tuple(COLOUR_LISTS)}, got {self.colours!r}")

    @classmethod
    def agentrl_v0(cls) -> RewardConfig:
        """agentrl's reward before it followed the original in these four points."""
        return cls(nouns="heuristic", title_denominator="set", fuzz="agentrl", colours="agentrl")

    @classmethod
    def coerce(cls, value: RewardConfig | Mapping[str, Any] | None) -> RewardConfig:
        """A RewardConfig from itself, a mapping of its fields (e.g. from YAML) or None (the defaults)."""
        if value is None:
            return DEFAULT_CONFIG
        if isinstance(value, RewardConfig):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - set(asdict(DEFAULT_CONFIG))
            if unknown:
                raise ValueError(
                    f"unknown reward option(s) {sorted(unknown)}; known: {sorted(asdict(DEFAULT_CONFIG))}"
                )
            return cls(**value)
        raise TypeError(
            f"reward config must be a RewardConfig, a mapping or None, got {type(value).__name__}"
        )


DEFAULT_CONFIG = RewardConfig()


def normalize_color(text: str, colours: str = "webshop") -> str:
    """The first colour word contained in ``text`` (substring match, the list's order), else ``text``."""
    for colour in COLOUR_LISTS[colours]:
        if colour in text:
            return colour
    return text


def fuzzy_score(a: str, b: str, variant: str = "thefuzz-0.19") -> float:
    """token_set_ratio as the original scores it (an int for the thefuzz variants)."""
    return token_set_ratio(a, b, variant)


def title_nouns(title: str, tagger: str = "lexicon") -> tuple[str, ...]:
    """Lower-cased nouns of a product name in order, repeats kept (the original's ``*_type_parse``)."""
    return noun_list(title, tagger)


def title_score(bought_name: str, goal_name: str, config: RewardConfig = DEFAULT_CONFIG) -> float:
    """Share of the goal name's nouns among the bought product's; 0.2 when the goal name has none."""
    desired = title_nouns(goal_name, config.nouns)
    if not desired:
        return 0.2
    bought = title_nouns(bought_name, config.nouns)
    denominator = len(desired) if config.title_denominator == "list" else len(set(desired))
    return len(set(bought) & set(desired)) / denominator


def type_reward(
    product: Mapping[str, Any], goal: Mapping[str, Any], config: RewardConfig = DEFAULT_CONFIG
) -> dict[str, Any]:
    """r_type and its parts: query match, category match (>= 2 shared levels), title noun overlap."""
    query_match = product["query"] == goal["query"]
    bought_levels = {x.strip() for x in product["product_category"].split("›")}
    goal_levels = {x.strip() for x in goal["product_category"].split("›")}
    category_match = len(bought_levels & goal_levels) >= 2
    score = title_score(product["name"], goal["name"], config)
    r_type = 1.0 if (query_match or category_match or score > 0.2) else 0.5
    if score < 0.1:
        r_type = 0.1
    if score == 0.0:
        r_type = 0.0
    return {
        "r_type": r_type,
        "query_match": query_match,
        "category_match": category_match,
        "title_score": score,
    }


def attribute_matches(
    product: Mapping[str, Any], goal_attributes: Sequence[str], config: RewardConfig = DEFAULT_CONFIG
) -> int:
    """How many goal attributes the product has (fuzzy on its attributes, else a substring of its text)."""
    title = product["Title"].lower()
    bullets = " ".join(product["BulletPoints"]).lower()
    description = product["Description"].lower()
    n = 0
    for wanted in goal_attributes:
        if (
            any(fuzzy_score(have, wanted, config.fuzz) > MATCH_THRESHOLD for have in product["Attributes"])
            or wanted in title
            or wanted in bullets
            or wanted in description
        ):
            n += 1
    return n


def option_matches(
    bought_options: Iterable[str], goal_options: Iterable[str], config: RewardConfig = DEFAULT_CONFIG
) -> int:
    """How many goal option values are matched by a bought option value (colour-normalised, fuzzy)."""
    bought = [normalize_color(o, config.colours) for o in bought_options]
    n = 0
    for wanted in (normalize_color(o, config.colours) for o in goal_options):
        if any(fuzzy_score(have, wanted, config.fuzz) > MATCH_THRESHOLD for have in bought):
            n += 1
    return n


def goal_option_values(goal: Mapping[str, Any]) -> list[str]:
    """Goal options as values: human goals hold a list, synthetic goals a {name: value} dict."""
    options = goal["goal_options"]
    return list(options.values()) if isinstance(options, Mapping) else list(options)


def get_reward(
    product: Mapping[str, Any],
    goal: Mapping[str, Any],
    price: float,
    options: Mapping[str, str],
    config: RewardConfig | Mapping[str, Any] | None = None,
) -> tuple[float, dict[str, Any]]:
    """The original WebShop reward of buying ``product`` at ``price`` with ``options`` for ``goal``.

    Returns the reward and its parts (``r_type``, ``r_att``, ``r_option``, ``r_price`` and weights).
    ``config`` (a ``RewardConfig``, a mapping of its fields, or None for the original's behaviour)
    picks the noun tagger, title denominator, fuzzy scorer and colour list.
    """
    cfg = RewardConfig.coerce(config)
    goal_opts = goal_option_values(goal)
    n_attr = attribute_matches(product, goal["attributes"], cfg)
    n_opt = option_matches(list(options.values()), goal_opts, cfg)
    r_price = bool(price <= goal["price_upper"])
    denom = len(goal["attributes"]) + len(goal_opts) + 1
    parts = type_reward(product, goal, cfg)
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
