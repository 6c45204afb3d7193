"""A synthetic world for multi-hop QA, deterministic by seed and free of pre-training contamination.

Fictional countries, cities, universities, companies and people are linked by typed relations
(a person is born in a city, works for a company, ...). Every entity gets one templated document;
distractor documents mention entities without stating any relation (hard negatives for BM25).
Questions chain 1-3 relations ("What is the currency of the country containing the birthplace of
X?") and carry their decomposition into single-fact sub-questions, which the oracle follows.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agentrl.envs.search.data import Doc, Hop, Question, write_corpus, write_qa

__all__ = ["DEFAULT_NUM_DOCS", "RELATIONS", "Relation", "World", "generate_world"]

DEFAULT_NUM_DOCS = 10_000
DEFAULT_TRAIN, DEFAULT_TEST = 3000, 500
HOP_WEIGHTS = (0.4, 0.35, 0.25)  # share of 1-, 2- and 3-hop questions

_ONSETS = (
    "b",
    "br",
    "c",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "h",
    "k",
    "kr",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "st",
    "t",
    "tr",
    "v",
    "vr",
    "z",
    "th",
    "sh",
    "qu",
    "y",
    "w",
)
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou", "y")
_CODAS = ("", "", "n", "r", "l", "s", "th", "rd", "nd", "x", "m", "sk")
OCCUPATIONS = (
    "painter",
    "engineer",
    "botanist",
    "composer",
    "surgeon",
    "architect",
    "novelist",
    "astronomer",
    "chemist",
    "sculptor",
    "economist",
    "poet",
    "cartographer",
    "linguist",
    "pilot",
    "historian",
)
INDUSTRIES = (
    "shipping",
    "textile",
    "software",
    "mining",
    "publishing",
    "aerospace",
    "brewing",
    "insurance",
    "robotics",
    "pharmaceutical",
    "glassware",
    "railway",
)
CONTINENTS = ("Aurelia", "Borvania", "Caldessa", "Dunmarch", "Estoria", "Fennmoor")
CURRENCY_UNITS = ("mark", "crown", "florin", "dinar", "thaler", "sol", "real", "pound")
COMPANY_SUFFIXES = ("Industries", "Works", "Holdings", "Group", "Company", "Labs", "Partners")
UNIVERSITY_FORMS = ("{} University", "{} Institute of Technology", "University of {}", "{} College")
ENTITY_TYPES = ("country", "city", "university", "company", "person")
_TYPE_SHARE = {"country": 0.02, "city": 0.10, "university": 0.03, "company": 0.15}
DISTRACTOR_SHARE = 0.15
MAX_MISSES = 5000


@dataclass(frozen=True)
class Relation:
    """A typed relation: ``question`` asks for it about ``{x}``; ``phrase`` names its value (for chaining)."""

    name: str
    domain: str
    range: str | None  # an entity type, or None for a literal attribute (ends a chain)
    question: str
    phrase: str | None = None


RELATIONS: tuple[Relation, ...] = (
    Relation("born_in", "person", "city", "Where was {x} born?", "the birthplace of {x}"),
    Relation("employer", "person", "company", "Which company does {x} work for?", "the employer of {x}"),
    Relation(
        "alma_mater",
        "person",
        "university",
        "Which university did {x} attend?",
        "the university {x} attended",
    ),
    Relation("birth_year", "person", None, "In what year was {x} born?"),
    Relation("occupation", "person", None, "What is the occupation of {x}?"),
    Relation("founder", "company", "person", "Who founded {x}?", "the founder of {x}"),
    Relation(
        "headquarters",
        "company",
        "city",
        "In which city is {x} headquartered?",
        "the headquarters city of {x}",
    ),
    Relation("industry", "company", None, "What industry is {x} in?"),
    Relation("founded", "company", None, "In what year was {x} founded?"),
    Relation("city_of", "university", "city", "In which city is {x} located?", "the home city of {x}"),
    Relation("established", "university", None, "In what year was {x} established?"),
    Relation("country", "city", "country", "Which country is {x} located in?", "the country containing {x}"),
    Relation("river", "city", None, "Which river flows through {x}?"),
    Relation("capital", "country", "city", "What is the capital of {x}?", "the capital of {x}"),
    Relation("currency", "country", None, "What is the currency of {x}?"),
    Relation("language", "country", None, "What is the official language of {x}?"),
    Relation("continent", "country", None, "On which continent is {x}?"),
)
_BY_DOMAIN = {t: tuple(r for r in RELATIONS if r.domain == t) for t in ENTITY_TYPES}


@dataclass(frozen=True)
class World:
    """Documents plus question splits; ``facts[entity][relation]`` holds the ground truth."""

    docs: tuple[Doc, ...]
    splits: Mapping[str, tuple[Question, ...]]
    name: str = "synthetic"
    facts: Mapping[str, Mapping[str, str]] = field(default_factory=dict, repr=False, compare=False)

    def questions(self, split: str) -> tuple[Question, ...]:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; this world has {sorted(self.splits)}")
        return self.splits[split]

    def export(self, out_dir: str | Path, qa_format: str = "jsonl") -> dict[str, Path]:
        """Write ``corpus.jsonl`` and one ``<split>.<qa_format>`` per split (Search-R1 formats)."""
        if qa_format not in ("jsonl", "parquet"):
            raise ValueError(f"qa_format must be 'jsonl' or 'parquet', got {qa_format!r}")
        out = Path(out_dir)
        paths = {"corpus": write_corpus(self.docs, out / "corpus.jsonl")}
        for split, qs in self.splits.items():
            paths[split] = write_qa(qs, out / f"{split}.{qa_format}")
        return paths


class _Names:
    """Unique pronounceable names from one seeded RNG."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: int) -> str:
        parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables)]
        return ("".join(parts) + self.rng.choice(_CODAS)).capitalize()

    def unique(self, make: Any) -> str:
        for _ in range(1000):
            name = make()
            if name.lower() not in self.used:
                self.used.add(name.lower())
                return name
        raise RuntimeError("the name space is exhausted; use fewer documents")


