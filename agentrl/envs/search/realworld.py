"""A small real-facts world from the MIT package ``countryinfo`` (no download: the data ships inside it).

One document per country (capital, region, subregion, currency codes, demonym, neighbours);
1-hop questions ask for one fact, 2-hop ones go through the capital ("In which subregion is the
country whose capital is Lima?").
"""

from __future__ import annotations

import random
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from agentrl.envs.search.data import Doc, Hop, Question
from agentrl.envs.search.world import World

__all__ = ["countryinfo_world"]

TEST_SHARE = 0.2
_FACTS = (  # (info key, 1-hop question)
    ("capital", "What is the capital of {x}?"),
    ("region", "In which region is {x}?"),
    ("subregion", "In which subregion is {x}?"),
    ("demonym", "What are people from {x} called?"),
    ("currency", "What is the currency code of {x}?"),
)
_VIA_CAPITAL = "Which country has {x} as its capital?"
_PHRASE = "the country whose capital is {x}"


def _countries() -> list[dict[str, Any]]:
    import countryinfo

    rows = []
    for c in countryinfo.all_countries():
        info = c.info()
        capital, name = info.get("capital"), info.get("name")
        if not (
            isinstance(capital, str)
            and capital
            and isinstance(name, str)
            and info.get("region")
            and info.get("subregion")
        ):
            continue
        rows.append(
            {
                "name": name,
                "capital": capital,
                "region": info["region"],
                "subregion": info["subregion"],
                "demonym": info.get("demonym") or "",
                "currency": (info.get("currencies") or [""])[0],
                "borders": list(info.get("borders") or []),
                "alpha3": info.get("ISO", {}).get("alpha3", ""),
                "population": info.get("population"),
            }
        )
    capitals = [r["capital"] for r in rows]
    return sorted((r for r in rows if capitals.count(r["capital"]) == 1), key=lambda r: r["name"])


def _text(r: dict[str, Any], names: dict[str, str]) -> str:
    parts = [
        f"{r['name']} is a country in {r['subregion']}, part of the region {r['region']}. Its capital is {r['capital']}."
    ]
    if r["currency"]:
        parts.append(f"The currency code of {r['name']} is {r['currency']}.")
    if r["demonym"]:
        parts.append(f"People from {r['name']} are called {r['demonym']}.")
    neighbours = [names[b] for b in r["borders"] if b in names]
    if neighbours:
        parts.append(f"{r['name']} borders {', '.join(neighbours)}.")
    if r["population"]:
        parts.append(f"Its population is about {int(r['population']):,}.")
    return " ".join(parts)


@lru_cache(maxsize=2)
def countryinfo_world(seed: int = 0) -> World:
    """Real countries as documents; questions split train/test by ``seed``."""
    rows = _countries()
    names = {r["alpha3"]: r["name"] for r in rows if r["alpha3"]}
    docs = tuple(Doc(f"c{i}", r["name"], _text(r, names)) for i, r in enumerate(rows))
    made: list[tuple[str, str, tuple[Hop, ...]]] = []
    for i, r in enumerate(rows):
        for key, template in _FACTS:
            if r[key]:
                made.append(
                    (
                        template.format(x=r["name"]),
                        r[key],
                        (Hop(template.format(x=r["name"]), r[key], f"c{i}"),),
                    )
                )
                if key not in ("capital",):
                    first = Hop(_VIA_CAPITAL.format(x=r["capital"]), r["name"], f"c{i}")
                    made.append(
                        (template.format(x=_PHRASE.format(x=r["capital"])), r[key], (first, made[-1][2][0]))
                    )
    random.Random(seed).shuffle(made)
    n_test = round(TEST_SHARE * len(made))
    splits = {
        split: tuple(
            Question(f"{split}-{j}", text, (answer,), len(chain), chain)
            for j, (text, answer, chain) in enumerate(part)
        )
        for split, part in (("test", made[:n_test]), ("train", made[n_test:]))
    }
    return World(docs, MappingProxyType(splits), f"countryinfo-{seed}")
