"""Build the noun lexicon from a spaCy model, and measure r_type against the original's with that model.

Needs spaCy and an English model in the running interpreter (agentrl installs neither)::

    python -m agentrl.envs.webshop.lexicon_tool build --model en_core_web_sm
    python -m agentrl.envs.webshop.lexicon_tool measure --model en_core_web_sm --seed 0 --num-products 1000

``--model`` is whatever ``spacy.load`` takes: an installed package name or a model directory.

``build`` tags the names of generated catalogues (``--catalogues``, default ``0-45:1000,100:3000``:
seeds 0..45 with 1,000 products and seed 100 with 3,000) and writes ``noun_lexicon_data.py``.

``measure`` compares, over every (goal, product) pair of one generated catalogue (all goals x all
products: every purchase the reward can score), the r_type of ``--nouns``/``--title-denominator``
with the original's (the spaCy model's nouns, divided by the goal's noun list), and prints the
share of pairs with equal r_type, the disagreements by value, and the mean absolute difference.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentrl.envs.webshop.catalogue import generate_catalogue
from agentrl.envs.webshop.loader import load_shop
from agentrl.envs.webshop.nouns import LEXICON_MODULE, build_lexicon, lexicon_module_text, unknown_tokens
from agentrl.envs.webshop.reward import RewardConfig, type_reward

DEFAULT_CATALOGUES = "0-45:1000,100:3000"


def parse_catalogues(spec: str) -> list[tuple[int, int]]:
    """``"0-2:1000,100:3000"`` -> [(0, 1000), (1, 1000), (2, 1000), (100, 3000)] (seed, num_products)."""
    out: list[tuple[int, int]] = []
    for part in spec.split(","):
        seeds, _, size = part.strip().partition(":")
        lo, _, hi = seeds.partition("-")
        n = int(size) if size else 1000
        out.extend((s, n) for s in range(int(lo), int(hi or lo) + 1))
    return out


def catalogue_names(catalogues: Sequence[tuple[int, int]]) -> list[str]:
    names: set[str] = set()
    for seed, n in catalogues:
        names.update(p["name"] for p in generate_catalogue(seed=seed, num_products=n)["items"])
    return sorted(names)


def tag_names(names: Sequence[str], model: str) -> tuple[dict[str, list[tuple[str, str]]], str]:
    import spacy

    nlp = spacy.load(model)
    tagged = {
        name: [(t.text, t.pos_) for t in doc]
        for name, doc in zip(names, nlp.pipe(names, batch_size=256), strict=True)
    }
    meta = nlp.meta
    return tagged, f"spaCy {spacy.__version__}, {meta.get('lang')}_{meta.get('name')} {meta.get('version')}"


def build(model: str, catalogues: str, out: Path, window: int) -> dict[str, Any]:
    cats = parse_catalogues(catalogues)
    names = catalogue_names(cats)
    tagged, source = tag_names(names, model)
    about = (
        f"Noun contexts derived from {source} (loaded as {Path(model).name!r}) tags of {len(names)} distinct product names "
        f"of agentrl's generated WebShop catalogues {catalogues} (seed:num_products); built by "
        f"python -m agentrl.envs.webshop.lexicon_tool build."
    )
    lexicon = build_lexicon(tagged, window=window, about=about)
    out.write_text(lexicon_module_text(lexicon), encoding="utf-8")
    return {"names": len(names), "contexts": len(lexicon["contexts"]), "out": str(out), "source": source}


def measure(model: str, seed: int, num_products: int, candidate: RewardConfig) -> dict[str, Any]:
    """r_type of ``candidate`` vs the original's (``spacy:<model>``, list denominator) on all (goal, product) pairs."""
    reference = RewardConfig(nouns=f"spacy:{model}", title_denominator="list")
    shop = load_shop(None, num_products, seed)
    goal_keys = Counter((g["name"], g["query"], g["product_category"]) for g in shop.goals)
    product_keys = Counter((p["name"], p["query"], p["product_category"]) for p in shop.products)
    names = sorted({k[0] for k in goal_keys} | {k[0] for k in product_keys})
    unknown = unknown_tokens(names) if candidate.nouns == "lexicon" else set()
    total = equal = 0
    abs_diff = 0.0
    max_diff = 0.0
    by_value: Counter[tuple[float, float]] = Counter()
    examples: dict[tuple[float, float], tuple[str, str]] = {}
    t0 = time.perf_counter()
    for gk, gw in goal_keys.items():
        goal = {"name": gk[0], "query": gk[1], "product_category": gk[2]}
        for pk, pw in product_keys.items():
            product = {"name": pk[0], "query": pk[1], "product_category": pk[2]}
            ref = type_reward(product, goal, reference)["r_type"]
            got = type_reward(product, goal, candidate)["r_type"]
            w = gw * pw
            total += w
            if ref == got:
                equal += w
            else:
                by_value[(ref, got)] += w
                examples.setdefault((ref, got), (gk[0], pk[0]))
                abs_diff += w * abs(ref - got)
                max_diff = max(max_diff, abs(ref - got))
    return {
        "catalogue": {
            "seed": seed,
            "num_products": num_products,
            "goals": len(shop.goals),
            "products": len(shop.products),
        },
        "pairs": total,
        "equal": equal,
        "share_equal": equal / total,
        "mean_abs_diff": abs_diff / total,
        "max_abs_diff": max_diff,
        "unknown_tokens": sorted(unknown),
        "disagreements": [
            {"original": r, "candidate": c, "pairs": n, "example": examples[(r, c)]}
            for (r, c), n in by_value.most_common()
        ],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m agentrl.envs.webshop.lexicon_tool",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="tag generated names with spaCy and write the noun lexicon")
    b.add_argument("--model", required=True, help="spaCy model: package name or directory")
    b.add_argument(
        "--catalogues", default=DEFAULT_CATALOGUES, help="SEEDS:NUM_PRODUCTS,... (default %(default)s)"
    )
    b.add_argument("--window", type=int, default=2, help="context tokens on each side (default 2)")
    b.add_argument("--out", type=Path, default=Path(__file__).parent / LEXICON_MODULE)
    m = sub.add_parser("measure", help="r_type agreement with the original's on every (goal, product) pair")
    m.add_argument("--model", required=True, help="spaCy model: package name or directory")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--num-products", type=int, default=1000)
    m.add_argument("--nouns", default="lexicon", help="candidate tagger (default lexicon)")
    m.add_argument("--title-denominator", default="list", choices=["list", "set"])
    args = parser.parse_args(argv)
    if args.command == "build":
        print(json.dumps(build(args.model, args.catalogues, args.out, args.window), indent=1))
    else:
        candidate = RewardConfig(nouns=args.nouns, title_denominator=args.title_denominator)
        print(json.dumps(measure(args.model, args.seed, args.num_products, candidate), indent=1))


if __name__ == "__main__":
    main()
