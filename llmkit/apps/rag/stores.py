"""Vector stores: where the chunks and their embeddings live between indexing and retrieval.

    store = open_store("index/", embedder_name="all-MiniLM-L6-v2", dim=384, create=True)   # FAISS on disk
    store = open_store("postgresql://user:pw@host/db", embedder_name=..., dim=..., create=True)  # pgvector
    store.upsert_document(doc_id, content_hash, chunks, vectors)
    hits = store.search(query_vector, k=5, where={"format": "pdf"})

Every store follows `VectorStore`: a document's chunks are replaced in one transaction (an
interrupted indexing run leaves each document either wholly old or wholly new), vectors are
L2-normalised on the way in and for the query (so a score is a cosine similarity), and a store's
`manifest` records the embedder and dimension it was built with: opening it with another one raises
`StoreMismatch`, because vectors of two embedders are not comparable.

`where` filters are metadata equalities, e.g. {"format": "pdf", "page": 3}: a key is an identifier
(letters, digits, underscore) and a value a str, int or bool, matched with its type (1 is not "1").
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from .records import Chunk, ScoredChunk

FORMAT = 1
METRIC = "cosine"
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class StoreError(ValueError):
    """A vector store cannot be opened, read or written; the message says what to check."""


class StoreMismatch(StoreError, ValueError):
    """A store was opened with an embedder name or dimension other than the one it was built with."""


@runtime_checkable
class VectorStore(Protocol):
    """What every vector store offers (FAISS on disk: `FaissStore`; PostgreSQL: `PgVectorStore`)."""

    manifest: dict  # {"format": 1, "embedder": str, "dim": int, "metric": "cosine", "kind": ..., ...}

    def upsert_document(self, doc_id: str, content_hash: str, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Replace every chunk of doc_id with `chunks` (vectors row i is chunks[i]) in one transaction."""

    def delete_document(self, doc_id: str) -> None:
        """Remove doc_id and its chunks (nothing happens for an unknown doc_id)."""

    def document_hashes(self) -> dict[str, str]:
        """doc_id -> content_hash of every stored document."""

    def search(self, vector: np.ndarray, k: int, where: Mapping[str, Any] | None = None,
               exact: bool = False) -> list[ScoredChunk]:
        """The k chunks most similar to `vector` (best first) among those whose metadata matches `where`;
        exact=True scans every vector instead of using an approximate index."""

    def chunks(self) -> Iterator[Chunk]:
        """Every live chunk, by document and ordinal."""

    def __len__(self) -> int:
        """The number of live chunks."""

    def close(self) -> None:
        """Write what is pending and release the store."""


def open_store(spec: str, embedder_name: str | None = None, dim: int | None = None, kind: str = "flat",
               create: bool = False, **options: Any) -> VectorStore:
    """Open the store at `spec`: a directory path gives a `FaissStore` (kind "flat" or "hnsw", used
    when it is created), a postgresql:// (or postgres://) URL a `PgVectorStore` (kind is ignored).

    create=True makes the store where there is none yet (it then needs embedder_name and dim);
    `options` go to the store's class (FaissStore: hnsw_m, ef_construction, ef_search,
    tombstone_fraction; PgVectorStore: table).
    """
    spec = str(spec)
    if spec.startswith(("postgresql://", "postgres://")):
        from .pg_store import PgVectorStore

        return PgVectorStore(spec, embedder_name=embedder_name, dim=dim, create=create, **options)
    if "://" in spec:
        raise StoreError(f"store {redact_url(spec)!r}: unknown URL scheme; give a directory path (FAISS) or a "
                         "postgresql:// URL (pgvector)")
    from .faiss_store import FaissStore

    return FaissStore(spec, embedder_name=embedder_name, dim=dim, kind=kind, create=create, **options)


# ---------------------------------------------------------------- helpers shared by the stores


