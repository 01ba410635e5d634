"""Labelled questions for measuring retrieval-augmented generation over the standard library's
documentation: the shipped ``rag-stdlib`` set (``builtin/rag-stdlib/{dev,test}.jsonl``, labelled by
reading the documents of `llmkit.apps.docs_search.stdlib_documents` on Python 3.11 before any
retrieval code existed), or a user's own JSONL file with the same fields.

    load_rag_questions("test")          # the held-out half: 120 questions, 24 of them unanswerable
    load_rag_questions("dev")           # the half for tuning thresholds and chunk sizes
    load_rag_questions("my/set.jsonl")  # {"id", "question", "docs", "answer", "answerable"} per line

A row is answerable when the documents answer it: ``docs`` lists the ids of the documents that do
(the best first) and ``answer`` is a short string that a right answer contains, found verbatim in
the first document (or null where a set labels only retrieval). An unanswerable row has ``docs: []``
and ``answer: null``: a system should say that the documents do not answer it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DataError
from .jsonl import load_shipped_or_file

RAG_STDLIB = Path(__file__).parent / "builtin" / "rag-stdlib"
SPLITS = ("dev", "test")
FIELDS = ("id", "question", "docs", "answer", "answerable")
_FIX = ('Each line must be a JSON object {"id": str, "question": str, "docs": [document ids], '
        '"answer": str or null, "answerable": true or false}')


@dataclass(frozen=True)
class RAGQuestion:
    """One labelled question: the ids of the documents that answer it (best first; empty when none
    does), a short string a right answer contains (None when unanswerable), and whether the
    documents answer it at all."""

    id: str
    question: str
    docs: tuple[str, ...]
    answer: str | None
    answerable: bool


def load_rag_questions(split: str | os.PathLike = "test") -> list[RAGQuestion]:
    """The questions of a split of the shipped set ("dev" or "test") or of a JSONL file, in file
    order. Raises `DataError` (a ValueError) naming the file, the line, the field and the fix for
    any bad row, and for a missing file or a repeated id."""
    return load_shipped_or_file(split, RAG_STDLIB, SPLITS, _parse, "question", _FIX)


def _parse(obj: Any) -> list[RAGQuestion]:
    """The question of one row, or ValueError saying which field is wrong and how to fix it."""
    if not isinstance(obj, dict):
        raise ValueError(f"a row must be a JSON object with the fields {', '.join(FIELDS)}, "
                         f"not {type(obj).__name__}")
    missing = [f for f in FIELDS if f not in obj]
    if missing:
        raise ValueError(f"field {missing[0]!r} is missing; add it (every row needs {', '.join(FIELDS)}; "
                         "an unanswerable question has \"docs\": [] and \"answer\": null)")
    qid, question, docs, answer, answerable = (obj[f] for f in FIELDS)
    if not isinstance(qid, str) or not qid.strip():
        raise ValueError(f"field 'id' must be a non-empty string, not {qid!r}")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"field 'question' of {qid!r} must be a non-empty string, not {question!r}")
    if not isinstance(answerable, bool):
        raise ValueError(f"field 'answerable' of {qid!r} must be true or false, not {answerable!r}")
    if not isinstance(docs, list) or not all(isinstance(d, str) and d.strip() for d in docs):
        raise ValueError(f"field 'docs' of {qid!r} must be a list of document ids (non-empty strings), "
                         f"not {docs!r}")
    if len(set(docs)) != len(docs):
        twice = next(d for d in docs if docs.count(d) > 1)
        raise ValueError(f"field 'docs' of {qid!r} lists {twice!r} twice; list each document once")
    if answer is not None and (not isinstance(answer, str) or not answer.strip()):
        raise ValueError(f"field 'answer' of {qid!r} must be a non-empty string or null, not {answer!r}")
    if answerable and not docs:
        raise ValueError(f"field 'docs' of {qid!r} is empty but 'answerable' is true: list the ids of the "
                         "documents that answer it, or set 'answerable' to false")
    if not answerable and docs:
        raise ValueError(f"field 'docs' of {qid!r} lists {len(docs)} document(s) but 'answerable' is false: "
                         "an unanswerable question has \"docs\": [] (or set 'answerable' to true)")
    if not answerable and answer is not None:
        raise ValueError(f"field 'answer' of {qid!r} is {answer!r} but 'answerable' is false: "
                         "an unanswerable question has \"answer\": null (or set 'answerable' to true)")
    return [RAGQuestion(qid, question, tuple(docs), answer, answerable)]
