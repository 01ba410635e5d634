"""Incremental indexing: documents → chunks → vectors → a store, one document at a time.

    report = index_documents(store, load_directory("docs/").documents, embedder)
    report.added, report.updated, report.unchanged, report.deleted, report.chunks

Each document is stored with a hash of its text and of the chunking settings; a document whose hash
the store already holds is skipped, a changed one has its chunks replaced (one transaction in the
store), and a document the store holds that is no longer given is deleted (``delete_missing``). An
interrupted run therefore resumes where it stopped: what was stored is whole, and it is skipped.
Embeddings are made in batches across documents and cached by text (`EmbeddingCache`), so a
re-run after a crash does not embed again what it already did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .chunking import DEFAULT_OVERLAP, METHODS
from .embedding import EmbeddingCache, embed_texts, embedder_name
from .records import Chunk, Document

log = logging.getLogger(__name__)


@dataclass
class ChunkSettings:
    """How documents are cut: `method` "recursive" (headings, paragraphs, sentences) or "tokens"
    (fixed windows), `size` and `overlap` in the embedder's tokens (overlap None: none for recursive
    chunks, which end at boundaries, and 32 for windows). all-MiniLM-L6-v2 reads 256 tokens with its
    two special ones, hence 254."""

    method: str = "recursive"
    size: int = 254
    overlap: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"chunking method={self.method!r} is not known: use {' or '.join(METHODS)}")
        if self.size < 1:
            raise ValueError(f"chunk size={self.size} must be at least 1 token")
        if self.overlap is None:
            self.overlap = DEFAULT_OVERLAP[self.method]
        if not 0 <= self.overlap < self.size:
            raise ValueError(f"chunk overlap={self.overlap} must be at least 0 and less than size={self.size}")


@dataclass
class IndexReport:
    """What a run did: documents added, updated (re-chunked), unchanged (skipped), deleted; chunks
    written; embeddings read from the cache; seconds."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    chunks: int = 0
    cached: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"{self.added} added, {self.updated} updated, {self.unchanged} unchanged, {self.deleted} deleted; "
                f"{self.chunks} chunks written ({self.cached} embeddings from the cache) in {self.seconds:.1f} s")
        return text + (f"; {len(self.failures)} document(s) failed" if self.failures else "")


def content_hash(document: Document, settings: ChunkSettings, embedder: str) -> str:
    """What decides whether a stored document is current: its text and metadata, the chunking and the embedder."""
    spec = json.dumps([document.text, document.metadata, settings.method, settings.size, settings.overlap, embedder],
                      sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(spec.encode()).hexdigest()


def index_documents(store: Any, documents: Iterable[Document], embedder: Any,
                    settings: ChunkSettings | None = None, cache: EmbeddingCache | None = None,
                    delete_missing: bool = True, keep: Iterable[str] = (), batch_chunks: int = 1024,
                    progress: Callable[[int, int], None] | None = None) -> IndexReport:
    """Bring `store` up to date with `documents` (see the module docstring). `progress(done, total)`
    is called with documents done. Documents are chunked by the embedder's own tokenizer, which must
    be the store's (its manifest names it). `keep`: ids of documents that failed to load this time,
    whose stored chunks stay (a file that cannot be read today is not a deleted one)."""
    from .chunking import chunk_documents, token_counter
    from .embedding import embedding_dim
    from .stores import check_manifest

    check_manifest(store.manifest, embedder_name(embedder), embedding_dim(embedder),
                   str(getattr(store, "location", "the store")))

    settings = settings or ChunkSettings()
    start, report = time.perf_counter(), IndexReport()
    name = embedder_name(embedder)
    documents = list(documents)
    ids = [d.doc_id for d in documents]
    if len(set(ids)) != len(ids):
        repeated = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"document id {repeated!r} is given twice: ids must be unique (they key the store)")
    stored = store.document_hashes()
    count = token_counter(embedder)
    pending: list[tuple[Document, str, list[Chunk]]] = []
    pending_chunks = 0

    def flush() -> None:
        nonlocal pending_chunks
        texts = [c.text for _, _, chunks in pending for c in chunks]
        before = cache.hits if cache is not None else 0
        vectors = embed_texts(embedder, texts, cache=cache)
        report.cached += (cache.hits - before) if cache is not None else 0
        at = 0
        for doc, digest, chunks in pending:
            store.upsert_document(doc.doc_id, digest, chunks, vectors[at:at + len(chunks)])
            at += len(chunks)
            report.chunks += len(chunks)
            if doc.doc_id in stored:
                report.updated += 1
            else:
                report.added += 1
        pending.clear()
        pending_chunks = 0

    for n, doc in enumerate(documents, 1):
        digest = content_hash(doc, settings, name)
        if stored.get(doc.doc_id) == digest:
            report.unchanged += 1
        else:
            chunks = chunk_documents([doc], count, size=settings.size, overlap=settings.overlap,
                                     method=settings.method)
            if not chunks:
                report.failures.append((doc.doc_id, "no text to index"))
                if doc.doc_id in stored:  # its old text is gone: serving it would be wrong
                    store.delete_document(doc.doc_id)
                    report.deleted += 1
            else:
                pending.append((doc, digest, chunks))
                pending_chunks += len(chunks)
                if pending_chunks >= batch_chunks:
                    flush()
        if progress:
            progress(n, len(documents))
    if pending:
        flush()
    if delete_missing:
        for doc_id in sorted(set(stored) - set(ids) - set(keep)):
            store.delete_document(doc_id)
            report.deleted += 1
    flush_store = getattr(store, "flush", None)
    if callable(flush_store):
        flush_store()
    report.seconds = time.perf_counter() - start
    log.info("indexed: %s", report.summary())
    return report

