"""Chunking, checked with all-MiniLM-L6-v2's real WordPiece tokenizer: every chunk is an exact
substring of its document within `size` tokens, the chunks cover all of it in order, cuts fall at
the coarsest separator, headings and pages are carried."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer as BackendTokenizer

from llmkit.apps.rag.chunking import (SEPARATORS, TokenCounter, chunk_by_tokens, chunk_documents, chunk_recursive,
                                      estimate_tokens, markdown_headings, token_counter)
from llmkit.apps.rag.loaders import html_to_text
from llmkit.apps.rag.records import Document
from llmkit.tokenizer import Tokenizer

PARAGRAPH = ("Retrieval finds the passages that answer a question. The model reads them and writes an answer "
             "with citations, so that a reader can check every claim against its source. ")
GUIDE = f"""# Intro

{PARAGRAPH * 2}

## Install

Run `pip install llmkit[rag]` first. Then build an index:

```bash
# this line is a comment, not a heading
llmkit rag index --docs docs/ --store idx/
```

{PARAGRAPH * 6}
A line right after the paragraph.
Another line, with café, naïve and 日本語のテキスト。二つ目の文。

## Usage

{"token " * 400}

### Deep

{"x" * 3000}

# Reference

- item one
- item two

{PARAGRAPH}
"""


@pytest.fixture(scope="module")
def tok(minilm):
    return Tokenizer.from_dir(minilm.path)


@pytest.fixture(scope="module")
def count(tok):
    return token_counter(tok)


def guide(fmt: str = "markdown") -> Document:
    return Document("guide.md", GUIDE, {"source": "docs/guide.md", "format": fmt, "title": "Intro"})


def check(doc: Document, chunks, count, size: int, overlap: bool = False) -> None:
    """The promises every chunker keeps."""
    assert chunks, "no chunks"
    covered = bytearray(len(doc.text))
    for i, c in enumerate(chunks):
        start, end = c.metadata["start"], c.metadata["end"]
        assert (c.chunk_id, c.doc_id, c.ordinal) == (f"{doc.doc_id}#{i}", doc.doc_id, i)
        assert c.text == doc.text[start:end] and c.text == c.text.strip() and c.text
        assert count(c.text) <= size, (i, count(c.text), c.text[:80])
        assert {k: v for k, v in c.metadata.items() if k not in ("start", "end", "page", "heading")} == \
            {k: v for k, v in doc.metadata.items() if k != "pages"}
        covered[start:end] = b"\x01" * (end - start)
        if i:
            prev = chunks[i - 1].metadata
            assert start > prev["start"] and end > prev["end"]
            if not overlap or start > prev["end"]:  # with overlap, a chunk may start anew at a heading
                assert start >= prev["end"] and doc.text[prev["end"]:start].strip() == ""
    lost = [i for i, ch in enumerate(doc.text) if not ch.isspace() and not covered[i]]
    assert not lost, f"characters lost at {lost[:5]}: {doc.text[lost[0]:lost[0] + 40]!r}"


@pytest.mark.parametrize("size,overlap", [(64, 0), (40, 8), (17, 3)])
def test_recursive_chunks_keep_every_promise(count, size, overlap):
    doc = guide()
    chunks = chunk_recursive(doc, count, size=size, overlap=overlap)
    check(doc, chunks, count, size, overlap=bool(overlap))
    assert chunks == chunk_recursive(doc, count, size=size, overlap=overlap)  # deterministic


@pytest.mark.parametrize("size,overlap", [(64, 16), (30, 0), (5, 2)])
def test_token_windows_keep_every_promise(tok, count, size, overlap):
    doc = guide()
    chunks = chunk_by_tokens(doc, tok, size=size, overlap=overlap)
    check(doc, chunks, count, size, overlap=bool(overlap))
    assert chunks == chunk_by_tokens(doc, tok, size=size, overlap=overlap)


def test_a_run_without_spaces_is_cut_at_characters():
    """WordPiece reads the 3000 x's as one [UNK]; at one token per three characters they are 1000
    tokens, which only the last resort, cutting between characters, can fit."""
    doc = guide()
    for chunks in (chunk_recursive(doc, estimate_tokens, size=50),
                   chunk_by_tokens(doc, estimate_tokens, size=50, overlap=0)):
        check(doc, chunks, estimate_tokens, 50, overlap=False)
        runs = [c for c in chunks if set(c.text) == {"x"}]
        assert len(runs) >= 3000 // 150 - 1 and all(estimate_tokens(c.text) == 50 for c in runs[:-1])


def test_both_chunkers_on_a_real_document(tok, count):
    doc = Document("README.md", Path("README.md").read_text(encoding="utf-8"), {"format": "markdown"})
    check(doc, chunk_recursive(doc, count, size=128), count, 128)
    check(doc, chunk_by_tokens(doc, tok, size=128, overlap=32), count, 128, overlap=True)


def test_recursive_cuts_at_the_coarsest_separator(count):
    doc = guide()
    assert [c.text for c in chunk_recursive(doc, count, size=count(GUIDE))] == [GUIDE.strip()]  # fits: one chunk
    # sections that fit stay whole and start at their heading; the big ones are cut at paragraphs
    chunks = chunk_recursive(doc, count, size=200)
    texts = [c.text for c in chunks]
    assert texts[0] == f"# Intro\n\n{(PARAGRAPH * 2).strip()}"
    assert texts[-1].startswith("# Reference") and texts[-1].endswith(PARAGRAPH.strip())
    for c in chunks:
        end = c.metadata["end"]
        # every cut is at a heading, a blank line, a line end, a sentence end, a space, or inside the long x run
        after = GUIDE[end:end + 1]
        assert end == len(GUIDE.rstrip()) or after.isspace() or GUIDE[end - 1:end + 1] == "xx"
    small = chunk_recursive(doc, count, size=60)
    sentences = [c.text for c in small if c.metadata.get("heading") == "Intro > Install"]
    assert all(t.endswith((".", "```", ":")) or t.startswith("A line") for t in sentences), sentences


def test_small_pieces_merge_up_to_size(count):
    text = "\n\n".join(f"Paragraph {i} is short." for i in range(60))
    doc = Document("p.txt", text, {"format": "text"})
    chunks = chunk_recursive(doc, count, size=50)
    check(doc, chunks, count, 50)
    assert all(count(c.text) > 50 - 10 for c in chunks[:-1])  # filled to within one paragraph of size


def test_headings_and_short_rests_join_the_text_after_them(count):
    """A heading is never a chunk of its own, and the short rest of a split (a sentence before a long
    paragraph) joins the chunk after it instead of standing alone."""
    for size, overlap in ((20, 0), (40, 8), (60, 0)):
        chunks = chunk_recursive(guide(), count, size=size, overlap=overlap)
        assert not [c.text for c in chunks if re.fullmatch(r"#+ .*", c.text)]
    doc = Document("n.md", "# Notes\n\nOne short opener.\n\n" + PARAGRAPH * 3, {"format": "markdown"})
    first = chunk_recursive(doc, count, size=50)[0].text
    assert first.startswith("# Notes\n\nOne short opener.\n\nRetrieval finds") and count(first) > 40


def test_heading_paths_skip_code_and_follow_levels(count):
    heads = markdown_headings(GUIDE)
    assert [(h.level, h.title) for h in heads] == [(1, "Intro"), (2, "Install"), (2, "Usage"), (3, "Deep"),
                                                   (1, "Reference")]
    assert all(GUIDE[h.start:h.end].startswith("#") for h in heads)
    chunks = chunk_recursive(guide(), count, size=60)
    paths = [c.metadata.get("heading") for c in chunks]
    assert paths[0] == "Intro" and paths[-1] == "Reference"
    assert {"Intro > Install", "Intro > Usage", "Intro > Usage > Deep"} <= set(paths)
    comment = GUIDE.index("# this line")
    inside = next(c for c in chunks if c.metadata["start"] <= comment < c.metadata["end"])
    assert inside.metadata["heading"] == "Intro > Install"
    # plain text has no headings; HTML as the loader writes it has them
    assert all("heading" not in c.metadata for c in chunk_recursive(guide("text"), count, size=60))
    html, _ = html_to_text("<h1>Top</h1><p>alpha</p><h2>Sub</h2><p>beta</p>")
    chunks = chunk_recursive(Document("p.html", html, {"format": "html"}), count, size=4)
    assert [(c.text, c.metadata["heading"]) for c in chunks] == [
        ("# Top\n\nalpha", "Top"), ("## Sub\n\nbeta", "Top > Sub")]


def test_recursive_overlap_repeats_whole_words_but_not_across_headings(count):
    doc = guide()
    chunks = chunk_recursive(doc, count, size=40, overlap=10)
    heading_starts = {h.start for h in markdown_headings(GUIDE)}
    repeated = 0
    for prev, c in zip(chunks, chunks[1:]):
        start = c.metadata["start"]
        if start < prev.metadata["end"]:
            repeated += 1
            assert count(GUIDE[start:prev.metadata["end"]]) <= 10
            assert GUIDE[start - 1].isspace()  # a whole word
        else:
            assert start in heading_starts or GUIDE[prev.metadata["end"]:start].strip() == "" and "x" * 40 in c.text
    assert repeated >= len(chunks) // 2


def test_token_windows_fill_size_and_overlap(tok, count):
    doc = Document("p.txt", PARAGRAPH * 20, {"format": "text"})
    chunks = chunk_by_tokens(doc, tok, size=50, overlap=10)
    check(doc, chunks, count, 50, overlap=True)
    for prev, c in zip(chunks, chunks[1:-1]):
        assert count(c.text) >= 45  # cut at the nearest space, re-counted
        shared = doc.text[c.metadata["start"]:prev.metadata["end"]]
        assert 8 <= count(shared) <= 12, shared
        assert doc.text[c.metadata["start"] - 1] == " "  # windows start at a word


def test_windows_are_recounted_when_the_count_disagrees_with_the_offsets(tok, count):
    """A byte-level or SentencePiece tokenizer may count a substring differently from its share of
    the whole; a window is re-counted as cut and shrunk. Here the count charges one more token per
    ten words than the offsets show."""
    stricter = TokenCounter(lambda text: count(text) + text.count(" ") // 10, tok.backend)
    doc = Document("p.txt", PARAGRAPH * 20, {"format": "text"})
    check(doc, chunk_by_tokens(doc, stricter, size=50, overlap=10), stricter, 50, overlap=True)
    check(doc, chunk_recursive(doc, stricter, size=50), stricter, 50)


def test_windows_of_words_with_only_a_count_function():
    doc = Document("w.txt", PARAGRAPH * 10, {"format": "text"})
    chunks = chunk_by_tokens(doc, estimate_tokens, size=30, overlap=6)
    check(doc, chunks, estimate_tokens, 30, overlap=True)
    for c in chunks:
        start, end = c.metadata["start"], c.metadata["end"]
        assert (start == 0 or doc.text[start - 1] == " ") and (end == len(doc.text.rstrip()) or doc.text[end] == " ")
        assert estimate_tokens(c.text) > 30 - 6  # as many words as fit


def test_pages_and_metadata_of_a_pdf(count):
    pages_text = ["First page talks about retrieval. " * 6, "Second page about chunking. " * 6, "Third. " * 9]
    text = "\n\n".join(t.strip() for t in pages_text)
    starts = [0]
    for t in pages_text[:-1]:
        starts.append(starts[-1] + len(t.strip()) + 2)
    doc = Document("paper.pdf", text, {"source": "paper.pdf", "format": "pdf", "title": "Paper",
                                       "pages": [(i + 1, s) for i, s in enumerate(starts)]})
    for chunks in (chunk_recursive(doc, count, size=20), chunk_by_tokens(doc, count, size=20, overlap=0)):
        check(doc, chunks, count, 20)
        for c in chunks:
            expected = max(i + 1 for i, s in enumerate(starts) if s <= c.metadata["start"])
            assert c.metadata["page"] == expected and "pages" not in c.metadata
        assert {c.metadata["page"] for c in chunks} == {1, 2, 3}


def test_counters(tok, minilm):
    text = "Hello, wonderful world of retrieval! " * 3
    expected = len(tok.encode(text, add_special_tokens=False))
    llm_like = SimpleNamespace(tokenizer=tok)  # a LocalLLM holds its tokenizer as .tokenizer
    assert token_counter(llm_like)(text) == expected and token_counter(llm_like).backend is tok.backend
    raw = BackendTokenizer.from_file(str(Path(minilm.path) / "tokenizer.json"))  # truncation at 128 in the file
    assert raw.truncation is not None
    assert token_counter(raw)("word " * 300) == 300 and raw.truncation is not None  # counted whole, not changed

    calls = []

    class Remote:
        def tokenize(self, text, add_special_tokens=True):
            calls.append(text)
            assert add_special_tokens is False
            return text.split()

    counter = token_counter(Remote())
    assert counter("a b c") == 3 and counter("a b c") == 3 and calls == ["probe", "a b c"]  # cached
    assert counter.backend is None

    class NoTokenizer:
        def tokenize(self, text, add_special_tokens=True):
            raise NotImplementedError("http://x/v1 has no /tokenize endpoint")

    assert token_counter(NoTokenizer())("x" * 10) == 4 == estimate_tokens("x" * 10)
    assert token_counter(len)("abc") == 3 and isinstance(token_counter(len), TokenCounter)
    with pytest.raises(TypeError, match="not a token counter"):
        token_counter(42)


def test_a_loaded_embedder_counts_with_its_tokenizer(minilm):
    import llmkit

    llm = llmkit.load(minilm.path)
    text = "Chunk sizes are counted by the embedding model."
    counter = token_counter(llm)
    assert counter(text) == len(llm.tokenize(text, add_special_tokens=False)) and counter.backend is not None
    doc = Document("d.txt", PARAGRAPH * 4, {"format": "text"})
    check(doc, chunk_by_tokens(doc, llm, size=32, overlap=4), counter, 32, overlap=True)


def test_bad_arguments_name_the_fix(count):
    doc = guide()
    for call, message in [(lambda: chunk_recursive(doc, count, size=0), r"size=0: .* >= 1"),
                          (lambda: chunk_by_tokens(doc, count, size=32, overlap=32), "overlap=32 must be less than "
                                                                                     "size=32.*overlap=4"),
                          (lambda: chunk_by_tokens(doc, count, size=32, overlap=-1), "overlap=-1"),
                          (lambda: chunk_recursive(doc, count, size=2.5), "size=2.5"),
                          (lambda: chunk_recursive(doc, count, separators=("headings", "commas")),
                           "separators=.*one of"),
                          (lambda: chunk_documents([doc], count, method="semantic"), "method='semantic'")]:
        with pytest.raises(ValueError, match=message):
            call()


def test_chunk_documents(tok, count):
    docs = [guide(), Document("b.txt", PARAGRAPH * 3, {"format": "text"}), Document("empty", "  \n", {})]
    done = []
    chunks = chunk_documents(docs, tok, size=48, progress=done.append)
    assert done == [1, 1, 1]
    assert chunks == chunk_recursive(docs[0], count, 48) + chunk_recursive(docs[1], count, 48)
    by_tokens = chunk_documents(docs, count, size=48, method="tokens")  # a TokenCounter keeps its offsets
    assert by_tokens == chunk_by_tokens(docs[0], tok, 48, 32) + chunk_by_tokens(docs[1], tok, 48, 32)
    assert [c.ordinal for c in by_tokens if c.doc_id == "b.txt"][0] == 0
    assert SEPARATORS[0] == "headings" and re.fullmatch(r".+#\d+", chunks[0].chunk_id)
