"""Corpus and QA records, and readers/writers for the Search-R1 file formats.

Corpus: JSONL, one ``{"id": str, "contents": str}`` per line, where ``contents`` is
``"Title"\\ntext`` (the first line is the quoted title, as in Search-R1's wiki-18 dump).
QA: JSONL or parquet rows with ``question`` and ``golden_answers`` (a list, or one string);
``id`` is optional. Our generated worlds are written in exactly these formats, so the env loads
the user's files and ours through the same code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Doc",
    "Hop",
    "Question",
    "SearchDataError",
    "doc_contents",
    "load_corpus",
    "load_qa",
    "split_contents",
    "write_corpus",
    "write_qa",
]


class SearchDataError(ValueError):
    """A corpus or QA file is malformed; the message names the file, line and field."""


@dataclass(frozen=True)
class Doc:
    """One retrievable document."""

    id: str
    title: str
    text: str

    @property
    def contents(self) -> str:
        return doc_contents(self.title, self.text)


@dataclass(frozen=True)
class Hop:
    """One step of a question's decomposition: a single-fact sub-question and its answer."""

    question: str
    answer: str
    doc_id: str | None = None  # the document that states the fact (None when unknown)


@dataclass(frozen=True)
class Question:
    """A QA item; ``decomposition`` is empty for loaded data sets that do not carry one."""

    id: str
    question: str
    golden_answers: tuple[str, ...]
    hops: int = 1
    decomposition: tuple[Hop, ...] = field(default=())


def doc_contents(title: str, text: str) -> str:
    return f'"{title}"\n{text}'


def split_contents(contents: str) -> tuple[str, str]:
    """(title, text) of a Search-R1 ``contents`` string; a contents without a title line has title ''."""
    head, sep, rest = contents.partition("\n")
    if sep and len(head) >= 2 and head.startswith('"') and head.endswith('"'):
        return head[1:-1], rest
    return "", contents


def _json_lines(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SearchDataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise SearchDataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            yield n, row


def load_corpus(path: str | Path) -> list[Doc]:
    """Read a Search-R1 corpus (JSONL ``{id, contents}``); ids must be unique."""
    path = Path(path)
    if not path.is_file():
        raise SearchDataError(f"corpus file not found: {path}")
    docs: list[Doc] = []
    seen: set[str] = set()
    for n, row in _json_lines(path):
        contents = row.get("contents")
        if not isinstance(contents, str):
            raise SearchDataError(f"{path}:{n}: 'contents' must be a string")
        doc_id = str(row.get("id", len(docs)))
        if doc_id in seen:
            raise SearchDataError(f"{path}:{n}: duplicate id {doc_id!r}")
        seen.add(doc_id)
        docs.append(Doc(doc_id, *split_contents(contents)))
    if not docs:
        raise SearchDataError(f"{path}: the corpus is empty")
    return docs


def _answers(value: Any, where: str) -> tuple[str, ...]:
    if hasattr(value, "tolist"):  # numpy arrays out of parquet
        value = value.tolist()
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(a, (str, int, float)) for a in value)
    ):
        raise SearchDataError(f"{where}: 'golden_answers' must be a non-empty list of strings, got {value!r}")
    return tuple(str(a) for a in value)


def _question(row: dict[str, Any], index: int, where: str) -> Question:
    text = row.get("question")
    if not isinstance(text, str) or not text.strip():
        raise SearchDataError(f"{where}: 'question' must be a non-empty string")
    answers = _answers(row.get("golden_answers"), where)
    hops = [Hop(h["question"], h["answer"], h.get("doc_id")) for h in row.get("decomposition") or []]
    return Question(
        str(row.get("id", index)),
        text.strip(),
        answers,
        int(row.get("hops") or max(1, len(hops))),
        tuple(hops),
    )


def load_qa(path: str | Path) -> list[Question]:
    """Read QA rows from JSONL or parquet (chosen by the file suffix)."""
    path = Path(path)
    if not path.is_file():
        raise SearchDataError(f"QA file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        missing = {"question", "golden_answers"} - set(table.column_names)
        if missing:
            raise SearchDataError(f"{path}: parquet lacks column(s) {sorted(missing)}")
        rows = table.to_pylist()
        out = [_question(row, i, f"{path}: row {i}") for i, row in enumerate(rows)]
    elif path.suffix in (".jsonl", ".json"):
        out = [_question(row, i, f"{path}:{n}") for i, (n, row) in enumerate(_json_lines(path))]
    else:
        raise SearchDataError(f"{path}: QA files must be .jsonl or .parquet")
    if not out:
        raise SearchDataError(f"{path}: no questions")
    return out


def write_corpus(docs: Sequence[Doc], path: str | Path) -> Path:
    """Write docs as a Search-R1 corpus JSONL."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"id": d.id, "contents": d.contents}, ensure_ascii=False) + "\n")
    return path


def _row(q: Question) -> dict[str, Any]:
    return {
        "id": q.id,
        "question": q.question,
        "golden_answers": list(q.golden_answers),
        "hops": q.hops,
        "decomposition": [
            {"question": h.question, "answer": h.answer, "doc_id": h.doc_id} for h in q.decomposition
        ],
    }


def write_qa(questions: Sequence[Question], path: str | Path) -> Path:
    """Write QA rows as JSONL or parquet (by suffix), with our extra ``hops``/``decomposition`` columns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [_row(q) for q in questions]
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        raise SearchDataError(f"{path}: QA files must be .jsonl or .parquet")
    return path
