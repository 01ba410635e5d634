"""The shipped rag-stdlib question set, checked against the standard-library documents read
independently of the loader (every labelled document exists, every answer is in its first document,
the split is balanced, the questions spread over many modules), and the loader's errors on bad rows,
which name the file, the line, the field and the fix."""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from llmkit.data import DataError
from llmkit.data.rag_questions import RAG_STDLIB, RAGQuestion, load_rag_questions

SPLITS = ("dev", "test")
ON_311 = sys.version_info[:2] == (3, 11)
needs_311 = pytest.mark.skipif(not ON_311, reason="the labels are Python 3.11's document ids and texts")


def raw_rows(split: str) -> list[dict]:
    """The rows of a shipped split as written, not through the loader."""
    lines = (RAG_STDLIB / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def corpus() -> dict[str, tuple[str, dict]]:
    """id -> (text, metadata) of every standard-library document, built once for this module."""
    from llmkit.apps.docs_search import stdlib_documents

    return {doc_id: (text, meta) for doc_id, text, meta in stdlib_documents()}


def group(doc_id: str, corpus: dict[str, tuple[str, dict]]) -> str:
    """The module of a document (os.path, collections, builtins, ...), or the pydoc topic itself."""
    _, meta = corpus[doc_id]
    return doc_id if meta["kind"] == "topic" else meta["module"]


# ------------------------------------------------------------------------------ the shipped set
def test_shipped_set_has_240_questions_split_120_120_with_a_fifth_unanswerable():
    splits = {s: load_rag_questions(s) for s in SPLITS}
    assert [len(splits[s]) for s in SPLITS] == [120, 120]
    for s, questions in splits.items():
        assert abs(sum(not q.answerable for q in questions) - 24) <= 2, s
        assert [q.id for q in questions] == sorted(q.id for q in questions)  # rows sorted by id
        assert questions == [RAGQuestion(r["id"], r["question"], tuple(r["docs"]), r["answer"], r["answerable"])
                             for r in raw_rows(s)]
    every = splits["dev"] + splits["test"]
    assert sorted(q.id for q in every) == [f"rag-stdlib-{n:03d}" for n in range(1, 241)]  # unique, none missing
    assert sum(not q.answerable for q in every) == 48
    texts = Counter(" ".join(q.question.lower().split()) for q in every)
    assert [t for t, n in texts.items() if n > 1] == []


def test_shipped_rows_are_labelled_consistently():
    for q in load_rag_questions("dev") + load_rag_questions("test"):
        if q.answerable:
            assert 1 <= len(q.docs) <= 3 and isinstance(q.answer, str) and q.answer.strip(), q.id
        else:
            assert q.docs == () and q.answer is None, q.id


def test_shipped_set_does_not_drift():
    """The labels were written before any retrieval code: a change to them must be deliberate
    (update this fingerprint in the same commit, and say why)."""
    text = "".join((RAG_STDLIB / f"{s}.jsonl").read_text(encoding="utf-8") for s in SPLITS)
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == "f2d589d2d3dd79c0"


@needs_311
def test_every_labelled_document_exists_and_contains_the_answer(corpus):
    for s in SPLITS:
        for row in raw_rows(s):
            missing = [d for d in row["docs"] if d not in corpus]
            assert missing == [], f"{row['id']}: not documents of stdlib_documents(): {missing}"
            if row["answerable"]:
                text = corpus[row["docs"][0]][0]
                assert row["answer"].lower() in text.lower(), f"{row['id']}: {row['answer']!r} not in {row['docs'][0]}"


@needs_311
def test_questions_spread_over_many_modules_and_topics(corpus):
    groups = Counter(group(q.docs[0], corpus) for s in SPLITS for q in load_rag_questions(s) if q.answerable)
    assert len(groups) >= 60
    assert max(groups.values()) <= 8, groups.most_common(3)
    assert sum(1 for g in groups if g.startswith("topic:")) >= 10  # language questions too
    kinds = Counter(corpus[q.docs[0]][1]["kind"] for s in SPLITS for q in load_rag_questions(s) if q.answerable)
    assert {"topic", "module", "function", "class", "method"} <= set(kinds)


# ------------------------------------------------------------------------------ the loader
GOOD = {"id": "q1", "question": "How do I read a CSV file?", "docs": ["function:csv.reader"], "answer": "reader",
        "answerable": True}


def write(tmp_path: Path, *rows: object) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_users_own_file_loads(tmp_path):
    unanswerable = {"id": "q2", "question": "How do I read an .xlsx file?", "docs": [], "answer": None,
                    "answerable": False}
    retrieval_only = {**GOOD, "id": "q3", "answer": None, "extra": "ignored"}
    assert load_rag_questions(write(tmp_path, GOOD, unanswerable, retrieval_only)) == [
        RAGQuestion("q1", "How do I read a CSV file?", ("function:csv.reader",), "reader", True),
        RAGQuestion("q2", "How do I read an .xlsx file?", (), None, False),
        RAGQuestion("q3", "How do I read a CSV file?", ("function:csv.reader",), None, True)]
    assert load_rag_questions(str(tmp_path / "questions.jsonl"))[0].id == "q1"


@pytest.mark.parametrize("row, words", [
    ({**GOOD, "docs": []}, ["'docs'", "empty", "'answerable' is true", "list the ids"]),
    ({**GOOD, "answerable": False, "answer": None}, ["'docs'", "'answerable' is false", "\"docs\": []"]),
    ({**GOOD, "docs": [], "answerable": False}, ["'answer'", "'answerable' is false", "\"answer\": null"]),
    ({k: v for k, v in GOOD.items() if k != "question"}, ["'question'", "missing", "add it"]),
    ({**GOOD, "question": "  "}, ["'question'", "non-empty string"]),
    ({**GOOD, "answerable": "yes"}, ["'answerable'", "true or false"]),
    ({**GOOD, "docs": "function:csv.reader"}, ["'docs'", "list of document ids"]),
    ({**GOOD, "docs": ["a", "a"]}, ["'docs'", "twice", "each document once"]),
    ({**GOOD, "answer": 3}, ["'answer'", "non-empty string or null"]),
    ({**GOOD, "id": ""}, ["'id'", "non-empty string"]),
    (["not", "an", "object"], ["JSON object", "list"]),
    ("{not json", ["not JSON"]),
])
def test_bad_rows_name_the_file_line_field_and_fix(tmp_path, row, words):
    path = write(tmp_path, GOOD, row)
    with pytest.raises(ValueError) as e:
        load_rag_questions(path)
    assert isinstance(e.value, DataError)
    message = str(e.value)
    assert str(path) in message and "line 2:" in message, message
    for word in words:
        assert word in message, (word, message)


def test_repeated_ids_and_missing_files_are_errors(tmp_path):
    with pytest.raises(DataError, match=r"id 'q1' is used by 2 rows.*its own id"):
        load_rag_questions(write(tmp_path, GOOD, GOOD))
    with pytest.raises(DataError, match=r"no such file.*'dev' or 'test'"):
        load_rag_questions("train")
    with pytest.raises(DataError, match="no usable questions"):
        load_rag_questions(write(tmp_path, ""))
