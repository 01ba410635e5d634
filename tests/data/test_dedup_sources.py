"""Dedup on hand-made documents; reading text, folder, glob, JSONL and stdlib sources."""

from __future__ import annotations

import pytest

from llmkit.data import DataError, DedupConfig, SourceConfig
from llmkit.data.corpus import pydoc_topics, read_source, stdlib_files
from llmkit.data.dedup import exact_duplicates, jaccard, near_duplicates, shingles
from tests.data.helpers import make_docs, one_word_edit, write_docs, write_jsonl


def test_exact_dedup_ignores_case_and_spacing():
    a, b = make_docs(2)
    assert exact_duplicates([a, b, a, a.upper(), "  ".join(a.split()), b + "!"]) == [False, False, True, True, True,
                                                                                       False]


def test_near_dedup_removes_one_word_edit_keeps_distinct():
    docs = make_docs(20, length=200)
    edited = one_word_edit(docs[3])
    assert jaccard(shingles(docs[3], 5), shingles(edited, 5)) > 0.9
    dup = near_duplicates(docs + [edited], DedupConfig())
    assert dup == [False] * 20 + [True]
    # a document sharing half its text with another is not a near-duplicate at 0.8
    half = docs[5][: len(docs[5]) // 2] + docs[6][len(docs[6]) // 2:]
    assert near_duplicates([docs[5], half], DedupConfig()) == [False, False]


def test_text_folder_glob_and_non_utf8(tmp_path):
    docs = make_docs(4)
    root = write_docs(tmp_path / "c", docs[:2])
    write_docs(root / "sub", docs[2:], suffix=".md")
    (root / "bad.txt").write_bytes("caf\xe9 in latin-1".encode("latin-1"))
    (root / ".hidden.txt").write_text("hidden", encoding="utf-8")
    (root / "empty.txt").write_text("  \n", encoding="utf-8")

    folder = read_source(SourceConfig(path=str(root)))
    assert sorted(folder.texts) == sorted(docs)
    assert folder.non_utf8 == [str(root / "bad.txt")] and folder.empty == 1 and folder.files == 6

    glob = read_source(SourceConfig(path=str(root / "**" / "*.md")))
    assert sorted(glob.texts) == sorted(docs[2:]) and glob.files == 2
    single = read_source(SourceConfig(path=str(root / "doc0000.txt")))
    assert single.texts == [docs[0]]


def test_jsonl_source(tmp_path):
    docs = make_docs(3)
    path = write_jsonl(tmp_path / "a.jsonl", docs)
    with path.open("a", encoding="utf-8") as f:
        f.write("not json\n{\"other\": 1}\n[1, 2]\n\n")
    got = read_source(SourceConfig(path=str(path)))
    assert got.texts == docs and got.bad_records == 3
    custom = write_jsonl(tmp_path / "b.data", docs, field="body")
    assert read_source(SourceConfig(path=str(custom), kind="jsonl", text_field="body")).texts == docs
    # kind=text reads a .jsonl file as one document
    assert len(read_source(SourceConfig(path=str(path), kind="text")).texts) == 1


def test_caps_and_stdlib():
    capped = read_source(SourceConfig(max_bytes=50_000))
    assert 0 < capped.bytes <= 50_000 and capped.texts
    assert len(read_source(SourceConfig(), max_docs=3).texts) == 3
    # the whole stdlib source: .py files (pydoc topics module excluded) then the topics texts
    full = read_source(SourceConfig())
    topics = pydoc_topics()
    assert full.texts[-len(topics):] == topics
    assert len(full.texts) + full.empty == len(stdlib_files()) - 1 + len(topics)


def test_missing_and_empty_glob(tmp_path):
    with pytest.raises(DataError, match=r"sources\[0\]\.path=.*does not exist"):
        read_source(SourceConfig(path=str(tmp_path / "nope")))
    with pytest.raises(DataError, match="matches no files"):
        read_source(SourceConfig(path=str(tmp_path / "*.txt")))
