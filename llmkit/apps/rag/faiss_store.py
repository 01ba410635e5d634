"""`FaissStore`: the embedded vector store, a directory on disk.

    store/
      manifest.json   format, embedder, dim, metric, kind (+ the HNSW settings); written once
      store.db        SQLite, the source of truth: documents (doc_id, content_hash) and chunks
                      (FAISS id, chunk_id, doc_id, ordinal, text, metadata JSON, float32 vector)
      index.faiss     the FAISS index over the stored vectors, derived from store.db
      index.json      the database generation the index reflects

Why two layers: a FAISS index cannot take part in a transaction, SQLite can. Each
`upsert_document` / `delete_document` is one SQLite transaction that also bumps a generation
counter; the in-memory index follows after the commit and is written (atomically) at `flush()` /
`close()`. A crash therefore never leaves a half-written document, only an index file that is
behind the database, and opening the store rebuilds it from the stored vectors.

One process writes a store at a time; a store opened after another one wrote sees what it wrote.

Kinds: "flat" (exact inner product over every vector, `IndexIDMap2(IndexFlatIP)`: removes ids) and
"hnsw" (`IndexHNSWFlat`, approximate and fast on large stores). HNSW cannot remove vectors: a
deleted chunk's id stays in the graph as a tombstone that searches skip (an `IDSelectorNot`), and
once tombstones pass `tombstone_fraction` of the index it is rebuilt from SQLite (`compact()`).
FAISS ids are SQLite's AUTOINCREMENT row ids, never reused, so a tombstone cannot come back as
another chunk.

Metadata filters pick the allowed ids in SQLite (json_type / json_extract) and search FAISS with an
`IDSelectorBatch`. HNSW's filtered search loses recall when few ids are allowed (the graph walk
meets too few of them), so a filter that allows at most `exact_filter_limit` chunks, or a filtered
HNSW search that comes back short, scans the allowed vectors exactly instead (as `exact=True` does).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import faiss
import numpy as np

from ...utils import atomic_path, write_json_atomic
from .records import Chunk, ScoredChunk
from .stores import (StoreError, check_k, check_manifest, check_upsert, check_where, metadata_json, new_manifest,
                     normalize)

log = logging.getLogger(__name__)

KINDS = ("flat", "hnsw")
_BATCH = 8192  # rows read from SQLite at a time when rebuilding or scanning

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', 0);
CREATE TABLE IF NOT EXISTS documents (doc_id TEXT PRIMARY KEY, content_hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the FAISS id; AUTOINCREMENT never reuses one
    chunk_id TEXT NOT NULL UNIQUE,
    doc_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks (doc_id, ordinal);
"""


