"""`PgVectorStore`: the vector store in PostgreSQL with the pgvector extension.

    store = PgVectorStore("postgresql://user:pw@host/db", embedder_name="all-MiniLM-L6-v2", dim=384, create=True)

Three tables, named after `table` (default "llmkit_chunks"):
    {table}            chunk_id (key), doc_id, ordinal, text, metadata JSONB, embedding vector(dim),
                       with an HNSW index (vector_cosine_ops) for approximate search
    {table}_documents  doc_id (key), content_hash; deleting one deletes its chunks
    {table}_manifest   one row: the store's manifest (embedder, dim, ...)

`upsert_document` deletes a document's chunks, COPYs the new ones in and records its hash in one
transaction, so a crash (or a killed client) leaves the document wholly old or wholly new.
`search` orders by cosine distance (`<=>`; score = 1 - distance) and filters metadata in SQL with
parameters only; exact=True runs the same query with index scans turned off for the transaction,
which makes PostgreSQL scan every row. An approximate search widens `hnsw.ef_search` to k (HNSW
returns at most ef_search rows) and, on pgvector >= 0.8, turns on iterative scans when filtering, so
a selective filter still finds k rows.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .records import Chunk, ScoredChunk
from .stores import (StoreError, check_k, check_manifest, check_upsert, check_where, metadata_json, new_manifest,
                     normalize, redact_url)

_TABLE = re.compile(r"[a-z_][a-z0-9_]{0,39}\Z")
_HNSW_MAX_DIM = 2000  # pgvector indexes vectors of at most 2000 dimensions; larger ones are scanned
_EF_MAX = 1000  # hnsw.ef_search's upper bound: a larger k is answered by an exact scan


class PgVectorStore:
    """A vector store in the PostgreSQL database at `url` (see the module docstring). A new store
    (create=True) needs embedder_name and dim; `table` names its tables, so one database can hold
    several stores."""

    def __init__(self, url: str, embedder_name: str | None = None, dim: int | None = None,
                 table: str = "llmkit_chunks", create: bool = False, *, connect_timeout: int = 10) -> None:
        if not isinstance(table, str) or not _TABLE.match(table):
            raise StoreError(f"table={table!r} is not a usable table name: use 1-40 lowercase letters, digits and "
                             "underscores, starting with a letter")
        self.url, self.table = url, table
        self.location = f"{redact_url(url)} (table {table})"
        self._lock = threading.RLock()
        try:
            self._conn: psycopg.Connection | None = psycopg.connect(url, autocommit=True,
                                                                    connect_timeout=connect_timeout)
        except psycopg.Error as error:
            reason = " ".join(str(error).split())
            if _password(url):
                reason = reason.replace(_password(url), "***")
            raise StoreError(f"cannot connect to PostgreSQL at {redact_url(url)}: {reason}; check that the "
                             "server is running and reachable, and the host, port, user, password and database "
                             "name in the URL") from None
        self._names = {name: sql.Identifier(table + suffix) for name, suffix in
                       (("chunks", ""), ("documents", "_documents"), ("manifest", "_manifest"))}
        try:
            self._setup_vector()
            self.manifest = self._open_manifest(embedder_name, dim, create)
        except BaseException:
            self._conn.close()
            raise
        self.dim: int = self.manifest["dim"]

    def __repr__(self) -> str:
        return f"PgVectorStore({self.location})"

    # ------------------------------------------------------------------ opening
    def _setup_vector(self) -> None:
        conn = self._live
        try:
            if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone() is None:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.Error as error:
            raise StoreError(f"the pgvector extension is not available in {redact_url(self.url)} ({error}); install "
                             "pgvector on the server and run CREATE EXTENSION vector as a user allowed to") from error
        from pgvector.psycopg import register_vector

        register_vector(conn)
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        self._iterative_scan = tuple(int(p) for p in re.findall(r"\d+", version)[:2]) >= (0, 8)

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(**self._names)

    def _exists(self, name: str) -> bool:
        row = self._live.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() "
                                 "AND table_name = %s", (name,)).fetchone()
        return row is not None

    def _open_manifest(self, embedder_name: str | None, dim: int | None, create: bool) -> dict:
        if not self._exists(self.table + "_manifest"):
            if self._exists(self.table):
                raise StoreError(f"table {self.table!r} in {redact_url(self.url)} exists but is not an llmkit vector "
                                 "store (it has no manifest table): choose another table name")
            if not create:
                raise StoreError(f"there is no vector store at {self.location}: create one with create=True (with "
                                 "embedder_name and dim), e.g. by indexing documents into it")
            self._create(new_manifest(embedder_name, dim, "pgvector", self.location, table=self.table))
        row = self._live.execute(self._q("SELECT manifest FROM {manifest}")).fetchone()
        if row is None or not isinstance(row[0], dict) or row[0].get("kind") != "pgvector":
            raise StoreError(f"the manifest of {self.location} is missing or damaged: drop the store's tables and "
                             "index again")
        check_manifest(row[0], embedder_name, dim, self.location)
        return row[0]

    def _create(self, manifest: dict) -> None:
        """Make the tables in one transaction (a concurrent creator's manifest wins and is checked)."""
        dim = manifest["dim"]
        with self._live.transaction():
            c = self._live
            c.execute(self._q("CREATE TABLE IF NOT EXISTS {manifest} (id integer PRIMARY KEY CHECK (id = 1), "
                              "manifest jsonb NOT NULL)"))
            c.execute(self._q("CREATE TABLE IF NOT EXISTS {documents} (doc_id text PRIMARY KEY, "
                              "content_hash text NOT NULL)"))
            c.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {chunks} (chunk_id text PRIMARY KEY, "
                "doc_id text NOT NULL REFERENCES {documents} (doc_id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED, "
                "ordinal integer NOT NULL, text text NOT NULL, metadata jsonb NOT NULL, "
                "embedding vector({dim}) NOT NULL)").format(dim=sql.Literal(dim), **self._names))
            c.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {name} ON {chunks} (doc_id, ordinal)").format(
                name=sql.Identifier(self.table + "_by_doc"), **self._names))
            if dim <= _HNSW_MAX_DIM:
                c.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {name} ON {chunks} USING hnsw "
                                  "(embedding vector_cosine_ops)").format(name=sql.Identifier(self.table + "_hnsw"),
                                                                          **self._names))
            c.execute(self._q("INSERT INTO {manifest} (id, manifest) VALUES (1, %s) ON CONFLICT (id) DO NOTHING"),
                      (Jsonb(manifest),))

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn a database error into a StoreError that says what was being done, and where."""
        try:
            yield
        except psycopg.Error as error:
            raise StoreError(f"{what} in {self.location} failed: {error}; if the connection was lost, open the "
                             "store again") from error

    @property
    def _live(self) -> psycopg.Connection:
        if self._conn is None:
            raise StoreError(f"the store at {self.location} is closed")
        return self._conn

    # ------------------------------------------------------------------ writing
    def _set_hash(self, cur: psycopg.Cursor, doc_id: str, content_hash: str) -> None:
        cur.execute(self._q("INSERT INTO {documents} (doc_id, content_hash) VALUES (%s, %s) ON CONFLICT (doc_id) "
                            "DO UPDATE SET content_hash = EXCLUDED.content_hash"), (doc_id, content_hash))

    def upsert_document(self, doc_id: str, content_hash: str, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Replace every chunk of doc_id with `chunks` (vectors row i is chunks[i]) in one transaction."""
        x = check_upsert(doc_id, content_hash, chunks, vectors, self.dim)
        rows = [(c.chunk_id, doc_id, c.ordinal, c.text, _metadata(c), x[i]) for i, c in enumerate(chunks)]
        copy_sql = self._q("COPY {chunks} (chunk_id, doc_id, ordinal, text, metadata, embedding) "
                           "FROM STDIN WITH (FORMAT BINARY)")
        with self._lock:
            try:
                with self._live.transaction(), self._live.cursor() as cur:
                    # two writers of one document wait for each other instead of colliding on its chunk ids
                    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{self.table}:{doc_id}",))
                    cur.execute(self._q("DELETE FROM {chunks} WHERE doc_id = %s"), (doc_id,))
                    with cur.copy(copy_sql) as copy:
                        copy.set_types(["text", "text", "int4", "text", "jsonb", "vector"])
                        for row in rows:
                            copy.write_row(row)
                    self._set_hash(cur, doc_id, content_hash)
            except psycopg.errors.UniqueViolation as error:
                raise StoreError(f"document {doc_id!r}: a chunk_id is already stored for another document "
                                 f"({error.diag.message_detail or error}); chunk ids must be unique") from error
            except psycopg.Error as error:
                raise StoreError(f"writing document {doc_id!r} to {self.location} failed: {error}") from error

    def delete_document(self, doc_id: str) -> None:
        """Remove doc_id and its chunks (nothing happens for an unknown doc_id)."""
        with self._lock, self._errors(f"deleting document {doc_id!r}"), self._live.transaction():
            self._live.execute(self._q("DELETE FROM {chunks} WHERE doc_id = %s"), (doc_id,))
            self._live.execute(self._q("DELETE FROM {documents} WHERE doc_id = %s"), (doc_id,))

    def flush(self) -> None:
        """Nothing to do: every write is committed when it returns (here for symmetry with FaissStore)."""

    def close(self) -> None:
        """Close the connection; closing twice is harmless."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "PgVectorStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    def document_hashes(self) -> dict[str, str]:
        """doc_id -> content_hash of every stored document."""
        with self._lock, self._errors("reading the document hashes"):
            return dict(self._live.execute(self._q("SELECT doc_id, content_hash FROM {documents}")).fetchall())

    def chunks(self) -> Iterator[Chunk]:
        """Every live chunk, by document (in byte order, as FaissStore) and ordinal."""
        with self._lock, self._errors("reading the chunks"):
            rows = self._live.execute(self._q('SELECT chunk_id, doc_id, ordinal, text, metadata FROM {chunks} '
                                              'ORDER BY doc_id COLLATE "C", ordinal')).fetchall()
        return (Chunk(*row) for row in rows)

    def __len__(self) -> int:
        with self._lock, self._errors("counting the chunks"):
            return int(self._live.execute(self._q("SELECT count(*) FROM {chunks}")).fetchone()[0])

    def search(self, vector: np.ndarray, k: int, where: Mapping[str, Any] | None = None,
               exact: bool = False) -> list[ScoredChunk]:
        """The k chunks most similar to `vector` (cosine, best first) whose metadata matches `where`;
        exact=True scans every row instead of using the HNSW index."""
        k, where = check_k(k), check_where(where)
        q = normalize(vector, self.dim, "the query vector")
        if len(q) != 1:
            raise StoreError(f"search takes one query vector, got {len(q)}")
        # jsonb equates 2 and 2.0; its text form does not, so a filter matches as SQLite's and Python's do
        filters = [sql.SQL("metadata -> {0} = {1} AND metadata ->> {0} = {1}").format(sql.Literal(key), sql.Placeholder())
                   for key in where]
        query = sql.SQL("SELECT chunk_id, doc_id, ordinal, text, metadata, 1 - (embedding <=> %s) FROM {chunks} "
                        "{where} ORDER BY embedding <=> %s LIMIT %s").format(
            where=sql.SQL("WHERE ") + sql.SQL(" AND ").join(filters) if filters else sql.SQL(""), **self._names)
        params = [q[0], *(p for value in where.values() for p in (Jsonb(value), _text(value))), q[0], k]
        with self._lock, self._errors("searching"), self._live.transaction():
            if exact or k > _EF_MAX or self.dim > _HNSW_MAX_DIM:
                # no index scan, and a session's enable_seqscan = off cannot bring the index back
                self._live.execute("SET LOCAL enable_indexscan = off")
                self._live.execute("SET LOCAL enable_seqscan = on")
            else:
                self._live.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(max(40, k)),))
                if where and self._iterative_scan:
                    self._live.execute("SET LOCAL hnsw.iterative_scan = strict_order")
            # prepare=False: psycopg prepares a query run 5 times, and PostgreSQL's cached plan of a
            # prepared query ignores later planner settings (an "exact" search would use the index)
            rows = self._live.execute(query, params, prepare=False).fetchall()
        return [ScoredChunk(Chunk(*row[:5]), float(row[5])) for row in rows]


def _password(url: str) -> str:
    netloc = url.partition("://")[2].partition("/")[0]
    userinfo = netloc.rpartition("@")[0]
    return userinfo.partition(":")[2]


def _metadata(chunk: Chunk) -> Jsonb:
    """The chunk's metadata for a JSONB column; PostgreSQL text and JSONB cannot hold NUL characters."""
    text = metadata_json(chunk)
    if "\x00" in chunk.text or "\\u0000" in text:
        raise StoreError(f"chunk {chunk.chunk_id!r} holds a NUL character, which PostgreSQL cannot store: "
                         "remove '\\x00' from the text (the loader should)")
    return Jsonb(chunk.metadata)


def _text(value: Any) -> str:
    """`value` as jsonb's ->> operator prints it (a string bare, others as JSON)."""
    return value if isinstance(value, str) else json.dumps(value)
