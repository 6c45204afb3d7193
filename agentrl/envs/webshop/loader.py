"""Turn WebShop files (original or generated) into a Shop: products, prices, goals, splits, search.

Mirrors the original ``load_products`` / ``generate_product_prices`` (princeton-nlp/WebShop,
``web_agent_site/engine/engine.py``), ``get_human_goals`` / ``get_synthetic_goals``
(``web_agent_site/engine/goal.py``) and the goal shuffle of ``SimServer``
(``web_agent_site/envs/web_agent_text_env.py``: ``random.seed(233); random.shuffle(goals)``):
option values lower-cased with "/" -> " | ", prices parsed from "$a" or "$a - $b" (a price inside a
range drawn uniformly), reviews and ratings from ``reviews.json`` when the folder has one, price
bounds drawn from the next four $10 steps above the price, goals shuffled once with seed 233,
splits test [0, 500), eval [500, 1500), train [1500, ...).

Prices and price bounds come from one ``random.Random(233)`` here (the original draws them from
the unseeded global ``random``, so its bounds change from run to run). The generated catalogue
and the same catalogue written to files and loaded from ``data_dir`` therefore give the same goals
in the same order.

One deliberate difference: the $10 steps go up to $9,990 (the original stops at $990 and gives
dearer products no price bound), so every generated instruction ends with a price bound.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from agentrl.envs.webshop.catalogue import HUMAN_INS_FILE, REVIEWS_FILE, generate_catalogue
from agentrl.envs.webshop.search import SearchEngine

PRICE_RANGE = [10.0 * i for i in range(1, 1000)]
NO_PRICE_BOUND = 1_000_000.0
GOAL_SEED = 233  # the original's random.seed(233) before shuffling the goals
SPLITS = {"test": (0, 500), "eval": (500, 1500), "train": (1500, None)}


class WebShopDataError(ValueError):
    """A WebShop data file is missing or not in the expected schema; the message names it."""


@dataclass
class Shop:
    """Everything the page machine needs: processed products, fixed prices, goals and the search engine."""

    products: list[dict[str, Any]]
    by_asin: dict[str, dict[str, Any]]
    prices: dict[str, float]
    goals: list[dict[str, Any]]
    search: SearchEngine = field(repr=False)

    def split_indices(self, split: str) -> range:
        """Goal indices of a split; raises when the split is unknown or empty for this catalogue."""
        if split not in SPLITS:
            raise ValueError(f"unknown WebShop split {split!r}; choose one of {sorted(SPLITS)}")
        lo, hi = SPLITS[split]
        hi = len(self.goals) if hi is None else min(hi, len(self.goals))
        if hi <= lo:
            raise ValueError(
                f"split {split!r} needs goals [{lo}, {SPLITS[split][1]}) "
                f"but this catalogue has {len(self.goals)} goals"
            )
        return range(lo, hi)


def pick_goal(goal_ids: range, split: str, task_id: Any, rng: np.random.Generator) -> int:
    """The goal an episode plays: ``task_id`` checked against the split, or one drawn from ``rng`` when None.

    Both WebShop envs reset through this, so they accept the same ids (an int or a string of digits)
    and refuse the rest with the same message.
    """
    if task_id is None:
        return goal_ids[int(rng.integers(len(goal_ids)))]
    text = str(task_id)
    if not (text.isascii() and text.isdigit()) or int(text) not in goal_ids:
        raise ValueError(
            f"WebShop task_id {task_id!r} is not in split {split!r}: it must be a goal index in "
            f"{goal_ids.start}..{goal_ids.stop - 1}"
        )
    return int(text)


def _parse_pricing(pricing: Any, asin: str) -> tuple[list[float], str]:
    if not pricing:
        return [100.0], "$100.0"
    if not isinstance(pricing, str):
        raise WebShopDataError(
            f"product {asin}: 'pricing' must be a string like '$12.99' or '$12.99 - $15.99', got {pricing!r}"
        )
    try:
        values = [float(Decimal(re.sub(r"[^\d.]", "", part))) for part in pricing.split("$")[1:]]
    except ArithmeticError as e:
        raise WebShopDataError(f"product {asin}: cannot parse pricing {pricing!r}") from e
    if not values:
        raise WebShopDataError(f"product {asin}: pricing {pricing!r} holds no '$' amount")
    if len(values) == 1:
        return values, f"${values[0]}"
    return values[:2], f"${values[0]} to ${values[1]}"


REQUIRED_PRODUCT_KEYS = (
    "asin",
    "name",
    "full_description",
    "small_description",
    "customization_options",
    "category",
    "query",
    "product_category",
)


def _reviews_by_asin(reviews: Sequence[Mapping[str, Any]] | None) -> tuple[dict[str, list], dict[str, Any]]:
    """The original's reading of ``reviews.json``: a list of ``{asin, reviews, average_rating}``."""
    if reviews is None:
        return {}, {}
    if not isinstance(reviews, Sequence) or isinstance(reviews, (str, bytes)):
        raise WebShopDataError(f"the reviews file must hold a JSON list, got {type(reviews).__name__}")
    by_asin: dict[str, list] = {}
    ratings: dict[str, Any] = {}
    for i, entry in enumerate(reviews):
        if not isinstance(entry, Mapping) or "asin" not in entry:
            raise WebShopDataError(
                f"reviews entry {i} must be an object with 'asin', 'reviews' and 'average_rating'"
            )
        by_asin[str(entry["asin"])] = list(entry.get("reviews") or [])
        ratings[str(entry["asin"])] = entry.get("average_rating", "N.A.")
    return by_asin, ratings


