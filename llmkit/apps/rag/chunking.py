"""Chunking: `Document`s cut into `Chunk`s that the embedding model reads whole.

    count = token_counter(embedder)                       # tokens of a text, as the embedder counts them
    chunks = chunk_recursive(doc, count, size=256)        # at headings, paragraphs, lines, sentences, words
    chunks = chunk_by_tokens(doc, embedder, size=256, overlap=32)   # windows of tokens
    chunks = chunk_documents(docs, embedder, size=256, method="recursive")

Sizes are tokens of the EMBEDDING model, without its special tokens (all-MiniLM-L6-v2 reads 256
tokens including [CLS] and [SEP], so size=254 fills it exactly; a longer chunk is cut by the model).
What every chunker promises, checked by the tests with a real tokenizer:

- a chunk's text is exactly ``doc.text[start:end]`` (metadata "start" and "end"), with no
  whitespace at either end, so a position maps back to the document (and, for a PDF, to its page:
  metadata "page"; the document's "pages" table itself is not copied into every chunk);
- no chunk counts more than `size` tokens (a window is re-counted as cut, and shrunk if a
  tokenizer counts a substring differently from the whole);
- the chunks cover every non-whitespace character of the document, in order (with `overlap`,
  each chunk starts within the one before, except that `chunk_recursive` starts a section anew);
- chunk_id is ``f"{doc_id}#{ordinal}"``, and the same input gives the same chunks.

Markdown and HTML documents (the HTML loader writes headings as ``#`` lines) have headings: a chunk's
metadata "heading" is the path of headings it sits under ("Intro > Install"), taken where its own
text begins. Writing the recursive splitter by hand (rather than LangChain's) is deliberate: it
keeps exact offsets, heading paths and a count that is the embedder's own.
"""

from __future__ import annotations

import bisect
import functools
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer

from .records import Chunk, Document

log = logging.getLogger(__name__)

