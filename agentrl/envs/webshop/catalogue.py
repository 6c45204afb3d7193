"""Offline WebShop catalogue + goal generator, written in the original WebShop file schema.

Why: the original catalogue lives on Google Drive (unreachable here). This builds one from the
real product types and option sets of tau-bench's retail catalogue (``data/products.json``, MIT),
deterministically from a seed, and writes the four files the original loader reads
(princeton-nlp/WebShop, ``web_agent_site/engine/engine.py``, ``load_products``, with the paths of
``web_agent_site/utils.py``):

- ``items_shuffle_<n>.json``: list of products (``asin, name, full_description,
  small_description[], pricing, customization_options, category, query, product_category,
  images``); ``images`` holds one placeholder image (the original reads ``images[0]``);
- ``items_ins_v2_<n>.json``: ``{asin: {attributes, instruction, instruction_attributes}}``;
- ``items_human_ins.json``: ``{asin: [{asin, instruction, instruction_attributes,
  instruction_options}]}`` (the goals; the loader appends the price bound, as the original does);
- ``reviews.json``: ``[{asin, reviews: [], average_rating: "N.A."}]`` (the original opens it
  unconditionally; generated products have no reviews).

Products come in families of one base product and distractors of the same type that differ in
one attribute, in the option values offered, or in price, so that reading the page matters.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

HUMAN_INS_FILE = "items_human_ins.json"
REVIEWS_FILE = "reviews.json"
# a 1x1 SVG as a data URI: offline, and a valid <img src> on the original item page
PLACEHOLDER_IMAGE = "data:image/svg+xml,%3Csvg%20xmlns%3D%22http%3A%2F%2Fwww.w3.org%2F2000%2Fsvg%22%20width%3D%221%22%20height%3D%221%22%2F%3E"


def items_file(num_products: int) -> str:
    return f"items_shuffle_{num_products}.json"


def attrs_file(num_products: int) -> str:
    return f"items_ins_v2_{num_products}.json"


@dataclass(frozen=True)
class ProductType:
    """One seed product type: where it sits in the shop and which attribute pool it draws from."""

    name: str
    department: str
    product_category: str


# Attribute pools per department. Within a pool no attribute is a substring of another and no two
# share all tokens (tests check both), so a distractor that lacks one really lacks it.
ATTRIBUTE_POOLS: dict[str, tuple[str, ...]] = {
    "fashion": (
        "machine washable",
        "moisture wicking",
        "relaxed fit",
        "breathable fabric",
        "tagless collar",
        "wrinkle resistant",
        "quick drying",
        "soft touch",
    ),
    "footwear": (
        "non slip",
        "arch support",
        "memory foam insole",
        "ankle protection",
        "cushioned heel",
        "wide toe box",
        "shock absorbing",
        "lace up",
    ),
    "electronics": (
        "fast charging",
        "long battery life",
        "noise cancelling",
        "high definition",
        "plug and play",
        "dual band",
        "voice control",
        "compact design",
    ),
    "kitchen": (
        "dishwasher safe",
        "bpa free",
        "easy to clean",
        "keep warm function",
        "leak proof",
        "cool touch handle",
        "fast boiling",
        "large capacity",
    ),
    "home": (
        "easy assembly",
        "space saving",
        "heavy duty",
        "modern design",
        "energy efficient",
        "living room",
        "non toxic",
        "eco friendly",
    ),
    "sports": (
        "lightweight",
        "water resistant",
        "easy to carry",
        "anti slip",
        "durable construction",
        "adjustable strap",
        "high density",
        "foldable",
    ),
    "beauty": (
        "long lasting",
        "cruelty free",
        "paraben free",
        "travel size",
        "sensitive skin",
        "gift set",
        "natural ingredients",
        "dermatologist tested",
    ),
    "accessories": (
        "gift box",
        "scratch resistant",
        "uv protection",
        "classic design",
        "lightweight frame",
        "adjustable fit",
        "sapphire glass",
        "unisex style",
    ),
    "office": (
        "acid free paper",
        "lay flat binding",
        "gift idea",
        "premium quality",
        "thick pages",
        "family game night",
        "recycled material",
        "educational",
    ),
}

CATEGORY_OF_DEPARTMENT = {
    "fashion": "fashion",
    "footwear": "fashion",
    "accessories": "fashion",
    "electronics": "electronics",
    "kitchen": "food",
    "home": "furniture",
    "sports": "sports",
    "beauty": "beauty",
    "office": "office",
}

PRODUCT_TYPES: tuple[ProductType, ...] = tuple(
    ProductType(n, d, c)
    for n, d, c in (
        ("T-Shirt", "fashion", "Clothing, Shoes & Jewelry › Men › Clothing › Shirts › T-Shirts"),
        ("Laptop", "electronics", "Electronics › Computers & Accessories › Computers & Tablets › Laptops"),
        ("Running Shoes", "footwear", "Clothing, Shoes & Jewelry › Men › Shoes › Athletic › Running"),
        ("Smartphone", "electronics", "Electronics › Cell Phones & Accessories › Cell Phones"),
        ("Backpack", "sports", "Sports & Outdoors › Outdoor Recreation › Camping & Hiking › Backpacks"),
        (
            "Coffee Maker",
            "kitchen",
            "Home & Kitchen › Kitchen & Dining › Coffee, Tea & Espresso › Coffee Makers",
        ),
        ("Water Bottle", "kitchen", "Sports & Outdoors › Sports & Fitness › Accessories › Water Bottles"),
        (
            "Desk Lamp",
            "home",
            "Tools & Home Improvement › Lighting & Ceiling Fans › Lamps & Shades › Desk Lamps",
        ),
        ("Notebook", "office", "Office Products › Office & School Supplies › Paper › Notebooks"),
        ("Sunglasses", "accessories", "Clothing, Shoes & Jewelry › Men › Accessories › Sunglasses & Eyewear"),
        ("Wristwatch", "accessories", "Clothing, Shoes & Jewelry › Men › Watches › Wrist Watches"),
        (
            "Electric Toothbrush",
            "beauty",
            "Beauty & Personal Care › Oral Care › Toothbrushes › Electric Toothbrushes",
        ),
        ("Yoga Mat", "sports", "Sports & Outdoors › Sports & Fitness › Exercise & Fitness › Yoga › Mats"),
        (
            "Bluetooth Speaker",
            "electronics",
            "Electronics › Portable Audio & Video › Portable Speakers & Docks",
        ),
        (
            "Gaming Mouse",
            "electronics",
            "Electronics › Computers & Accessories › Computer Accessories › Mice",
        ),
        ("Action Camera", "electronics", "Electronics › Camera & Photo › Video › Action Cameras"),
        ("Garden Hose", "home", "Patio, Lawn & Garden › Watering Equipment › Garden Hoses"),
        ("Hiking Boots", "footwear", "Clothing, Shoes & Jewelry › Men › Shoes › Outdoor › Hiking & Trekking"),
        ("Tablet", "electronics", "Electronics › Computers & Accessories › Computers & Tablets › Tablets"),
        ("E-Reader", "electronics", "Electronics › eBook Readers & Accessories › eBook Readers"),
        (
            "Portable Charger",
            "electronics",
            "Electronics › Cell Phones & Accessories › Chargers & Power Adapters",
        ),
        (
            "Indoor Security Camera",
            "electronics",
            "Electronics › Camera & Photo › Surveillance Cameras › Dome Cameras",
        ),
        (
            "Electric Kettle",
            "kitchen",
            "Home & Kitchen › Kitchen & Dining › Small Appliances › Electric Kettles",
        ),
        (
            "Mechanical Keyboard",
            "electronics",
            "Electronics › Computers & Accessories › Computer Accessories › Keyboards",
        ),
        (
            "Wireless Earbuds",
            "electronics",
            "Electronics › Headphones, Earbuds & Accessories › Earbud Headphones",
        ),
        (
            "Smart Thermostat",
            "home",
            "Tools & Home Improvement › Heating, Cooling & Air Quality › Thermostats",
        ),
        (
            "Fleece Jacket",
            "fashion",
            "Clothing, Shoes & Jewelry › Women › Clothing › Coats, Jackets & Vests › Fleece",
        ),
        ("Wall Clock", "home", "Home & Kitchen › Home Décor Products › Clocks › Wall Clocks"),
        (
            "Dumbbell Set",
            "sports",
            "Sports & Outdoors › Sports & Fitness › Exercise & Fitness › Strength Training › Dumbbells",
        ),
        ("Pet Bed", "home", "Pet Supplies › Dogs › Beds & Furniture › Beds"),
        (
            "Espresso Machine",
            "kitchen",
            "Home & Kitchen › Kitchen & Dining › Coffee, Tea & Espresso › Espresso Machines",
        ),
        ("Cycling Helmet", "sports", "Sports & Outdoors › Outdoor Recreation › Cycling › Helmets"),
        ("LED Light Bulb", "home", "Tools & Home Improvement › Light Bulbs › LED Bulbs"),
        (
            "Digital Camera",
            "electronics",
            "Electronics › Camera & Photo › Digital Cameras › Mirrorless Cameras",
        ),
        ("Bookshelf", "home", "Home & Kitchen › Furniture › Living Room Furniture › Bookcases"),
        ("Bicycle", "sports", "Sports & Outdoors › Outdoor Recreation › Cycling › Bikes"),
        ("Sneakers", "footwear", "Clothing, Shoes & Jewelry › Women › Shoes › Fashion Sneakers"),
        ("Office Chair", "home", "Home & Kitchen › Furniture › Home Office Furniture › Home Office Chairs"),
        ("Smart Watch", "electronics", "Electronics › Wearable Technology › Smartwatches"),
        ("Tea Kettle", "kitchen", "Home & Kitchen › Kitchen & Dining › Coffee, Tea & Espresso › Tea Kettles"),
        (
            "Luggage Set",
            "sports",
            "Clothing, Shoes & Jewelry › Luggage & Travel Gear › Luggage › Luggage Sets",
        ),
        (
            "Patio Umbrella",
            "home",
            "Patio, Lawn & Garden › Patio Furniture & Accessories › Umbrellas & Shade",
        ),
        ("Air Purifier", "home", "Home & Kitchen › Heating, Cooling & Air Quality › Air Purifiers"),
        ("Makeup Kit", "beauty", "Beauty & Personal Care › Makeup › Makeup Sets"),
        ("Skateboard", "sports", "Sports & Outdoors › Sports › Skates, Skateboards & Scooters › Skateboards"),
        ("Jigsaw Puzzle", "office", "Toys & Games › Puzzles › Jigsaw Puzzles"),
        ("Grill", "kitchen", "Patio, Lawn & Garden › Grills & Outdoor Cooking › Grills"),
        (
            "Headphones",
            "electronics",
            "Electronics › Headphones, Earbuds & Accessories › Over-Ear Headphones",
        ),
        ("Vacuum Cleaner", "home", "Home & Kitchen › Vacuums & Floor Care › Vacuums"),
        ("Perfume", "beauty", "Beauty & Personal Care › Fragrance › Eau de Parfum"),
    )
)

BRANDS = (
    "Norvik",
    "Alderon",
    "Brightwell",
    "Castora",
    "Dunmore",
    "Everline",
    "Fjordan",
    "Glenhaven",
    "Halvard",
    "Ironpeak",
    "Juniperlane",
    "Kestrel",
    "Lumora",
    "Marlowe",
    "Northcrest",
    "Oakridge",
    "Pellucid",
    "Quillon",
    "Redwater",
    "Solstra",
    "Tidewell",
    "Umbria",
    "Velmora",
    "Westbrook",
    "Yarrowby",
    "Zephra",
)

# Filler sentences for descriptions and bullets; they name no attribute of any pool (tests check).
DESCRIPTION_OPENINGS = (
    "The {brand} {type} is built for everyday use at home, at work and on the go.",
    "Meet the {brand} {type}: a dependable pick that keeps things simple.",
    "Designed by {brand}, this {type} balances good looks with practical details.",
    "This {type} from {brand} is made to keep up with busy days.",
)
DESCRIPTION_CLOSINGS = (
    "Backed by a one year limited warranty.",
    "Ships in recyclable packaging.",
    "Customer support is available seven days a week.",
    "A thoughtful present for friends and family.",
)
INSTRUCTION_TEMPLATES = (
    "i am looking for {a_type}{type} that {is_} {attrs}{opts}",
    "i need {a_attrs}{attrs} {type}{opts}",
    "find me {a_type}{type} which {is_} {attrs}{opts}",
    "i want to buy {a_attrs}{attrs} {type}{opts}",
    "i'm looking for {a_type}{type}, {attrs}{opts}",
)
ASIN_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
RESERVED_LABELS = frozenset(
    {
        "search",
        "back to search",
        "next >",
        "< prev",
        "description",
        "features",
        "reviews",
        "buy now",
        "attributes",
    }
)


@lru_cache(maxsize=1)
def seed_types() -> dict[str, dict[str, Any]]:
    """Option groups (lower-cased values) and price band of each tau-bench product type."""
    text = resources.files("agentrl.envs.webshop").joinpath("data/products.json").read_text(encoding="utf-8")
    out: dict[str, dict[str, Any]] = {}
    for product in json.loads(text).values():
        groups: dict[str, list[str]] = {}
        prices = []
        for variant in product["variants"].values():
            prices.append(float(variant["price"]))
            for group, value in variant["options"].items():
                values = groups.setdefault(group.lower(), [])
                if str(value).lower() not in values:
                    values.append(str(value).lower())
        out[product["name"]] = {"options": groups, "price": (min(prices), max(prices))}
    return out


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _is_plural(type_name: str) -> bool:
    return type_name.endswith("s") and not type_name.endswith("ss")


def _article(next_word: str, plural: bool) -> str:
    """ "a " / "an " before a singular noun phrase, nothing before a plural one ("hiking boots")."""
    if plural:
        return ""
    return "an " if next_word[0] in "aeiou" else "a "


def _price_text(price: float) -> str:
    return f"${price:.2f}"


class _Builder:
    """Draws products and goals from one seeded RNG, in a fixed order."""

    def __init__(self, seed: int, goals_per_product: int) -> None:
        self.rng = random.Random(seed)
        self.goals_per_product = goals_per_product
        self.asins: set[str] = set()
        self.seeds = seed_types()

    def asin(self) -> str:
        while True:
            code = "B0" + "".join(self.rng.choice(ASIN_CHARS) for _ in range(8))
            if code not in self.asins:
                self.asins.add(code)
                return code

    def options(self, ptype: ProductType) -> dict[str, list[str]]:
        """1-3 option groups with 2-4 values each; a value appears in one group only (clicks are by value)."""
        groups = self.seeds[ptype.name]["options"]
        names = sorted(groups)
        chosen = self.rng.sample(names, k=min(len(names), self.rng.randint(1, 3)))
        seen: set[str] = set()
        out: dict[str, list[str]] = {}
        for name in sorted(chosen, key=names.index):
            values = [v for v in groups[name] if v not in seen and v not in RESERVED_LABELS]
            if len(values) < 2:
                continue
            take = self.rng.sample(values, k=min(len(values), self.rng.randint(2, 4)))
            out[name] = take
            seen.update(take)
        return out

    def price(self, ptype: ProductType) -> float:
        low, high = self.seeds[ptype.name]["price"]
        return round(self.rng.uniform(0.8 * low, 1.1 * high)) - 0.01

    def product(
        self,
        ptype: ProductType,
        brand: str,
        attributes: list[str],
        options: dict[str, list[str]],
        price: float,
        ranged: bool,
    ) -> tuple[dict[str, Any], list[str]]:
        """One product in the items_shuffle schema (and its attributes)."""
        type_name = ptype.name
        head, *rest = attributes
        name = f"{brand} {head.title()} {type_name}" + (
            f" with {_join([a.title() for a in rest])}" if rest else ""
        )
        bullets = [
            f"{a.capitalize()}: a {type_name.lower()} detail you will notice from day one."
            for a in attributes
        ]
        opening = self.rng.choice(DESCRIPTION_OPENINGS).format(brand=brand, type=type_name.lower())
        description = f"{opening} It is {_join(attributes)}. {self.rng.choice(DESCRIPTION_CLOSINGS)}"
        pricing = _price_text(price)
        if ranged:
            pricing = f"{pricing} - {_price_text(price * self.rng.uniform(1.05, 1.25))}"
        product = {
            "asin": self.asin(),
            "name": name,
            "full_description": description,
            "small_description": bullets,
            "pricing": pricing,
            "customization_options": {
                g: [{"value": v, "image": None} for v in vals] for g, vals in options.items()
            },
            "category": CATEGORY_OF_DEPARTMENT[ptype.department],
            "query": type_name.lower(),
            "product_category": ptype.product_category,
            "images": [PLACEHOLDER_IMAGE],
            "average_rating": "N.A.",
        }
        return product, list(attributes)

    def family(self, ptype: ProductType, size: int) -> list[tuple[dict[str, Any], list[str]]]:
        """A base product and ``size - 1`` distractors of the same type (attribute, options, price)."""
        pool = ATTRIBUTE_POOLS[ptype.department]
        brand = self.rng.choice(BRANDS)
        attributes = self.rng.sample(pool, k=self.rng.randint(3, 4))
        options = self.options(ptype)
        price = self.price(ptype)
        ranged = self.rng.random() < 0.15
        out = [self.product(ptype, brand, attributes, options, price, ranged)]
        for i in range(1, size):
            kind = ("attribute", "options", "price")[(i - 1) % 3]
            attrs, opts, p = list(attributes), {g: list(v) for g, v in options.items()}, price
            if kind == "attribute":
                spare = [a for a in pool if a not in attributes]
                attrs[self.rng.randrange(len(attrs))] = self.rng.choice(spare)
            elif kind == "options" and opts:
                group = self.rng.choice(sorted(opts))
                all_values = [
                    v
                    for v in self.seeds[ptype.name]["options"][group]
                    if v not in {x for g, vs in opts.items() if g != group for x in vs}
                    and v not in RESERVED_LABELS
                ]
                fresh = [v for v in all_values if v not in opts[group]]
                keep = self.rng.sample(opts[group], k=max(1, len(opts[group]) - 1))
                opts[group] = keep + fresh[:1] if fresh else keep
            else:
                p = round(price * self.rng.uniform(1.4, 1.9)) - 0.01
            out.append(self.product(ptype, self.rng.choice(BRANDS), attrs, opts, p, ranged))
        return out

    def goals(self, product: dict[str, Any], attributes: list[str]) -> list[dict[str, Any]]:
        """Instructions asking for a subset of the product's attributes and one value per chosen option group."""
        out: list[dict[str, Any]] = []
        type_name = product["query"]
        plural = _is_plural(type_name)
        seen: set[str] = set()
        while len(out) < self.goals_per_product:
            attrs = self.rng.sample(
                attributes, k=self.rng.randint(min(2, len(attributes)), min(3, len(attributes)))
            )
            groups = list(product["customization_options"])
            chosen = self.rng.sample(groups, k=self.rng.randint(min(1, len(groups)), min(2, len(groups))))
            picks = [(g, self.rng.choice(product["customization_options"][g])["value"]) for g in chosen]
            opts = " with " + " and ".join(f"{g} {v}" for g, v in picks) if picks else ""
            instruction = self.rng.choice(INSTRUCTION_TEMPLATES).format(
                a_type=_article(type_name, plural),
                a_attrs=_article(attrs[0], plural),
                type=type_name,
                attrs=_join(attrs),
                opts=opts,
                is_="are" if plural else "is",
            )
            if instruction in seen and len(seen) < 20:
                continue
            seen.add(instruction)
            out.append(
                {
                    "asin": product["asin"],
                    "instruction": instruction,
                    "instruction_attributes": attrs,
                    "instruction_options": [v for _, v in picks],
                }
            )
        return out