def _review(raw: Any) -> dict[str, Any]:
    # as the original: 'stars' becomes 'score' when there is no 'score'; 'review' becomes 'body' (else '')
    r = dict(raw) if isinstance(raw, Mapping) else {}
    if "score" not in r:
        r["score"] = r.pop("stars", "")
    r["body"] = r.pop("review") if "review" in r else ""
    return r


def process_products(
    items: Sequence[Mapping[str, Any]],
    attributes: Mapping[str, Any],
    human_ins: Mapping[str, Any] | None,
    num_products: int | None = None,
    reviews: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Original ``load_products``: normalise fields, options and prices; attach attributes, instructions, reviews."""
    all_reviews, all_ratings = _reviews_by_asin(reviews)
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
        raise WebShopDataError(
            f"the items file must hold a JSON list of products, got {type(items).__name__}"
        )
    products: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, raw in enumerate(items[:num_products] if num_products is not None else items):
        if not isinstance(raw, Mapping):
            raise WebShopDataError(f"item {i} must be a JSON object, got {type(raw).__name__}")
        missing = [k for k in REQUIRED_PRODUCT_KEYS if k not in raw]
        if missing:
            raise WebShopDataError(f"item {i} (asin {raw.get('asin')!r}) lacks key(s) {missing}")
        asin = str(raw["asin"])
        if asin == "nan" or len(asin) > 10 or asin in seen:
            continue
        seen.add(asin)
        p = dict(raw)
        bullets = raw["small_description"]
        p["Title"] = raw["name"]
        p["Description"] = raw["full_description"] or ""
        p["BulletPoints"] = [str(b) for b in bullets] if isinstance(bullets, list) else [str(bullets)]
        p["Reviews"] = [_review(r) for r in all_reviews.get(asin, [])]
        p["Rating"] = all_ratings.get(asin, "N.A.")
        p["pricing"], p["Price"] = _parse_pricing(raw.get("pricing"), asin)
        options: dict[str, list[str]] = {}
        for name, contents in (raw["customization_options"] or {}).items():
            if contents is None:
                continue
            options[name.lower()] = [str(c["value"]).strip().replace("/", " | ").lower() for c in contents]
        p["options"] = options
        entry = attributes.get(asin) or {}
        p["Attributes"] = list(entry.get("attributes") or ["DUMMY_ATTR"])
        if human_ins is not None:
            if asin in human_ins:
                p["instructions"] = human_ins[asin]
        else:
            p["instruction_text"] = entry.get("instruction")
            p["instruction_attributes"] = entry.get("instruction_attributes")
        images = raw.get("images") or []
        p["MainImage"] = images[0] if images else ""
        p["query"] = str(raw["query"]).lower().strip()
        products.append(p)
    if not products:
        raise WebShopDataError("the items file holds no usable product")
    return products


def product_prices(products: Sequence[Mapping[str, Any]], rng: random.Random) -> dict[str, float]:
    """One fixed price per product (uniform inside a price range), as the reward uses."""
    out = {}
    for p in products:
        pricing = p["pricing"]
        out[p["asin"]] = pricing[0] if len(pricing) == 1 else rng.uniform(*pricing[:2])
    return out


def _price_bound(price: float, rng: random.Random) -> tuple[float, str]:
    candidates = [x for x in PRICE_RANGE if x > price][:4]
    if len(candidates) < 2:
        return NO_PRICE_BOUND, ""
    _, upper = sorted(rng.sample(candidates, 2))
    return upper, f", and price lower than {upper:.2f} dollars"


def _goal(
    p: Mapping[str, Any], instruction: str, attributes: list[str], options: Any, upper: float
) -> dict[str, Any]:
    return {
        "asin": p["asin"],
        "category": p["category"],
        "query": p["query"],
        "name": p["name"],
        "product_category": p["product_category"],
        "instruction_text": instruction,
        "attributes": attributes,
        "price_upper": upper,
        "goal_options": options,
        "weight": 1.0,
    }


def human_goals(
    products: Sequence[Mapping[str, Any]], prices: Mapping[str, float], rng: random.Random
) -> list[dict[str, Any]]:
    """Original ``get_human_goals``: one goal per written instruction with attributes, plus a price bound."""
    goals = []
    for p in products:
        for ins in p.get("instructions", []):
            attributes = list(ins.get("instruction_attributes") or [])
            if not attributes:
                continue
            upper, price_text = _price_bound(prices[p["asin"]], rng)
            goals.append(
                _goal(
                    p,
                    ins["instruction"].strip(".") + price_text,
                    attributes,
                    list(ins.get("instruction_options") or []),
                    upper,
                )
            )
    return goals


def synthetic_goals(
    products: Sequence[Mapping[str, Any]], prices: Mapping[str, float], rng: random.Random
) -> list[dict[str, Any]]:
    """Original ``get_synthetic_goals``: every option combination of every product with an instruction."""
    goals = []
    counts: dict[str, int] = {}
    for p in products:
        if not p.get("instruction_text"):
            continue
        attributes = list(p["instruction_attributes"] or [])
        if not attributes:
            raise WebShopDataError(f"product {p['asin']}: instruction without instruction_attributes")
        upper, price_text = _price_bound(prices[p["asin"]], rng)
        names = sorted(p["options"])
        for combo in itertools.product(*(p["options"][n] for n in names)):
            chosen = dict(zip(names, combo, strict=True))
            option_text = ", and ".join(f"{k}: {v}" for k, v in chosen.items())
            option_text = " with " + option_text if option_text else ""
            goals.append(
                _goal(p, f"{p['instruction_text']}{option_text}{price_text}", attributes, chosen, upper)
            )
            for a in attributes:
                counts[a] = counts.get(a, 0) + 1
    for g in goals:
        g["weight"] = sum(1.0 / counts[a] for a in g["attributes"]) / len(g["attributes"])
    return goals


def build_shop(
    items: Sequence[Mapping[str, Any]],
    attributes: Mapping[str, Any],
    human_ins: Mapping[str, Any] | None,
    *,
    seed: int = GOAL_SEED,
    num_products: int | None = None,
    reviews: Sequence[Mapping[str, Any]] | None = None,
) -> Shop:
    """Process raw files into a Shop; ``human_ins=None`` uses synthetic goals (one per option combination).

    ``seed`` seeds the prices, the price bounds and the goal shuffle (default: the original's 233).
    """
    products = process_products(items, attributes, human_ins, num_products, reviews)
    rng = random.Random(seed)
    prices = product_prices(products, rng)
    goals = (
        human_goals(products, prices, rng)
        if human_ins is not None
        else synthetic_goals(products, prices, rng)
    )
    if not goals:
        raise WebShopDataError("no goal could be built: no product has an instruction with attributes")
    random.Random(seed).shuffle(goals)
    by_asin = {p["asin"]: p for p in products}
    return Shop(products=products, by_asin=by_asin, prices=prices, goals=goals, search=SearchEngine(products))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise WebShopDataError(f"{path} is not valid JSON: {e}") from e


def _pick(data_dir: Path, pattern: str, preferred: str | None) -> Path:
    if preferred and (data_dir / preferred).is_file():
        return data_dir / preferred
    found = sorted(data_dir.glob(pattern))
    if not found:
        raise WebShopDataError(f"no file matching {pattern!r} in {data_dir}")
    return found[0]


def load_files(
    data_dir: str | Path, *, num_products: int | None = None, goals: str = "human", seed: int = GOAL_SEED
) -> Shop:
    """Load the original files (``items_shuffle*.json``, ``items_ins_v2*.json``, ``items_human_ins.json``,
    and ``reviews.json`` when present; the original requires it, agentrl shows no reviews without it)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise WebShopDataError(f"WebShop data directory {root} does not exist")
    if goals not in ("human", "synthetic"):
        raise ValueError(f"goals must be 'human' or 'synthetic', got {goals!r}")
    suffix = f"_{num_products}.json" if num_products else None
    items = _read_json(_pick(root, "items_shuffle*.json", suffix and "items_shuffle" + suffix))
    attributes = _read_json(_pick(root, "items_ins_v2*.json", suffix and "items_ins_v2" + suffix))
    human = _read_json(_pick(root, HUMAN_INS_FILE, HUMAN_INS_FILE)) if goals == "human" else None
    reviews = _read_json(root / REVIEWS_FILE) if (root / REVIEWS_FILE).is_file() else None
    return build_shop(items, attributes, human, seed=seed, num_products=num_products, reviews=reviews)


@lru_cache(maxsize=8)
def load_shop(
    data_dir: str | None = None,
    num_products: int | None = None,
    seed: int = 0,
    goals: str = "human",
    goals_per_product: int = 3,
) -> Shop:
    """The shop for an env (cached per process): the user's files when ``data_dir`` is set, else generated.

    ``seed`` picks the generated catalogue; prices, price bounds and the goal order always use the
    original's seed 233, so ``data_dir`` holding ``write_catalogue(dir, seed)``'s files gives the same goals.
    """
    if data_dir is not None:
        return load_files(data_dir, num_products=num_products, goals=goals)
    n = 1000 if num_products is None else num_products
    data = generate_catalogue(seed=seed, num_products=n, goals_per_product=goals_per_product)
    return build_shop(
        data["items"],
        data["attributes"],
        data["human_ins"] if goals == "human" else None,
        reviews=data["reviews"],
    )
