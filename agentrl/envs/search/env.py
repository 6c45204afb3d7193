"""SearchEnv: Search-R1's protocol for retrieval-augmented QA.

The model writes ``<search>query</search>`` and gets ``<information>Doc 1(Title: ...) ...
</information>``; ``<answer>...</answer>`` ends the episode with reward = exact match after
SQuAD normalisation (F1 is reported in ``info``). As in Search-R1, the first ``<search>`` or
``<answer>`` element of a response is the action; a response with neither is invalid (a no-op
with an explanation). Verifiable turn rewards for MT-GRPO: a search step earns
``execution_weight`` for running a search and ``found_weight`` when the retrieved text contains
a gold answer.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from agentrl.envs.base import AgentEnv
from agentrl.envs.search.data import Doc, Question, SearchDataError, load_corpus, load_qa
from agentrl.envs.search.metrics import contains_answer, exact_match, f1_score
from agentrl.envs.search.retriever import BM25Retriever, Hit, RemoteRetriever, Retriever, check_topk

__all__ = [
    "PROMPT_TEMPLATE",
    "SearchAction",
    "SearchEnv",
    "format_information",
    "oracle_actions",
    "parse_search_action",
]

PROMPT_TEMPLATE = (
    "Answer the question below. Reason inside <think> and </think> whenever you get new information. "
    "If you lack knowledge, search with <search> query </search>; the top results come back between "
    "<information> and </information>. You may search as often as you need. When you know the answer, "
    "give it inside <answer> and </answer> without explanation, e.g. <answer> Paris </answer>.\n"
    "Question: {question}"
)
INVALID_FEEDBACK = (
    "Your previous action is invalid. To search, put the query between <search> and </search>. "
    "To answer, put the answer between <answer> and </answer>. Try again."
)
_ACTION = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)


@dataclass(frozen=True)
class SearchAction:
    kind: str  # "search", "answer" or "invalid"
    content: str
    reason: str | None = None


def parse_search_action(text: str, max_query_chars: int = 1000) -> SearchAction:
    """The first ``<search>``/``<answer>`` element of a response (Search-R1 reads the first one)."""
    if not isinstance(text, str):
        return SearchAction("invalid", "", f"the action must be text, got {type(text).__name__}")
    m = _ACTION.search(text)
    if m is None:
        return SearchAction("invalid", "", "no <search>...</search> or <answer>...</answer> element")
    kind, content = m.group(1), m.group(2).strip()
    if not content:
        return SearchAction("invalid", "", f"empty <{kind}> element")
    if kind == "search" and len(content) > max_query_chars:
        return SearchAction(
            "invalid", "", f"the query has {len(content)} characters; the limit is {max_query_chars}"
        )
    return SearchAction(kind, content)


def format_information(hits: Sequence[Hit]) -> str:
    """Search-R1's layout of retrieved documents."""
    body = "\n".join(f"Doc {i}(Title: {h.doc.title}) {h.doc.text}" for i, h in enumerate(hits, start=1))
    return f"<information>{body or 'No results.'}</information>"


def oracle_actions(question: Question) -> list[str]:
    """Responses that follow the gold decomposition: one search per hop, then the answer."""
    hops = question.decomposition or ()
    actions = [f"<think>I need to find out: {h.question}</think><search>{h.question}</search>" for h in hops]
    if not hops:
        actions.append(f"<think>Let me look this up.</think><search>{question.question}</search>")
    return actions + [
        f"<think>The answer is {question.golden_answers[0]}.</think><answer>{question.golden_answers[0]}</answer>"
    ]


_RETRIEVERS: OrderedDict[tuple[Any, ...], BM25Retriever] = OrderedDict()
_RETRIEVERS_LOCK = threading.Lock()
MAX_SHARED_INDEXES = 4


def _shared_retriever(key: tuple[Any, ...], docs: Callable[[], Sequence[Doc]]) -> BM25Retriever:
    """One index per corpus in a process: every env instance on that corpus shares it."""
    with _RETRIEVERS_LOCK:
        if key not in _RETRIEVERS:
            _RETRIEVERS[key] = BM25Retriever(docs())
            while len(_RETRIEVERS) > MAX_SHARED_INDEXES:
                _RETRIEVERS.popitem(last=False)
        _RETRIEVERS.move_to_end(key)
        return _RETRIEVERS[key]


@lru_cache(maxsize=4)
def _loaded(corpus: str, mtime: float) -> tuple[Doc, ...]:
    return tuple(load_corpus(corpus))


