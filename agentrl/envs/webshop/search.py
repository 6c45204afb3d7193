"""BM25 product search (bm25s), indexing what the original Pyserini index held per product.

The original document is ``title + description + first bullet + "name: v1, v2, and name: ..."``,
lower-cased, searched with Lucene's BM25 (k1=0.9, b=0.4), English stopwords and Porter-style
stemming; results are the top 50 hits with a positive score, ties broken by catalogue order.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

SEARCH_RETURN_N = 50
_TOKEN = re.compile(r"\w+")
_STOP = frozenset(STOPWORDS_EN)


def product_document(product: Mapping[str, Any]) -> str:
    """The searchable text of one product, as the original index built it."""
    option_text = ", and ".join(f"{name}: {', '.join(values)}" for name, values in product["options"].items())
    bullets = product["BulletPoints"]
    return " ".join(
        [product["Title"], product["Description"], bullets[0] if bullets else "", option_text]
    ).lower()


class SearchEngine:
    """BM25 over the catalogue; ``search(keywords)`` returns asins, best first (memoised)."""

    def __init__(
        self,
        products: Sequence[Mapping[str, Any]],
        *,
        k1: float = 0.9,
        b: float = 0.4,
        cache_size: int = 4096,
    ) -> None:
        self._stemmer = Stemmer.Stemmer("english")
        self.asins = [p["asin"] for p in products]
        corpus = [self.tokenize(product_document(p)) or [""] for p in products]
        self._bm25 = bm25s.BM25(k1=k1, b=b)
        self._bm25.index(corpus, show_progress=False)
        self._vocab = self._bm25.vocab_dict
        self._cache: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # envs in several threads may share one engine

    def tokenize(self, text: str) -> list[str]:
        words = [w for w in _TOKEN.findall(text.lower()) if w not in _STOP]
        return self._stemmer.stemWords(words)

    def search(self, keywords: str, k: int = SEARCH_RETURN_N) -> tuple[str, ...]:
        key = f"{k}\x00{keywords}"
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        tokens = [t for t in self.tokenize(keywords) if t in self._vocab]
        if not tokens:
            result: tuple[str, ...] = ()
        else:
            scores = np.asarray(self._bm25.get_scores(tokens), dtype=np.float64)
            order = np.lexsort((np.arange(len(scores)), -scores))[:k]
            result = tuple(self.asins[i] for i in order if scores[i] > 0)
        with self._lock:
            self._cache[key] = result
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result
