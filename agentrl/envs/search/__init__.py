"""Search-R1 style retrieval-augmented QA: synthetic world, loaders, bm25s retriever, server, env."""

from agentrl.envs.search.data import (
    Doc,
    Hop,
    Question,
    SearchDataError,
    load_corpus,
    load_qa,
    write_corpus,
    write_qa,
)
from agentrl.envs.search.env import SearchEnv, format_information, oracle_actions, parse_search_action
from agentrl.envs.search.metrics import contains_answer, exact_match, f1_score, normalize_answer
from agentrl.envs.search.retriever import BM25Retriever, Hit, RemoteRetriever, RetrieverError
from agentrl.envs.search.world import World, generate_world

__all__ = [
    "BM25Retriever",
    "Doc",
    "Hit",
    "Hop",
    "Question",
    "RemoteRetriever",
    "RetrieverError",
    "SearchDataError",
    "SearchEnv",
    "World",
    "contains_answer",
    "exact_match",
    "f1_score",
    "format_information",
    "generate_world",
    "load_corpus",
    "load_qa",
    "normalize_answer",
    "oracle_actions",
    "parse_search_action",
    "write_corpus",
    "write_qa",
]
