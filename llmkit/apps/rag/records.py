"""The records every part of RAG passes along: a loaded `Document`, the `Chunk`s cut from it (what
the stores keep), and a `ScoredChunk` (what a retriever returns).

They are frozen: a chunk read back from a store is the chunk that was written. `Chunk.to_json` /
`Chunk.from_json` give the plain-JSON form the stores write (tuples in metadata come back as lists).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Document:
    """What a loader returns.

    doc_id: a stable id (the path relative to the docs root, posix, or a given id).
    metadata: {"source": path or URL, "format": "text" | "markdown" | "html" | "pdf", "title": ..., ...};
    a PDF's text is its pages joined by "\\n\\n", with metadata["pages"] = [(page_number, start_char), ...].
    """

    doc_id: str
    text: str
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    """What the chunkers return and the stores keep.

    chunk_id: f"{doc_id}#{ordinal}"; ordinal: 0, 1, ... within its document.
    metadata: the document's metadata plus {"start": offset in the document's text, "end": ...,
    "page": int (PDF), "heading": "H1 > H2" (markdown / HTML, where known)}.
    """

    chunk_id: str
    doc_id: str
    ordinal: int
    text: str
    metadata: dict = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A plain dict for `json.dumps` (the metadata is not copied deeply)."""
        return {"chunk_id": self.chunk_id, "doc_id": self.doc_id, "ordinal": self.ordinal, "text": self.text,
                "metadata": self.metadata}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Chunk":
        """The chunk `to_json` wrote; a missing or mistyped field is named in the error."""
        for name, kind in (("chunk_id", str), ("doc_id", str), ("ordinal", int), ("text", str)):
            if not isinstance(obj.get(name), kind) or (kind is int and isinstance(obj.get(name), bool)):
                raise ValueError(f"a chunk needs {name!r} as {kind.__name__}, got {obj.get(name)!r:.60} "
                                 f"in {dict(obj)!r:.120}")
        metadata = obj.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ValueError(f"chunk {obj['chunk_id']!r}: 'metadata' must be an object, got {type(metadata).__name__}")
        return cls(obj["chunk_id"], obj["doc_id"], obj["ordinal"], obj["text"], metadata)


@dataclass(frozen=True)
class ScoredChunk:
    """A retrieved chunk; higher scores are better (dense stores: cosine similarity)."""

    chunk: Chunk
    score: float
