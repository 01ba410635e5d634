"""Answers grounded in retrieved chunks, with numbered citations that map back to their source.

    result = ask(llm, retriever, "How do I read a CSV file?")
    result.text              # "Use csv.reader ... [1]"
    result.citations[0]      # Citation(number=1, doc_id="function:csv.reader", source=..., start=..., end=...)
    stream = answer_stream(llm, retriever, question)
    pieces = list(stream)    # the text as the model writes it (the CLI prints each piece)
    stream.result            # the same RAGAnswer, once the stream is done

The retrieved chunks are packed by the one context assembler (`llmkit.apps.context.assemble`): it
numbers the passages it keeps [1], [2], ... in the system message and drops the lowest-scoring ones
when the budget is short. When the retrieval's evidence (the best dense similarity, less the
retriever's weight of question words that no chunk contains) is under `threshold`, the answer is "not in the documents" without asking the model (and the model is told to
say the same when the passages do not hold the answer).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from ..context import assemble
from .records import ScoredChunk
from .retrieval import Retrieval

NOT_FOUND = "Not in the documents."
SYSTEM = ("Answer the question using only the numbered passages below. Cite the passages you use by their number "
          "in square brackets, e.g. [1]. If the passages do not answer the question, reply exactly: "
          f"{NOT_FOUND}")
_CITE = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_SAYS_NOT_FOUND = re.compile(r"not in the (?:documents|passages)", re.I)


@dataclass(frozen=True)
class Citation:
    """Passage [number] as shown to the model: where it comes from and how it scored."""

    number: int
    chunk_id: str
    doc_id: str
    source: str
    start: int | None
    end: int | None
    page: int | None
    heading: str | None
    score: float

    @classmethod
    def of(cls, number: int, found: ScoredChunk) -> Citation:
        c, m = found.chunk, found.chunk.metadata
        return cls(number, c.chunk_id, c.doc_id, str(m.get("source", c.doc_id)), m.get("start"), m.get("end"),
                   m.get("page"), m.get("heading"), found.score)

    def where(self) -> str:
        """"source, page 3, chars 120-480" — for people."""
        parts = [self.source]
        if self.page is not None:
            parts.append(f"page {self.page}")
        if self.heading:
            parts.append(self.heading)
        if self.start is not None and self.end is not None:
            parts.append(f"chars {self.start}-{self.end}")
        return ", ".join(parts)


@dataclass
class RAGAnswer:
    """An answer: its `text`; `status` "answered" or "not_found" (the retrieval's evidence under the
    threshold, or the model said so); `citations`, the passages shown, numbered as the model saw them;
    `cited`, the numbers its text cites (only those shown); the `retrieval`; seconds spent retrieving and
    generating."""

    question: str
    text: str
    status: str
    citations: list[Citation] = field(default_factory=list)
    cited: list[int] = field(default_factory=list)
    retrieval: Retrieval | None = None
    retrieve_seconds: float = 0.0
    generate_seconds: float = 0.0

    @property
    def cited_citations(self) -> list[Citation]:
        return [self.citations[n - 1] for n in self.cited]


def cited_numbers(text: str, shown: int) -> list[int]:
    """The passage numbers `text` cites ([1], [2, 3]), in order of first mention, among 1..shown."""
    numbers: list[int] = []
    for group in _CITE.findall(text):
        for n in (int(x) for x in group.split(",")):
            if 1 <= n <= shown and n not in numbers:
                numbers.append(n)
    return numbers


def passage_text(found: ScoredChunk) -> str:
    title = found.chunk.metadata.get("title")
    return f"({title}) {found.chunk.text}" if title else found.chunk.text


class AnswerStream:
    """Iterate for the answer's text pieces as the model writes them; `result` holds the `RAGAnswer`
    once the iteration is done."""

    def __init__(self, pieces: Iterator[str]) -> None:
        self._pieces = pieces
        self.result: RAGAnswer | None = None

    def __iter__(self) -> Iterator[str]:
        return self._pieces


@dataclass
class Prepared:
    """A question ready for the model: the retrieval, the messages (None: not in the documents, the
    model is not asked) and the citations, numbered as the messages show them."""

    question: str
    retrieval: Retrieval
    messages: list[dict[str, Any]] | None
    citations: list[Citation]
    seconds: float


def prepare(llm: Any, retriever: Any, question: str, k: int = 5, threshold: float | None = None,
            where: Mapping[str, Any] | None = None, max_new_tokens: int = 256, budget: int | None = None,
            system: str = SYSTEM) -> Prepared:
    """Retrieve for `question` and pack the passages into the model's context (see the module
    docstring). Raises `ContextOverflow` when the question alone does not fit the budget."""
    start = time.perf_counter()
    found = retriever.search(question, k=k, where=where)
    if threshold is not None and (found.evidence is None or found.evidence < threshold):
        return Prepared(question, found, None, [], time.perf_counter() - start)
    packed = assemble(llm, system=system, retrieved=[(passage_text(s), s.score) for s in found.chunks],
                      question=question, max_new_tokens=max_new_tokens, budget=budget)
    citations = [Citation.of(n, found.chunks[c.index]) for n, c in enumerate(packed.kept_chunks, 1)]
    return Prepared(question, found, packed.messages, citations, time.perf_counter() - start)


def finish(prepared: Prepared, text: str, generate_seconds: float = 0.0) -> RAGAnswer:
    """The `RAGAnswer` of a prepared question and the model's reply (`text`)."""
    if prepared.messages is None:
        return RAGAnswer(prepared.question, NOT_FOUND, "not_found", retrieval=prepared.retrieval,
                         retrieve_seconds=prepared.seconds)
    text = text.strip()
    status = "not_found" if _SAYS_NOT_FOUND.search(text) else "answered"
    return RAGAnswer(prepared.question, text, status, prepared.citations, cited_numbers(text, len(prepared.citations)),
                     prepared.retrieval, prepared.seconds, generate_seconds)


def answer_stream(llm: Any, retriever: Any, question: str, k: int = 5, threshold: float | None = None,
                  where: Mapping[str, Any] | None = None, max_new_tokens: int = 256, budget: int | None = None,
                  system: str = SYSTEM, **gen: Any) -> AnswerStream:
    """The answer to `question` from what `retriever` finds, streamed (see the module docstring);
    `gen` goes to the model's chat (temperature 0 unless given). Raises `ContextOverflow` when the
    question alone does not fit the budget."""
    gen.setdefault("temperature", 0.0)
    stream = AnswerStream(iter(()))

    def run() -> Iterator[str]:
        prepared = prepare(llm, retriever, question, k, threshold, where, max_new_tokens, budget, system)
        if prepared.messages is None:
            stream.result = finish(prepared, "")
            yield NOT_FOUND
            return
        start, pieces = time.perf_counter(), []
        for piece in llm.chat(prepared.messages, stream=True, max_new_tokens=max_new_tokens, **gen):
            pieces.append(piece)
            yield piece
        stream.result = finish(prepared, "".join(pieces), time.perf_counter() - start)

    stream._pieces = run()
    return stream


def ask(llm: Any, retriever: Any, question: str, **options: Any) -> RAGAnswer:
    """`answer_stream` read to its end: the whole `RAGAnswer`."""
    stream = answer_stream(llm, retriever, question, **options)
    for _ in stream:
        pass
    assert stream.result is not None
    return stream.result
