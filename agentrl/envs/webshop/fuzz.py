"""``token_set_ratio`` as the original WebShop reward computes it, and the variants kept as named options.

The original reward (princeton-nlp/WebShop, ``web_agent_site/engine/goal.py``) calls
``thefuzz.fuzz.token_set_ratio(a, b)`` and counts a match when the score is ``> 85``. WebShop's
``requirements.txt`` pins ``thefuzz==0.19.0`` and does not list python-Levenshtein, so thefuzz falls
back to ``difflib.SequenceMatcher``. What that version does (read from thefuzz 0.19.0,
``thefuzz/fuzz.py``, ``utils.py`` and ``string_processing.py``), rewritten here:

1. preprocessing (``utils.full_process`` with ``force_ascii=True``): code points 128-255 are deleted
   (so "é" disappears: "café" -> "caf"; letters above U+00FF such as "ł" stay), every ``\\W``
   character becomes a space (``_`` is a word character and stays), then lower-case and strip;
2. an empty processed string scores 0;
3. tokens are split on whitespace into two sets; with ``sect`` = sorted intersection, ``c12`` =
   ``sect`` + sorted tokens only in the first, ``c21`` likewise, the score is the maximum of
   ``ratio(sect, c12)``, ``ratio(sect, c21)`` and ``ratio(c12, c21)``;
4. ``ratio(x, y)`` is 100 when ``x == y``, 0 when either is empty, else
   ``int(round(100 * SequenceMatcher(None, x, y).ratio()))``: every ratio is rounded to an integer
   (Python's ``round``, half to even) before the maximum is taken.

Named variants (``RewardConfig.fuzz``):

- ``"thefuzz-0.19"`` (default): the above, pure Python (difflib is in the standard library);
- ``"thefuzz-0.20"``: thefuzz >= 0.20 (seatgeek/thefuzz, ``thefuzz/fuzz.py``: ``_rapidfuzz_scorer``),
  which deletes code points 128-255 the same way, then uses rapidfuzz's ``default_process``
  (non-alphanumerics, ``_`` included, become spaces) and rapidfuzz's token_set_ratio (an
  LCS-based ratio instead of difflib's matching blocks), rounded with ``int(round(...))``;
- ``"agentrl"``: what agentrl used before (rapidfuzz with ``default_process``): a float, no
  rounding, accented letters kept.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from functools import lru_cache

FUZZ_VARIANTS = ("thefuzz-0.19", "thefuzz-0.20", "agentrl")

# thefuzz's "ascii dammit": code points 128..255 are deleted, not transliterated
_LATIN1_DELETE = dict.fromkeys(range(128, 256))
_NON_WORD = re.compile(r"\W")


def full_process(text: str) -> str:
    """thefuzz 0.19.0 ``utils.full_process(text, force_ascii=True)``."""
    return _NON_WORD.sub(" ", str(text).translate(_LATIN1_DELETE)).lower().strip()


def _ratio(a: str, b: str) -> int:
    # thefuzz 0.19.0 fuzz.ratio: equivalence is checked before emptiness
    if a == b:
        return 100
    if not a or not b:
        return 0
    return round(100 * SequenceMatcher(None, a, b).ratio())


def _token_set_parts(p1: str, p2: str) -> tuple[str, str, str]:
    t1, t2 = set(p1.split()), set(p2.split())
    sect = " ".join(sorted(t1 & t2))
    c12 = (sect + " " + " ".join(sorted(t1 - t2))).strip()
    c21 = (sect + " " + " ".join(sorted(t2 - t1))).strip()
    return sect, c12, c21


@lru_cache(maxsize=65536)
def token_set_ratio_019(s1: str, s2: str) -> int:
    """thefuzz 0.19.0 ``fuzz.token_set_ratio(s1, s2)`` without python-Levenshtein (WebShop's pinned setup)."""
    p1, p2 = full_process(s1), full_process(s2)
    if not p1 or not p2:
        return 0
    sect, c12, c21 = _token_set_parts(p1, p2)
    return max(_ratio(sect, c12), _ratio(sect, c21), _ratio(c12, c21))


@lru_cache(maxsize=65536)
def token_set_ratio_020(s1: str, s2: str) -> int:
    """thefuzz >= 0.20 ``fuzz.token_set_ratio(s1, s2)`` (rapidfuzz underneath), integer-rounded."""
    from rapidfuzz import fuzz
    from rapidfuzz.utils import default_process

    p1 = default_process(str(s1).translate(_LATIN1_DELETE))
    p2 = default_process(str(s2).translate(_LATIN1_DELETE))
    return round(fuzz.token_set_ratio(p1, p2))


def token_set_ratio_agentrl(s1: str, s2: str) -> float:
    """agentrl's earlier score: rapidfuzz token_set_ratio with ``default_process``; a float, accents kept."""
    from rapidfuzz import fuzz
    from rapidfuzz.utils import default_process

    return fuzz.token_set_ratio(s1, s2, processor=default_process)


def token_set_ratio(s1: str, s2: str, variant: str = "thefuzz-0.19") -> float:
    """token_set_ratio of ``variant`` (one of ``FUZZ_VARIANTS``); the default is the original's."""
    if variant == "thefuzz-0.19":
        return token_set_ratio_019(s1, s2)
    if variant == "thefuzz-0.20":
        return token_set_ratio_020(s1, s2)
    if variant == "agentrl":
        return token_set_ratio_agentrl(s1, s2)
    raise ValueError(f"unknown fuzz variant {variant!r}; choose one of {FUZZ_VARIANTS}")