def _data(
    world: str,
    seed: int,
    num_docs: int,
    num_train: int,
    num_test: int,
    data_dir: str | None,
    corpus_path: str | None,
    qa_path: str | None,
    split: str,
    need_docs: bool,
) -> tuple[BM25Retriever | None, list[Question]]:
    """(the shared in-process index, or None when ``need_docs`` is False; questions of ``split``).

    With a retrieval server (``need_docs=False``) a file corpus is not read at all: only the server needs it.
    """
    data_dir = data_dir if data_dir is not None else os.environ.get("SEARCH_DATA") or None
    if data_dir is not None and qa_path is None:
        found = [
            p for p in (Path(data_dir) / f"{split}.jsonl", Path(data_dir) / f"{split}.parquet") if p.is_file()
        ]
        if not found:
            raise SearchDataError(f"{data_dir} has no {split}.jsonl or {split}.parquet")
        qa_path = str(found[0])
        corpus_path = corpus_path or str(Path(data_dir) / "corpus.jsonl")
    if corpus_path is not None or qa_path is not None:
        if qa_path is None or (corpus_path is None and need_docs):
            raise ValueError(
                "pass both corpus_path and qa_path (or data_dir), or neither; "
                "qa_path alone is enough with a retriever_url"
            )
        if not need_docs:
            return None, load_qa(qa_path)
        path = str(Path(str(corpus_path)).resolve())
        mtime = Path(path).stat().st_mtime if Path(path).is_file() else 0.0
        questions = load_qa(qa_path)
        return _shared_retriever(("file", path, mtime), lambda: _loaded(path, mtime)), questions
    if world == "synthetic":
        from agentrl.envs.search.world import generate_world

        w = generate_world(seed, num_docs, num_train, num_test)
    elif world == "countryinfo":
        from agentrl.envs.search.realworld import countryinfo_world

        w = countryinfo_world(seed)
    else:
        raise ValueError(f"world must be 'synthetic' or 'countryinfo', got {world!r}")
    questions = list(w.questions(split))
    return (_shared_retriever((w.name,), lambda: w.docs) if need_docs else None), questions


class SearchEnv(AgentEnv):
    """``make("search", split="train"|"test")``: multi-hop QA with a search engine (Search-R1 protocol)."""

    snapshot_fields = ("question", "_t", "_done", "_last_obs", "_state")
    snapshot_shared = ("question",)  # read-only task data

    def __init__(
        self,
        split: str = "train",
        *,
        world: str = "synthetic",
        seed: int = 0,
        num_docs: int = 10_000,
        num_train: int = 3000,
        num_test: int = 500,
        data_dir: str | None = None,
        corpus_path: str | None = None,
        qa_path: str | None = None,
        retriever_url: str | None = None,
        retriever_token: str | None = None,
        topk: int = 3,
        max_turns: int = 6,
        execution_weight: float = 0.5,
        found_weight: float = 0.5,
        max_query_chars: int = 1000,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(render_mode=render_mode)
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.topk = check_topk(topk)
        index, questions = _data(
            world,
            seed,
            num_docs,
            num_train,
            num_test,
            data_dir,
            corpus_path,
            qa_path,
            split,
            need_docs=retriever_url is None,
        )
        self.split, self.max_turns, self.max_query_chars = split, max_turns, max_query_chars
        self.execution_weight, self.found_weight = float(execution_weight), float(found_weight)
        self.questions = {q.id: q for q in questions}
        self._ids = list(self.questions)
        self.retriever: Retriever
        if retriever_url is not None:
            self.retriever = RemoteRetriever(retriever_url, token=retriever_token)
        else:
            assert index is not None
            self.retriever = index
        self.question: Question | None = None
        self._state = ""
        self._t = 0
        self._done = True

    def task_ids(self) -> Sequence[str]:
        return self._ids

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        task_id = (options or {}).get("task_id")
        if task_id is None:
            task_id = self._ids[int(self.np_random.integers(len(self._ids)))]
        if task_id not in self.questions:
            raise ValueError(
                f"unknown task_id {task_id!r} for split {self.split!r} (ids look like {self._ids[0]!r})"
            )
        self.question = self.questions[task_id]
        self._t, self._done = 0, False
        self._last_obs = PROMPT_TEMPLATE.format(question=self.question.question)
        self._state = self._last_obs
        q = (
            self.question.question
        )  # ``task``: step-wise prompts keep it in view after the first observation scrolls out
        return self._last_obs, {"state_key": self._state, "task_id": task_id, "question": q, "task": q}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.question is None or self._done:
            raise RuntimeError("the episode is over or not started: call reset() before step()")
        q = self.question
        act = parse_search_action(action, self.max_query_chars)
        self._t += 1
        reward, terminated, turn_reward = 0.0, False, 0.0
        info: dict[str, Any] = {
            "valid": act.kind != "invalid",
            "success": False,
            "tool_call": act.kind == "search",
        }
        if act.kind == "search":
            hits = self.retriever.batch_search([act.content], self.topk)[0]
            obs = format_information(hits)
            found = contains_answer(obs, q.golden_answers)
            turn_reward = self.execution_weight + self.found_weight * found
            info.update(search_executed=True, answer_in_results=found, doc_ids=[h.doc.id for h in hits])
            self._state = f"Question: {q.question}\n{obs}"
        elif act.kind == "answer":
            em, f1 = exact_match(act.content, q.golden_answers), f1_score(act.content, q.golden_answers)
            reward, terminated = em, True
            obs = f"Your answer: {act.content}"
            info.update(answer=act.content, em=em, f1=f1, success=em == 1.0)
        else:
            obs = INVALID_FEEDBACK
            info["reason"] = act.reason
        truncated = not terminated and self._t >= self.max_turns
        self._done = terminated or truncated
        self._last_obs = obs
        info.update(state_key=self._state, turn_reward=float(turn_reward), task_id=q.id)
        return obs, float(reward), terminated, truncated, info

    def close(self) -> None:
        if isinstance(self.retriever, RemoteRetriever):
            self.retriever.close()