Count = Callable[[str], int]
SEPARATORS = ("headings", "paragraphs", "lines", "sentences", "words")
METHODS = ("recursive", "tokens")
DEFAULT_OVERLAP = {"recursive": 0, "tokens": 32}  # recursive chunks end at boundaries; windows need a margin
_PATTERNS = {  # a cut goes where the match ends, so separators stay with the piece before
    "paragraphs": re.compile(r"\n[ \t]*\n\s*"),
    "lines": re.compile(r"\n\s*"),
    "sentences": re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s+|[\u3002\uff01\uff1f]\s*"),
    "words": re.compile(r"\s+"),
}
_WORD = re.compile(r"\S+")
_ATX = re.compile(r" {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


# ------------------------------------------------------------------------------ counting
def estimate_tokens(text: str) -> int:
    """A tokenizer-free count: one token per three characters, rounded up (English text in the
    common vocabularies takes about four)."""
    return -(-len(text) // 3)


@dataclass(frozen=True)
class TokenCounter:
    """count(text) -> tokens of `text` without special tokens; `backend` is the `tokenizers`
    tokenizer behind the count when there is one in this process (its offsets place
    `chunk_by_tokens`'s cuts)."""

    count: Count
    backend: BackendTokenizer | None = None

    def __call__(self, text: str) -> int:
        return self.count(text)


def token_counter(embedder: Any) -> TokenCounter:
    """The tokens of a text as `embedder` counts them, without special tokens: by its tokenizer
    when it has one in this process (a `LocalLLM`, a llmkit `Tokenizer`, a `tokenizers` one), else
    by its ``tokenize(text, add_special_tokens=False)`` (a `RemoteLLM`'s /tokenize; answers are
    cached), else by `estimate_tokens`. A function text -> int is taken as the count itself."""
    return _resolve(embedder)


def _resolve(x: Any) -> TokenCounter:
    if isinstance(x, TokenCounter):
        return x
    for obj in (x, getattr(x, "tokenizer", None)):
        backend = obj if isinstance(obj, BackendTokenizer) else getattr(obj, "backend", None)
        if isinstance(backend, BackendTokenizer):
            if backend.truncation is not None or backend.padding is not None:
                backend = BackendTokenizer.from_str(backend.to_str())  # a copy: counts must not be capped
                backend.no_truncation()
                backend.no_padding()
            return TokenCounter(lambda text, b=backend: len(b.encode(text, add_special_tokens=False).ids), backend)
    tokenize = getattr(x, "tokenize", None)
    if callable(tokenize):
        try:
            tokenize("probe", add_special_tokens=False)
        except NotImplementedError as e:
            log.warning("%s; counting tokens as characters / 3", e)
            return TokenCounter(estimate_tokens)
        cached = functools.lru_cache(maxsize=16384)(lambda text: len(tokenize(text, add_special_tokens=False)))
        return TokenCounter(cached)
    if callable(x):
        return TokenCounter(x)
    raise TypeError(f"count={type(x).__name__} is not a token counter: give a function text -> int, an LLM (with "
                    "tokenize), or a tokenizer (llmkit.tokenizer.Tokenizer or tokenizers.Tokenizer)")


def _check(size: int, overlap: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size={size!r}: a chunk holds at least one token; give an int >= 1, e.g. size=256")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"overlap={overlap!r}: give an int >= 0 (0: no overlap)")
    if overlap >= size:
        raise ValueError(f"overlap={overlap} must be less than size={size}, or the chunks would not move on; "
                         f"give e.g. overlap={size // 8}")


# ------------------------------------------------------------------------------ headings
@dataclass(frozen=True)
class Heading:
    """A Markdown ATX heading (``## Title``): where its line starts and ends, its level and title."""

    start: int
    end: int
    level: int
    title: str


def markdown_headings(text: str) -> list[Heading]:
    """The ``#`` headings of Markdown `text`, in order, leaving out lines inside ``` or ~~~ fences."""
    found, fence, pos = [], "", 0
    for line in text.split("\n"):
        if fence:
            m = _FENCE.match(line)
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line[m.end():].strip():
                fence = ""
        elif m := _FENCE.match(line):
            fence = m.group(1)
        elif (m := _ATX.fullmatch(line)) and m.group(2).strip():
            found.append(Heading(pos, pos + len(line), len(m.group(1)), m.group(2).strip()))
        pos += len(line) + 1
    return found


class _Paths:
    """The heading path ("A > B") in effect at any position of a document."""

    def __init__(self, headings: list[Heading]) -> None:
        self.starts = [h.start for h in headings]
        self.paths: list[str] = []
        stack: list[Heading] = []
        for h in headings:
            while stack and stack[-1].level >= h.level:
                stack.pop()
            stack.append(h)
            self.paths.append(" > ".join(s.title for s in stack))

    def at(self, pos: int) -> str:
        i = bisect.bisect_right(self.starts, pos) - 1
        return self.paths[i] if i >= 0 else ""


def _headings(doc: Document) -> list[Heading]:
    return markdown_headings(doc.text) if doc.metadata.get("format") in ("markdown", "html") else []


# ------------------------------------------------------------------------------ chunkers
def chunk_by_tokens(doc: Document, count: Any, size: int = 256, overlap: int = 32) -> list[Chunk]:
    """Windows of `size` tokens, each starting `overlap` tokens before the previous one ends.
    `count` is a tokenizer or an LLM with one in this process, whose token offsets give the cuts
    (moved back to the nearest space where there is one in the window's second half, so that no
    word is cut); with only a count function, windows are whole words, as many as fit."""
    _check(size, overlap)
    counter, text = _resolve(count), doc.text
    if counter.backend is not None:
        units = [s for s, e in counter.backend.encode(text, add_special_tokens=False).offsets if e > s]
    else:
        units = [m.start() for m in _WORD.finditer(text)]
    n = len(units)

    def begins_word(k: int) -> bool:
        p = units[k]
        return k == 0 or text[p].isspace() or text[p - 1].isspace()

    def span(i: int, j: int) -> str:
        return text[0 if i == 0 else units[i]:units[j] if j < n else len(text)]

    def fits(i: int, j: int) -> bool:
        return counter.count(span(i, j).strip()) <= size

    spans, i, last = [], 0, 0
    while i < n:
        j = min(n, i + size)
        if counter.backend is not None and j < n:  # back to a word start, still past the last window's end
            j = next((k for k in range(j, max(i + (j - i) // 2, last), -1) if begins_word(k)), j)
        if not fits(i, j):
            j = _largest(lambda k: fits(i, k), i + 1, j - 1)
        start, end = (0 if i == 0 else units[i]), (units[j] if j < n else len(text))
        pieces = [(start, end)] if j > i + 1 or fits(i, j) else _fit_chars(text, start, end, counter.count, size)
        spans += [(a, b, a) for a, b in filter(None, (_strip(text, *p) for p in pieces))]
        if j >= n:
            break
        last = j
        if overlap and counter.backend is not None:
            back = max(i + 1, j - overlap)
            j = next((k for k in range(back, i, -1) if begins_word(k)), back)
        elif overlap:  # whole words, as many as `overlap` tokens hold
            j -= _largest(lambda k: counter.count(text[units[j - k]:units[j]]) <= overlap, 0, j - i - 1)
        i = j
    return _make_chunks(doc, spans, _headings(doc))


def chunk_recursive(doc: Document, count: Any, size: int = 256, overlap: int = 0,
                    separators: Sequence[str] = SEPARATORS) -> list[Chunk]:
    """Split at the coarsest separator whose pieces fit `size` tokens, merge neighbouring pieces
    while they fit, and split the pieces still too big at the next separator: headings (level 1
    first, then 2, ...; Markdown and HTML documents), blank lines, line ends, sentence ends,
    spaces, and last of all characters. With `overlap`, each chunk also takes up to `overlap`
    tokens of whole words from the end of the one before (not across a heading); the rest of the
    chunk then fits ``size - overlap``."""
    _check(size, overlap)
    bad = [s for s in separators if s not in SEPARATORS]
    if bad or isinstance(separators, str):
        raise ValueError(f"separators={separators!r}: each must be one of {SEPARATORS}, coarsest first")
    counter, text, heads = _resolve(count), doc.text, _headings(doc)
    levels: list[Any] = []
    for name in separators:
        levels += sorted({h.level for h in heads}) if name == "headings" else [name]
    budget = size - overlap
    splitter = _Splitter(text, counter.count, budget, levels, heads)
    heading_starts = {h.start for h in heads}
    spans = _merge_leftovers(text, [s for a, b in splitter.split(0, len(text), 0, None) if (s := _strip(text, a, b))],
                             counter.count, budget, heading_starts)
    out = [(a, b, a) for a, b in spans]
    if overlap:
        for k in range(1, len(spans)):
            (a, b), prev = spans[k], spans[k - 1]
            if a not in heading_starts:
                out[k] = (_overlap_start(text, prev, (a, b), counter.count, overlap, size), b, a)
    return _make_chunks(doc, out, heads)


def chunk_documents(docs: Iterable[Document], count: Any, size: int = 256, overlap: int | None = None,
                    method: str = "recursive", progress: Callable[[int], None] | None = None) -> list[Chunk]:
    """The chunks of every document, in order, by `chunk_recursive` (method "recursive", overlap 0
    unless given) or `chunk_by_tokens` ("tokens", overlap 32 unless given). `progress(1)` is
    called after each document."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: give one of {METHODS}")
    counter = _resolve(count)
    out: list[Chunk] = []
    for doc in docs:
        shared = DEFAULT_OVERLAP[method] if overlap is None else overlap
        if method == "tokens":
            out += chunk_by_tokens(doc, counter, size, shared)
        else:
            out += chunk_recursive(doc, counter, size, shared)
        if progress is not None:
            progress(1)
    return out


# ------------------------------------------------------------------------------ helpers
class _Splitter:
    """The recursive splitter over one text: `split` returns contiguous spans covering [a, b)."""

    def __init__(self, text: str, count: Count, budget: int, levels: list[Any], heads: list[Heading]) -> None:
        self.text, self.count, self.budget, self.levels = text, count, budget, levels
        self.heads, self.heading_starts = heads, [h.start for h in heads]
        self.heading_ends = {h.end for h in heads}

    def cuts(self, a: int, b: int, level: Any) -> list[int]:
        if isinstance(level, int):  # a heading level: cut before each heading of that level or higher
            inside = self.heads[bisect.bisect_right(self.heading_starts, a):bisect.bisect_left(self.heading_starts, b)]
            return [h.start for h in inside if h.level <= level]
        # never right after a heading: it belongs with the text under it
        return [p for m in _PATTERNS[level].finditer(self.text, a, b)
                if a < (p := m.end()) < b and _content_end(self.text, p) not in self.heading_ends]

    def split(self, a: int, b: int, level: int, tokens: int | None) -> list[tuple[int, int]]:
        if (self.count(self.text[a:b]) if tokens is None else tokens) <= self.budget:
            return [(a, b)]
        cuts: list[int] = []
        while level < len(self.levels) and not (cuts := self.cuts(a, b, self.levels[level])):
            level += 1
        if not cuts:
            return _fit_chars(self.text, a, b, self.count, self.budget)
        bounds = [a, *cuts, b]
        pieces = list(zip(bounds, bounds[1:]))
        counts = [self.count(self.text[p:q]) for p, q in pieces]
        out, i = [], 0
        while i < len(pieces):
            if counts[i] > self.budget:
                out += self.split(*pieces[i], level + 1, counts[i])
                i += 1
                continue
            j, total = i + 1, counts[i]
            while j < len(pieces) and total + counts[j] <= self.budget:
                total, j = total + counts[j], j + 1
            # the sum of the pieces' counts is only an estimate of the whole's: re-count to be sure
            while j > i + 1 and self.count(self.text[pieces[i][0]:pieces[j - 1][1]]) > self.budget:
                j -= 1
            out.append((pieces[i][0], pieces[j - 1][1]))
            i = j
        return out


def _merge_leftovers(text: str, spans: list[tuple[int, int]], count: Count, budget: int,
                     heading_starts: set[int]) -> list[tuple[int, int]]:
    """Join neighbouring spans that fit `budget` together, unless the second starts a section: the
    splitter merges pieces of one level only, so the small rest of a split piece (a sentence before a
    long code block) would otherwise stand alone."""
    out: list[tuple[int, int]] = []
    for a, b in spans:
        if out and a not in heading_starts and count(text[out[-1][0]:b]) <= budget:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _largest(ok: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest k in [lo, hi] with ok(k), for ok true up to some point and false after it;
    lo when none is (the caller takes lo as the least step)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


def _fit_chars(text: str, a: int, b: int, count: Count, size: int) -> list[tuple[int, int]]:
    """[a, b) as it is when it fits `size` tokens, else cut at characters into spans that do (the
    last resort, for a run of text with no space in it)."""
    if count(text[a:b].strip()) <= size:
        return [(a, b)]
    out = []
    while a < b:
        step = 4 * size  # gallop to a length that does not fit, then search below it
        while a + step < b and count(text[a:a + step]) <= size:
            step *= 2
        end = a + _largest(lambda k: count(text[a:a + k]) <= size, 1, min(step, b - a))
        out.append((a, end))
        a = end
    return out


def _content_end(text: str, p: int) -> int:
    """Where the text before p ends, whitespace left out."""
    while p and text[p - 1].isspace():
        p -= 1
    return p


def _strip(text: str, a: int, b: int) -> tuple[int, int] | None:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return (a, b) if a < b else None


def _overlap_start(text: str, prev: tuple[int, int], cur: tuple[int, int], count: Count, overlap: int,
                   size: int) -> int:
    """Where `cur` starts when it takes the end of `prev`: the earliest word start in `prev` whose
    tail counts at most `overlap` tokens and keeps the chunk within `size`; cur's start if none."""
    starts = [m.start() for m in _WORD.finditer(text, prev[0] + 1, prev[1])]  # not all of prev
    lo, hi = 0, len(starts)  # the tail's count falls as its start moves right: search the first that fits
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if count(text[starts[mid]:prev[1]]) <= overlap else (mid + 1, hi)
    return next((p for p in starts[lo:] if count(text[p:cur[1]]) <= size), cur[0])


def _make_chunks(doc: Document, spans: list[tuple[int, int, int]], heads: list[Heading]) -> list[Chunk]:
    """Chunks of (start, end, anchor) spans; heading and page are taken at the anchor, where the
    chunk's own text (not what it repeats from the chunk before) begins."""
    base = {k: v for k, v in doc.metadata.items() if k != "pages"}
    pages = doc.metadata.get("pages") or []
    page_starts = [int(p[1]) for p in pages]
    paths = _Paths(heads)
    out = []
    for ordinal, (start, end, anchor) in enumerate(spans):
        meta = {**base, "start": start, "end": end}
        if pages:
            meta["page"] = int(pages[max(0, bisect.bisect_right(page_starts, anchor) - 1)][0])
        if heading := paths.at(anchor):
            meta["heading"] = heading
        out.append(Chunk(chunk_id=f"{doc.doc_id}#{ordinal}", doc_id=doc.doc_id, ordinal=ordinal,
                         text=doc.text[start:end], metadata=meta))
    return out