def _counts(num_docs: int) -> dict[str, int]:
    entity_docs = num_docs - round(num_docs * DISTRACTOR_SHARE)
    counts = {t: max(3, round(num_docs * share)) for t, share in _TYPE_SHARE.items()}
    counts["person"] = entity_docs - sum(counts.values())
    if counts["person"] < 3:
        raise ValueError(f"num_docs={num_docs} is too small for a world; use at least 100")
    return counts


def _entities(
    rng: random.Random, counts: Mapping[str, int]
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """(entity -> type, entity -> {relation: value}) for a fresh world."""
    names = _Names(rng)
    kind: dict[str, str] = {}
    facts: dict[str, dict[str, str]] = {}

    def add(t: str, name: str, **rel: str) -> str:
        kind[name], facts[name] = t, dict(rel)
        return name

    countries = [
        add(
            "country",
            names.unique(
                lambda: names.word(rng.randint(2, 3)) + rng.choice(("ia", "land", "mark", "stan", ""))
            ),
        )
        for _ in range(counts["country"])
    ]
    for c in countries:
        stem = names.unique(lambda: names.word(2))
        facts[c].update(
            currency=f"{stem.lower()} {rng.choice(CURRENCY_UNITS)}",
            language=names.unique(lambda: names.word(2) + "ish"),
            continent=rng.choice(CONTINENTS),
        )
    cities = []
    for i in range(counts["city"]):
        country = (
            countries[i] if i < len(countries) else rng.choice(countries)
        )  # every country gets a city: its capital
        river = names.unique(lambda: names.word(2))
        cities.append(
            add("city", names.unique(lambda: names.word(rng.randint(2, 3))), country=country, river=river)
        )
        if i < len(countries):
            facts[country]["capital"] = cities[-1]
    for _ in range(counts["university"]):
        city = rng.choice(cities)
        form = rng.choice(UNIVERSITY_FORMS)
        add(
            "university",
            names.unique(lambda form=form: form.format(names.word(2))),
            city_of=city,
            established=str(rng.randint(1500, 1990)),
        )
    firsts = sorted({names.word(rng.randint(1, 2)) for _ in range(400)})
    people = [
        add(
            "person",
            names.unique(lambda: f"{rng.choice(firsts)} {names.word(rng.randint(2, 3))}"),
            occupation=rng.choice(OCCUPATIONS),
            birth_year=str(rng.randint(1900, 2000)),
            born_in=rng.choice(cities),
        )
        for _ in range(counts["person"])
    ]
    companies = [
        add(
            "company",
            names.unique(lambda: f"{names.word(2)} {rng.choice(COMPANY_SUFFIXES)}"),
            founder=rng.choice(people),
            headquarters=rng.choice(cities),
            industry=rng.choice(INDUSTRIES),
            founded=str(rng.randint(1850, 2020)),
        )
        for _ in range(counts["company"])
    ]
    universities = [e for e, t in kind.items() if t == "university"]
    for p in people:
        facts[p].update(employer=rng.choice(companies), alma_mater=rng.choice(universities))
    return kind, facts


def _entity_text(t: str, name: str, f: Mapping[str, str]) -> str:
    if t == "person":
        return (
            f"{name} is a {f['occupation']} born in {f['birth_year']} in {f['born_in']}. "
            f"{name} studied at {f['alma_mater']} and works for {f['employer']}."
        )
    if t == "company":
        return (
            f"{name} is a {f['industry']} company founded in {f['founded']} by {f['founder']}. "
            f"{name} is headquartered in {f['headquarters']}."
        )
    if t == "city":
        return f"{name} is a city located in {f['country']}. The {f['river']} river flows through {name}."
    if t == "university":
        return f"{name} is a university located in {f['city_of']}, established in {f['established']}."
    return (
        f"{name} is a country on the continent of {f['continent']}. The capital of {name} is {f['capital']}. "
        f"The currency of {name} is the {f['currency']}, and its official language is {f['language']}."
    )


def _distractor(rng: random.Random, i: int, by_type: Mapping[str, Sequence[str]]) -> Doc:
    a, b = rng.sample(by_type["person"], 2)
    city, company = rng.choice(by_type["city"]), rng.choice(by_type["company"])
    year = rng.randint(1900, 2020)
    text = rng.choice(
        (
            f"{a} and {b} met at a festival in {city} in {year}. The festival was sponsored by {company}.",
            f"In {year}, {company} held a conference in {city}; the speakers included {a} and {b}.",
            f"A {year} review compared the work of {a} with that of {b}, both admirers of {city}.",
        )
    )
    return Doc(f"x{i}", f"Notes {i}", text)


def _question(
    rng: random.Random,
    hops: int,
    by_type: Mapping[str, Sequence[str]],
    kind: Mapping[str, str],
    facts: Mapping[str, Mapping[str, str]],
    doc_of: Mapping[str, str],
) -> tuple[str, str, tuple[Hop, ...]] | None:
    """A random chain of ``hops`` relations; None when the walk comes back to an entity it visited."""
    start_types = (
        [t for t in ENTITY_TYPES if any(r.range for r in _BY_DOMAIN[t])] if hops > 1 else list(ENTITY_TYPES)
    )
    subject = rng.choice(by_type[rng.choice(start_types)])
    seen: set[str] = {subject}
    rels: list[Relation] = []
    chain: list[Hop] = []
    current = subject
    for h in range(hops):
        options = (
            _BY_DOMAIN[kind[current]]
            if h == hops - 1
            else tuple(r for r in _BY_DOMAIN[kind[current]] if r.range)
        )
        rel = rng.choice(options)
        value = facts[current][rel.name]
        if value in seen:
            return None
        rels.append(rel)
        chain.append(Hop(rel.question.format(x=current), value, doc_of[current]))
        seen.add(value)
        current = value
    phrase = subject
    for rel in rels[:-1]:
        assert rel.phrase is not None
        phrase = rel.phrase.format(x=phrase)
    text = rels[-1].question.format(x=phrase)
    return text, chain[-1].answer, tuple(chain)


@lru_cache(maxsize=8)
def generate_world(
    seed: int = 0,
    num_docs: int = DEFAULT_NUM_DOCS,
    num_train: int = DEFAULT_TRAIN,
    num_test: int = DEFAULT_TEST,
) -> World:
    """The synthetic world of ``seed``: ``num_docs`` documents, train/test questions (test texts unseen in train)."""
    if num_docs < 100:
        raise ValueError(f"num_docs must be >= 100, got {num_docs}")
    if num_train < 0 or num_test < 0:
        raise ValueError(f"num_train and num_test must be >= 0, got {num_train}, {num_test}")
    rng = random.Random(seed)
    counts = _counts(num_docs)
    kind, facts = _entities(rng, counts)
    by_type: dict[str, list[str]] = {t: [] for t in ENTITY_TYPES}
    for name, t in kind.items():
        by_type[t].append(name)
    doc_of = {name: f"e{i}" for i, name in enumerate(kind)}
    docs = [Doc(doc_of[name], name, _entity_text(t, name, facts[name])) for name, t in kind.items()]
    docs += [_distractor(rng, i, by_type) for i in range(num_docs - len(docs))]
    order = list(range(len(docs)))
    rng.shuffle(order)  # entity documents are not all at the front of the corpus
    docs = [docs[i] for i in order]

    wanted = num_train + num_test
    seen: set[str] = set()
    made: list[tuple[str, str, tuple[Hop, ...]]] = []
    misses = 0
    while len(made) < wanted and misses < MAX_MISSES:  # many misses in a row: the world has no more questions
        hops = rng.choices((1, 2, 3), weights=HOP_WEIGHTS)[0]
        q = _question(rng, hops, by_type, kind, facts, doc_of)
        if q is None or q[0] in seen:
            misses += 1
            continue
        misses = 0
        seen.add(q[0])
        made.append(q)
    if len(made) < wanted:
        raise ValueError(
            f"could not draw {wanted} distinct questions from {num_docs} documents; ask for fewer"
        )
    test, train = made[:num_test], made[num_test:]
    splits = {
        split: tuple(
            Question(f"{split}-{i}", text, (answer,), len(chain), chain)
            for i, (text, answer, chain) in enumerate(rows)
        )
        for split, rows in (("train", train), ("test", test))
    }
    frozen_facts = MappingProxyType({k: MappingProxyType(v) for k, v in facts.items()})
    return World(tuple(docs), MappingProxyType(splits), f"synthetic-{seed}-{num_docs}", frozen_facts)