def redact_url(url: str) -> str:
    """`url` with its password replaced by *** (in user:password@ and in password=... parameters)."""
    url = re.sub(r"(password=)[^&\s]*", r"\1***", url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo and userinfo.partition(":")[2]:
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    return f"{scheme}://{netloc}{slash}{tail}"


def new_manifest(embedder_name: str | None, dim: int | None, kind: str, where: str, **extra: Any) -> dict:
    """The manifest of a store being created; both the embedder's name and dim are required."""
    if not embedder_name or not isinstance(embedder_name, str):
        raise StoreError(f"creating the store at {where} needs embedder_name (the embedder's name, "
                         f"e.g. 'all-MiniLM-L6-v2'), got {embedder_name!r}")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
        raise StoreError(f"creating the store at {where} needs dim, the embedding size (a positive int), "
                         f"got {dim!r}")
    return {"format": FORMAT, "embedder": embedder_name, "dim": dim, "metric": METRIC, "kind": kind, **extra}


def check_manifest(manifest: Mapping[str, Any], embedder_name: str | None, dim: int | None, where: str) -> None:
    """Refuse a store of another format, or one built with another embedder or dimension."""
    if manifest.get("format") != FORMAT:
        raise StoreError(f"store at {where} has format {manifest.get('format')!r}; this llmkit reads format "
                         f"{FORMAT}: rebuild the index")
    stored_name, stored_dim = manifest.get("embedder"), manifest.get("dim")
    if (embedder_name is not None and embedder_name != stored_name) or (dim is not None and dim != stored_dim):
        asked = ", ".join(part for part in (f"embedder {embedder_name!r}" if embedder_name is not None else "",
                                            f"dim {dim}" if dim is not None else "") if part)
        raise StoreMismatch(f"store at {where} was built with embedder {stored_name!r}, dim {stored_dim}; it cannot "
                            f"be used with {asked}: vectors of different embedders are not comparable. Use the "
                            "store's embedder, or index into a new store")


def normalize(vectors: np.ndarray, dim: int, what: str = "vectors") -> np.ndarray:
    """`vectors` (n, dim) or (dim,) as float32 rows of unit length; refuses other shapes, NaN/inf and
    all-zero rows (a zero vector has no direction, so no cosine)."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise StoreError(f"{what} must have shape (n, {dim}) for this store (dim {dim}), got {np.shape(vectors)}")
    if not np.isfinite(x).all():
        row = int(np.argwhere(~np.isfinite(x))[0, 0])
        raise StoreError(f"{what} row {row} holds NaN or inf: check the embedder's output")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise StoreError(f"{what} row {int(np.argwhere(norms[:, 0] == 0)[0, 0])} is all zeros and has no "
                         "direction: check the embedder's output for that text")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def check_upsert(doc_id: str, content_hash: str, chunks: Sequence[Chunk], vectors: np.ndarray,
                 dim: int) -> np.ndarray:
    """Validate one `upsert_document` call; returns the normalised vectors."""
    if not isinstance(doc_id, str) or not doc_id:
        raise StoreError(f"doc_id must be a non-empty string, got {doc_id!r}")
    if not isinstance(content_hash, str):
        raise StoreError(f"document {doc_id!r}: content_hash must be a string, got {type(content_hash).__name__}")
    seen: set[str] = set()
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, Chunk):
            raise StoreError(f"document {doc_id!r}: chunks[{i}] is a {type(chunk).__name__}, not a Chunk")
        if chunk.doc_id != doc_id:
            raise StoreError(f"document {doc_id!r}: chunk {chunk.chunk_id!r} belongs to doc_id {chunk.doc_id!r}")
        if chunk.chunk_id in seen:
            raise StoreError(f"document {doc_id!r}: chunk_id {chunk.chunk_id!r} appears twice")
        seen.add(chunk.chunk_id)
    x = normalize(vectors, dim, f"vectors of document {doc_id!r}") if len(chunks) else np.zeros((0, dim), np.float32)
    if len(x) != len(chunks):
        raise StoreError(f"document {doc_id!r}: {len(chunks)} chunks but {len(x)} vectors (row i is chunks[i])")
    return x


def metadata_json(chunk: Chunk) -> str:
    """The chunk's metadata as JSON text, or a `StoreError` naming the chunk when it is not JSON."""
    try:
        return json.dumps(chunk.metadata, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise StoreError(f"chunk {chunk.chunk_id!r}: metadata is not JSON ({error}); keep to str, numbers, "
                         "bools, lists and dicts") from error


def check_where(where: Mapping[str, Any] | None) -> dict[str, Any]:
    """The `where` filter, validated: identifier keys, str / int / bool values."""
    if not where:
        return {}
    if not isinstance(where, Mapping):
        raise StoreError(f"where must be a mapping of metadata key to value, got {type(where).__name__}")
    for key, value in where.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise StoreError(f"where key {key!r} is not a metadata name: use letters, digits and underscores "
                             "(not starting with a digit)")
        if not isinstance(value, (str, int, bool)):
            raise StoreError(f"where[{key!r}] = {value!r}: a filter value must be a str, int or bool")
    return dict(where)


def matches_where(metadata: Mapping[str, Any], where: Mapping[str, Any] | None) -> bool:
    """Equality of value and JSON type, as the stores' SQL filters match (1 matches neither "1",
    True nor 1.0): the filter for what is searched outside a store (BM25 over its chunks)."""
    return not where or all(key in metadata and type(metadata[key]) is type(value) and metadata[key] == value
                            for key, value in where.items())


def check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise StoreError(f"k must be a positive int, got {k!r}")
    return k
