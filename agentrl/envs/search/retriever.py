"""Retrievers: BM25 in-process (bm25s) and a client for a shared retrieval server.

Both answer ``batch_search(queries, topk) -> [[Hit, ...], ...]`` so ``SearchEnv`` takes either.
Scoring is Lucene BM25 with Pyserini's defaults (k1=0.9, b=0.4), English stopwords and Snowball
stemming; ties are broken by corpus order, so results are deterministic.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from agentrl.envs.search.data import Doc, split_contents

__all__ = ["MAX_TOPK", "BM25Retriever", "Hit", "RemoteRetriever", "Retriever", "RetrieverError", "check_topk"]

MAX_TOPK = 100
_TOKEN = re.compile(r"\w+")


class RetrieverError(RuntimeError):
    """The retrieval server could not answer; the message says why."""


@dataclass(frozen=True)
class Hit:
    doc: Doc
    score: float


class Retriever(Protocol):
    def batch_search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]: ...


def check_topk(topk: Any) -> int:
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or not 1 <= topk <= MAX_TOPK:
        raise ValueError(f"topk must be an int in 1..{MAX_TOPK}, got {topk!r}")
    return int(topk)


class BM25Retriever:
    """bm25s over a list of docs; the numba backend compiles the scorer (fastest on CPU; "auto" uses it when
    numba is installed, else numpy)."""

    def __init__(
        self,
        docs: Sequence[Doc],
        *,
        k1: float = 0.9,
        b: float = 0.4,
        backend: str = "auto",
        cache_size: int = 16_384,
    ) -> None:
        import bm25s
        import Stemmer
        from bm25s.stopwords import STOPWORDS_EN

        if not docs:
            raise ValueError("BM25Retriever needs at least one document")
        if backend not in ("auto", "numba", "numpy"):
            raise ValueError(f"backend must be 'auto', 'numba' or 'numpy', got {backend!r}")
        self.docs = list(docs)
        self._stemmer = Stemmer.Stemmer("english")
        self._stop = frozenset(STOPWORDS_EN)
        self._bm25 = bm25s.BM25(k1=k1, b=b, backend=backend)
        self._bm25.index([self.tokenize(f"{d.title} {d.text}") for d in self.docs], show_progress=False)
        self._vocab = self._bm25.vocab_dict
        self._cache: OrderedDict[tuple[str, int], list[Hit]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def tokenize(self, text: str) -> list[str]:
        return self._stemmer.stemWords([w for w in _TOKEN.findall(text.lower()) if w not in self._stop])

    def _scores(self, query: str) -> np.ndarray | None:
        ids = [self._vocab[t] for t in self.tokenize(query) if t in self._vocab]
        if not ids:
            return None
        return np.asarray(self._bm25.get_scores_from_ids(ids), dtype=np.float64)

    def search(self, query: str, topk: int = 3) -> list[Hit]:
        """Top ``topk`` docs with a positive score, best first (memoised)."""
        topk = check_topk(topk)
        if not isinstance(query, str):
            raise ValueError(f"a query must be a string, got {type(query).__name__}")
        key = (query, topk)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        scores = self._scores(query)
        hits: list[Hit] = []
        if scores is not None:
            n = min(topk, len(scores))
            top = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
            cut = scores[top].min()
            pool = np.flatnonzero(
                scores >= cut
            )  # every doc tied with the k-th, so ties break by corpus order
            order = pool[np.lexsort((pool, -scores[pool]))][:n]
            hits = [Hit(self.docs[i], float(scores[i])) for i in order if scores[i] > 0]
        with self._lock:
            self._cache[key] = hits
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return hits

    def batch_search(self, queries: Sequence[str], topk: int = 3) -> list[list[Hit]]:
        return [self.search(q, topk) for q in queries]


class RemoteRetriever:
    """Client of a retrieval server (``POST /retrieve``, Search-R1's API); shares one index across workers."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def batch_search(self, queries: Sequence[str], topk: int = 3) -> list[list[Hit]]:
        import httpx

        topk = check_topk(topk)
        try:
            resp = self._client.post(
                "/retrieve", json={"queries": list(queries), "topk": topk, "return_scores": True}
            )
        except httpx.HTTPError as e:
            raise RetrieverError(f"retrieval server {self.url} unreachable: {e}") from e
        if resp.status_code != 200:
            raise RetrieverError(
                f"retrieval server {self.url} answered {resp.status_code}: {resp.text[:300]}"
            )
        result = resp.json().get("result")
        if not isinstance(result, list) or len(result) != len(queries):
            raise RetrieverError(
                f"retrieval server {self.url} returned {type(result).__name__} for {len(queries)} queries"
            )
        out = []
        for hits in result:
            row = []
            for h in hits:
                doc = h["document"]
                row.append(Hit(Doc(str(doc["id"]), *split_contents(doc["contents"])), float(h["score"])))
            out.append(row)
        return out

    def search(self, query: str, topk: int = 3) -> list[Hit]:
        return self.batch_search([query], topk)[0]

    def close(self) -> None:
        self._client.close()
