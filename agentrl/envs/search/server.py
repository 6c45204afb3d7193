"""A retrieval server with Search-R1's API, so many env workers share one BM25 index.

``POST /retrieve {"queries": [...], "topk": 3, "return_scores": true}`` ->
``{"result": [[{"document": {"id", "contents"}, "score": s}, ...], ...]}`` (without scores each
hit is the document itself). Requests are validated (number and length of queries, topk, body
size) and answered with a clear error; an optional bearer token guards ``/retrieve``.

(No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations at run time.)
"""

from collections.abc import Sequence
from typing import Any

from agentrl.envs.search.data import Doc
from agentrl.envs.search.retriever import MAX_TOPK, BM25Retriever
from agentrl.serving import MAX_BODY_BYTES, BodyError, ServerThread, read_json_request

__all__ = ["MAX_QUERIES", "MAX_QUERY_CHARS", "build_retriever", "create_retrieval_app", "serve_retriever"]

MAX_QUERIES = 256
MAX_QUERY_CHARS = 2000


def _check_request(body: dict[str, Any]) -> tuple[list[str], int, bool] | str:
    """(queries, topk, return_scores) or the reason the request is malformed."""
    unknown = sorted(set(body) - {"queries", "topk", "return_scores"})
    if unknown:
        return f"unknown field(s) {unknown}; expected queries, topk, return_scores"
    queries = body.get("queries")
    if not isinstance(queries, list) or not queries:
        return "'queries' must be a non-empty list of strings"
    if len(queries) > MAX_QUERIES:
        return f"at most {MAX_QUERIES} queries per request, got {len(queries)}"
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            return f"queries[{i}] must be a string, got {type(q).__name__}"
        if len(q) > MAX_QUERY_CHARS:
            return f"queries[{i}] has {len(q)} characters; the limit is {MAX_QUERY_CHARS}"
    topk = body.get("topk", 3)
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= MAX_TOPK:
        return f"'topk' must be an int in 1..{MAX_TOPK}, got {topk!r}"
    scores = body.get("return_scores", False)
    if not isinstance(scores, bool):
        return f"'return_scores' must be true or false, got {scores!r}"
    return queries, topk, scores


def create_retrieval_app(
    retriever: BM25Retriever, *, token: str | None = None, max_body_bytes: int = MAX_BODY_BYTES
) -> Any:
    """The FastAPI app answering ``/retrieve`` from ``retriever``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="agentrl retrieval server", docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "documents": len(retriever.docs)}

    @app.post("/retrieve")
    async def retrieve(request: Request) -> Any:
        try:
            body = await read_json_request(request, token, max_body_bytes)
        except BodyError as e:
            return error(e.status, e.message)
        checked = _check_request(body)
        if isinstance(checked, str):
            return error(422, checked)
        queries, topk, with_scores = checked
        results = await run_in_threadpool(retriever.batch_search, queries, topk)
        out = []
        for hits in results:
            docs = [{"id": h.doc.id, "contents": h.doc.contents} for h in hits]
            out.append(
                [{"document": d, "score": h.score} for d, h in zip(docs, hits)] if with_scores else docs
            )
        return {"result": out}

    return app


def build_retriever(
    corpus_path: str | None = None, *, world: str = "synthetic", seed: int = 0, num_docs: int = 10_000
) -> BM25Retriever:
    """A BM25 index over a Search-R1 corpus file, or over a generated world's documents."""
    docs: Sequence[Doc]
    if corpus_path is not None:
        from agentrl.envs.search.data import load_corpus

        docs = load_corpus(corpus_path)
    elif world == "synthetic":
        from agentrl.envs.search.world import generate_world

        docs = generate_world(seed, num_docs).docs
    elif world == "countryinfo":
        from agentrl.envs.search.realworld import countryinfo_world

        docs = countryinfo_world(seed).docs
    else:
        raise ValueError(f"world must be 'synthetic' or 'countryinfo', got {world!r}")
    return BM25Retriever(docs)


def serve_retriever(
    host: str = "127.0.0.1",
    port: int = 8200,
    *,
    corpus_path: str | None = None,
    world: str = "synthetic",
    seed: int = 0,
    num_docs: int = 10_000,
    token: str | None = None,
) -> None:
    """Index the corpus (or the generated world) and serve ``/retrieve`` until interrupted."""
    app = create_retrieval_app(
        build_retriever(corpus_path, world=world, seed=seed, num_docs=num_docs), token=token
    )
    ServerThread(app, host, port).serve_forever()
