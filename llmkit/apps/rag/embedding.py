"""Embeddings for retrieval, only ever through an `embedder=` (an `LLM` with ``embed``: all-MiniLM-L6-v2
by default, local or a server's ``/v1/embeddings``), batched and cached by content hash.

    embedder = default_embedder()                       # llmkit pull all-minilm-l6-v2, once
    cache = EmbeddingCache("runs/idx/embeddings.db")
    vectors = embed_texts(embedder, texts, cache=cache)  # float32 (len(texts), dim)

The cache key is the SHA-256 of the embedder's identity and the text, so one cache file can serve
several embedders and a changed text is embedded again; it is a SQLite file, written in one
transaction per batch, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "all-minilm-l6-v2"


class EmbedderError(ValueError):
    """An embedder that cannot embed, or whose vectors are not what the index holds."""


def default_embedder(name: str = DEFAULT_EMBEDDER, device: str | None = None) -> Any:
    """The default embedder, from the local model cache (`llmkit pull all-minilm-l6-v2` puts it there)."""
    from ...infer.llm import load

    try:
        return load(name, device=device)
    except FileNotFoundError as e:  # ModelNotFoundError too
        raise EmbedderError(f"the embedder {name!r} is not in the model cache: run `llmkit pull {name}` once "
                            f"(or give --embedder PATH|URL) ({e})") from None


def embedder_name(embedder: Any) -> str:
    """The name an index records for its embedder (the model's name, e.g. ``all-minilm-l6-v2``)."""
    name = getattr(embedder, "name", None) or getattr(embedder, "model", None)
    if not name:
        raise EmbedderError(f"{type(embedder).__name__} has no .name: an index must record which embedder made it")
    return str(name)


def embedding_dim(embedder: Any) -> int:
    """The length of the embedder's vectors (its own ``embedding_dim`` where it has one, else one text tells)."""
    dim = getattr(embedder, "embedding_dim", None)
    if callable(dim):
        dim = dim()
    if dim is None:
        dim = int(np.asarray(embedder.embed(["dimension probe"])).shape[1])
    return int(dim)


class EmbeddingCache:
    """Vectors by SHA-256(embedder name, text) in a SQLite file (`path`; ":memory:" for none on disk)."""

    def __init__(self, path: str | os.PathLike = ":memory:") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, dim INTEGER, vector BLOB)")
        self.hits = self.misses = 0

    @staticmethod
    def key(embedder: str, text: str) -> str:
        return hashlib.sha256(f"{embedder}\0{text}".encode()).hexdigest()

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for at in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            part = list(keys[at:at + 500])
            rows = self._db.execute(f"SELECT key, dim, vector FROM vectors WHERE key IN ({','.join('?' * len(part))})",
                                    part).fetchall()
            found.update({k: np.frombuffer(blob, dtype=np.float32, count=dim) for k, dim, blob in rows})
        return found

    def put(self, items: dict[str, np.ndarray]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                                 [(k, int(v.shape[0]), np.asarray(v, np.float32).tobytes()) for k, v in items.items()])

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def close(self) -> None:
        self._db.close()


def embed_texts(embedder: Any, texts: Sequence[str], cache: EmbeddingCache | None = None, batch_size: int = 64,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
    """float32 vectors (len(texts), dim), as the embedder made them, in input order: cached ones read back, the
    rest embedded `batch_size` at a time, longest first (each batch stored as it is made). `progress(n)` is called
    with the number of texts done after each batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    texts = list(texts)
    if not texts:
        return np.zeros((0, embedding_dim(embedder)), dtype=np.float32)
    name = embedder_name(embedder)
    keys = [EmbeddingCache.key(name, t) for t in texts]
    known = cache.get(keys) if cache is not None else {}
    todo = sorted({k: i for i, k in enumerate(keys) if k not in known}.values())  # one per distinct text
    # batches of similar lengths pad least (sentence-transformers sorts the same way); order is restored by key
    todo.sort(key=lambda i: -len(texts[i]))
    if cache is not None:
        cache.hits += len(texts) - len(todo)
        cache.misses += len(todo)
    done = len(texts) - len(todo)
    if progress and done:
        progress(done)
    for at in range(0, len(todo), batch_size):
        part = todo[at:at + batch_size]
        vectors = np.asarray(embedder.embed([texts[i] for i in part]), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(part):
            raise EmbedderError(f"{name} returned vectors of shape {vectors.shape} for {len(part)} texts")
        fresh = {keys[i]: v for i, v in zip(part, vectors)}
        known.update(fresh)
        if cache is not None:
            cache.put(fresh)
        if progress:
            progress(len(part))
    dims = {v.shape[0] for v in known.values()}
    if len(dims) != 1:
        raise EmbedderError(f"the cache holds vectors of several lengths {sorted(dims)} for {name}: delete the cache "
                            "file, it was written by another model under the same name")
    return np.stack([known[k] for k in keys])