def generate_catalogue(
    seed: int = 0, num_products: int = 1000, goals_per_product: int = 3, family_size: int = 4
) -> dict[str, Any]:
    """Build products and goals in the original schema: ``{"items", "attributes", "human_ins", "reviews"}``.

    Products are shuffled (the original ``items_shuffle`` files are) so that ``num_products``
    prefixes of a bigger catalogue stay a fair sample.
    """
    if num_products < len(PRODUCT_TYPES):
        raise ValueError(
            f"num_products must be >= {len(PRODUCT_TYPES)} (one per product type), got {num_products}"
        )
    if goals_per_product < 1 or family_size < 1:
        raise ValueError(
            f"goals_per_product and family_size must be >= 1, got {goals_per_product}, {family_size}"
        )
    builder = _Builder(seed, goals_per_product)
    made: list[tuple[dict[str, Any], list[str]]] = []
    n_types = len(PRODUCT_TYPES)
    for t, ptype in enumerate(PRODUCT_TYPES):
        per_type = num_products // n_types + (1 if t < num_products % n_types else 0)
        done = 0
        while done < per_type:
            family = builder.family(ptype, min(family_size, per_type - done))
            made.extend(family)
            done += len(family)
    builder.rng.shuffle(made)
    items = [p for p, _ in made]
    attributes = {
        p["asin"]: {"attributes": attrs, "instruction": None, "instruction_attributes": None}
        for p, attrs in made
    }
    human_ins = {p["asin"]: builder.goals(p, attrs) for p, attrs in made}
    for asin, goals in human_ins.items():
        attributes[asin]["instruction"] = goals[0]["instruction"]
        attributes[asin]["instruction_attributes"] = goals[0]["instruction_attributes"]
    reviews = [{"asin": p["asin"], "reviews": [], "average_rating": "N.A."} for p in items]
    return {"items": items, "attributes": attributes, "human_ins": human_ins, "reviews": reviews}


def write_catalogue(
    out_dir: str | Path, seed: int = 0, num_products: int = 1000, goals_per_product: int = 3
) -> list[Path]:
    """Write the four original-schema files into ``out_dir``; returns their paths."""
    data = generate_catalogue(seed, num_products, goals_per_product)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        out / items_file(num_products),
        out / attrs_file(num_products),
        out / HUMAN_INS_FILE,
        out / REVIEWS_FILE,
    ]
    for path, key in zip(paths, ("items", "attributes", "human_ins", "reviews"), strict=True):
        path.write_text(json.dumps(data[key], indent=1, ensure_ascii=False), encoding="utf-8")
    return paths