class FaissStore:
    """A FAISS index over a SQLite database in the directory `path` (see the module docstring).

    A new store (create=True) needs embedder_name and dim; `kind`, `hnsw_m` and `ef_construction`
    apply when it is created, `ef_search` (HNSW's search breadth) may be changed at any open.
    """

    def __init__(self, path: str | os.PathLike, embedder_name: str | None = None, dim: int | None = None,
                 kind: str = "flat", create: bool = False, *, hnsw_m: int = 32, ef_construction: int = 200,
                 ef_search: int | None = None, tombstone_fraction: float = 0.2,
                 exact_filter_limit: int = 20_000) -> None:
        self.path = Path(path)
        self.location = str(path)  # as the user named it (PgVectorStore: the URL without its password)
        self.manifest = self._open_manifest(embedder_name, dim, kind, create, hnsw_m, ef_construction,
                                            ef_search or 64)
        self.dim: int = self.manifest["dim"]
        self.kind: str = self.manifest["kind"].removeprefix("faiss-")
        hnsw = self.manifest.get("hnsw", {})
        self.ef_search = int(ef_search or hnsw.get("efSearch", 64))
        if not 0 < tombstone_fraction <= 1:
            raise StoreError(f"tombstone_fraction={tombstone_fraction} must be in (0, 1]")
        self.tombstone_fraction = tombstone_fraction
        self.exact_filter_limit = exact_filter_limit
        self._lock = threading.RLock()
        try:
            self._db: sqlite3.Connection | None = sqlite3.connect(self.path / "store.db", isolation_level=None,
                                                                  check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as error:
            raise StoreError(f"cannot open {self.path / 'store.db'}: {error}; check that it is a store's "
                             "database and that the directory is writable") from error
        self._generation = self._db_generation()
        self._saved_generation = -1
        self._tombstones: set[int] = set()
        self._skip: Any = None  # the cached IDSelector that skips tombstones
        self.rebuilt_on_open = not self._load_index()
        if self.rebuilt_on_open:
            self._rebuild()

    # ------------------------------------------------------------------ opening
    def _open_manifest(self, embedder_name: str | None, dim: int | None, kind: str, create: bool,
                       hnsw_m: int, ef_construction: int, ef_search: int) -> dict:
        path, file = self.path, self.path / "manifest.json"
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} is a file, not a vector store directory: give a directory path")
        if file.exists():
            try:
                manifest = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise StoreError(f"cannot read {file}: {error}; the store's manifest is damaged") from error
            if not isinstance(manifest, dict) or manifest.get("kind") not in ("faiss-flat", "faiss-hnsw"):
                raise StoreError(f"{file} does not describe a FAISS store (kind "
                                 f"{manifest.get('kind') if isinstance(manifest, dict) else None!r})")
            check_manifest(manifest, embedder_name, dim, str(path))
            return manifest
        if path.exists() and any(path.iterdir()):
            raise StoreError(f"{path} exists but is not an llmkit vector store (it has no manifest.json): give "
                             "a new or empty directory")
        if not create:
            raise StoreError(f"there is no vector store at {path}: create one with create=True (with "
                             "embedder_name and dim), e.g. by indexing documents into it")
        kind = kind.removeprefix("faiss-")
        if kind not in KINDS:
            raise StoreError(f"kind={kind!r} is not a FAISS store kind: use one of {', '.join(KINDS)}")
        extra = {}
        if kind == "hnsw":
            extra = {"hnsw": {"M": hnsw_m, "efConstruction": ef_construction, "efSearch": ef_search}}
        manifest = new_manifest(embedder_name, dim, f"faiss-{kind}", str(path), **extra)
        path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(file, manifest)
        return manifest

    def _new_index(self) -> Any:
        if self.kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        hnsw = self.manifest["hnsw"]
        inner = faiss.IndexHNSWFlat(self.dim, int(hnsw["M"]), faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = int(hnsw["efConstruction"])
        return faiss.IndexIDMap(inner)

    def _load_index(self) -> bool:
        """Load index.faiss if it reflects the database's generation and holds every live id."""
        file, side = self.path / "index.faiss", self.path / "index.json"
        try:
            saved = json.loads(side.read_text(encoding="utf-8"))
            if saved.get("generation") != self._generation or saved.get("kind") != self.kind:
                log.info("index of %s is stale (generation %s, database %s): rebuilding", self.path,
                         saved.get("generation"), self._generation)
                return False
            index = faiss.read_index(str(file))
        except (OSError, ValueError, RuntimeError) as error:  # missing, damaged: rebuild
            log.info("no usable index in %s (%s): rebuilding", self.path, error)
            return False
        ids = set(faiss.vector_to_array(index.id_map).tolist()) if hasattr(index, "id_map") else set()
        live = set(self._ids())
        if index.d != self.dim or index.ntotal != saved.get("ntotal") or not live <= ids or \
                (self.kind == "flat" and ids != live):
            log.info("index of %s does not match its database: rebuilding", self.path)
            return False
        self._index, self._tombstones, self._skip = index, ids - live, None
        self._saved_generation = self._generation
        return True

    # ------------------------------------------------------------------ the database
    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"the store at {self.path} is closed")
        return self._db

    def _db_generation(self) -> int:
        return int(self._conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    def _ids(self) -> Iterator[int]:
        return (row[0] for row in self._conn.execute("SELECT id FROM chunks"))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that bumps the generation; rolled back on any error."""
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._generation += 1

    def _set_hash(self, db: sqlite3.Connection, doc_id: str, content_hash: str) -> None:
        db.execute("INSERT INTO documents (doc_id, content_hash) VALUES (?, ?) ON CONFLICT (doc_id) "
                   "DO UPDATE SET content_hash = excluded.content_hash", (doc_id, content_hash))

    # ------------------------------------------------------------------ writing
    def upsert_document(self, doc_id: str, content_hash: str, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Replace every chunk of doc_id with `chunks` (vectors row i is chunks[i]) in one transaction."""
        x = check_upsert(doc_id, content_hash, chunks, vectors, self.dim)
        rows = [(c.chunk_id, doc_id, c.ordinal, c.text, metadata_json(c), x[i].tobytes())
                for i, c in enumerate(chunks)]
        with self._lock:
            try:
                with self._transaction() as db:
                    old = [r[0] for r in db.execute("SELECT id FROM chunks WHERE doc_id = ?", (doc_id,))]
                    db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
                    new = [db.execute("INSERT INTO chunks (chunk_id, doc_id, ordinal, text, metadata, vector) "
                                      "VALUES (?, ?, ?, ?, ?, ?)", row).lastrowid for row in rows]
                    self._set_hash(db, doc_id, content_hash)
            except sqlite3.IntegrityError as error:
                taken = [c.chunk_id for c in chunks if self._conn.execute(
                    "SELECT 1 FROM chunks WHERE chunk_id = ? AND doc_id != ?", (c.chunk_id, doc_id)).fetchone()]
                raise StoreError(f"document {doc_id!r}: chunk_id {taken[0] if taken else '?'!r} is already stored "
                                 f"for another document ({error}); chunk ids must be unique") from error
            except sqlite3.Error as error:
                raise StoreError(f"writing document {doc_id!r} to {self.path / 'store.db'} failed: {error}") from error
            self._follow(old, np.array(new, dtype=np.int64), x)

    def delete_document(self, doc_id: str) -> None:
        """Remove doc_id and its chunks (nothing happens for an unknown doc_id)."""
        with self._lock:
            with self._transaction() as db:
                old = [r[0] for r in db.execute("SELECT id FROM chunks WHERE doc_id = ?", (doc_id,))]
                db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
                db.execute("DELETE FROM documents WHERE doc_id = ?", (doc_id,))
            self._follow(old, np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32))

    def _follow(self, removed: list[int], added: np.ndarray, vectors: np.ndarray) -> None:
        """Bring the in-memory index up to the committed database."""
        try:
            if removed and self.kind == "flat":
                self._index.remove_ids(np.array(removed, dtype=np.int64))
            elif removed:
                self._tombstones.update(removed)
                self._skip = None
            if len(added):
                self._index.add_with_ids(vectors, added)
        except RuntimeError as error:  # never leave an index that disagrees with the database
            log.warning("updating the FAISS index failed (%s): rebuilding it from %s", error, self.path)
            self._rebuild()
            return
        if self._tombstones and len(self._tombstones) > self.tombstone_fraction * self._index.ntotal:
            self.compact()

    def compact(self) -> None:
        """Rebuild the index from the database (HNSW: drops the tombstones of deleted chunks)."""
        with self._lock:
            self._rebuild()

    def _rebuild(self) -> None:
        index = self._new_index()
        for ids, vectors in self._vectors():
            index.add_with_ids(vectors, ids)
        self._index, self._tombstones, self._skip = index, set(), None
        self._saved_generation = -1  # the file on disk no longer matches

    def _vectors(self, where: Mapping[str, Any] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of the live chunks matching `where`, a batch at a time."""
        sql, params = _where_sql(where)
        cursor = self._conn.execute(f"SELECT id, vector FROM chunks{sql} ORDER BY id", params)
        while rows := cursor.fetchmany(_BATCH):
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            yield ids, np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), self.dim)

    def flush(self) -> None:
        """Write the index (atomically) if it moved on since it was last written."""
        with self._lock:
            if self._saved_generation == self._generation:
                return
            with atomic_path(self.path / "index.faiss") as tmp:
                faiss.write_index(self._index, str(tmp))
            # written after the index: a crash between the two leaves an older generation, so a rebuild
            write_json_atomic(self.path / "index.json", {"generation": self._generation, "kind": self.kind,
                                                         "ntotal": int(self._index.ntotal)})
            self._saved_generation = self._generation

    def close(self) -> None:
        """Write the index and close the database; closing twice is harmless."""
        with self._lock:
            if self._db is None:
                return
            self.flush()
            self._db.close()
            self._db = None

    def __enter__(self) -> "FaissStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    def document_hashes(self) -> dict[str, str]:
        """doc_id -> content_hash of every stored document."""
        with self._lock:
            return dict(self._conn.execute("SELECT doc_id, content_hash FROM documents").fetchall())

    def chunks(self) -> Iterator[Chunk]:
        """Every live chunk, by document and ordinal."""
        with self._lock:
            rows = self._conn.execute("SELECT chunk_id, doc_id, ordinal, text, metadata FROM chunks "
                                      "ORDER BY doc_id, ordinal").fetchall()
        return (Chunk(c, d, o, t, json.loads(m)) for c, d, o, t, m in rows)

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM chunks").fetchone()[0])

    @property
    def generation(self) -> int:
        """A number that every write to the store (from any process) increases."""
        with self._lock:
            return self._db_generation()

    @property
    def index_size(self) -> int:
        """Vectors in the FAISS index, tombstones included."""
        return int(self._index.ntotal)

    @property
    def tombstones(self) -> int:
        """Deleted chunks still in the HNSW graph (always 0 for flat)."""
        return len(self._tombstones)

    def search(self, vector: np.ndarray, k: int, where: Mapping[str, Any] | None = None,
               exact: bool = False) -> list[ScoredChunk]:
        """The k chunks most similar to `vector` (cosine, best first) whose metadata matches `where`;
        exact=True scans every vector (an HNSW store; a flat store is always exact)."""
        k, where = check_k(k), check_where(where)
        q = normalize(vector, self.dim, "the query vector")
        if len(q) != 1:
            raise StoreError(f"search takes one query vector, got {len(q)}")
        with self._lock:
            allowed = None
            if where:
                sql, params = _where_sql(where)
                allowed = np.array([r[0] for r in self._conn.execute(f"SELECT id FROM chunks{sql}", params)],
                                   dtype=np.int64)
                if not len(allowed):
                    return []
            if self.kind == "hnsw" and (exact or (allowed is not None and len(allowed) <= self.exact_filter_limit)):
                ids, scores = self._scan(q[0], k, where)
            else:
                ids, scores = self._search_index(q, k, allowed)
                if self.kind == "hnsw" and allowed is not None and len(ids) < min(k, len(allowed)):
                    ids, scores = self._scan(q[0], k, where)  # the graph walk met too few allowed ids
            return self._fetch(ids, scores)

    def _search_index(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[list[int], list[float]]:
        selector = faiss.IDSelectorBatch(allowed) if allowed is not None else self._skip_tombstones()
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.ef_search, k))
        else:
            params = faiss.SearchParameters(sel=selector)
        scores, ids = self._index.search(q, min(k, max(self._index.ntotal, 1)), params=params)
        keep = ids[0] >= 0
        return ids[0][keep].tolist(), scores[0][keep].tolist()

    def _skip_tombstones(self) -> Any:
        if not self._tombstones:
            return None
        if self._skip is None:
            inner = faiss.IDSelectorBatch(np.fromiter(self._tombstones, dtype=np.int64))
            self._skip = faiss.IDSelectorNot(inner)
            self._skip.inner = inner  # IDSelectorNot keeps a raw pointer: keep the Python object alive
        return self._skip

    def _scan(self, q: np.ndarray, k: int, where: Mapping[str, Any] | None) -> tuple[list[int], list[float]]:
        """Exact top-k by a scan over the stored vectors (numpy), a batch at a time."""
        best_ids, best = np.zeros(0, np.int64), np.zeros(0, np.float32)
        for ids, vectors in self._vectors(where):
            ids, scores = np.concatenate([best_ids, ids]), np.concatenate([best, vectors @ q])
            top = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
            best_ids, best = ids[top], scores[top]
        order = np.argsort(-best, kind="stable")
        return best_ids[order].tolist(), best[order].tolist()

    def _fetch(self, ids: list[int], scores: list[float]) -> list[ScoredChunk]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = {r[0]: r[1:] for r in self._conn.execute(
            f"SELECT id, chunk_id, doc_id, ordinal, text, metadata FROM chunks WHERE id IN ({marks})", ids)}
        hits = []
        for i, score in zip(ids, scores):
            if i in rows:  # always, unless the index and the database disagree
                chunk_id, doc_id, ordinal, text, metadata = rows[i]
                hits.append(ScoredChunk(Chunk(chunk_id, doc_id, ordinal, text, json.loads(metadata)), float(score)))
        return hits


def _where_sql(where: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    """A WHERE clause matching metadata by value and JSON type (keys are checked identifiers, values
    are parameters)."""
    clauses: list[str] = []
    params: list[Any] = []
    for key, value in (where or {}).items():
        path = f"$.{key}"
        if isinstance(value, bool):
            clauses.append("json_type(metadata, ?) = ?")
            params += [path, "true" if value else "false"]
        else:
            clauses.append("(json_type(metadata, ?) = ? AND json_extract(metadata, ?) = ?)")
            params += [path, "integer" if isinstance(value, int) else "text", path, value]
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
