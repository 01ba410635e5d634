"""The vector stores: FAISS on disk (flat and HNSW) and PostgreSQL + pgvector, on small random
vectors checked against a numpy brute force; interruption leaves each store consistent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.peers import missing

for _module in ("faiss", "psycopg", "pgvector"):
    try:
        __import__(_module)
    except ImportError as _error:
        missing(f"cannot import {_module} ({_error}); install it with: pip install -e \".[rag]\"")

from llmkit.apps.rag.faiss_store import FaissStore  # noqa: E402
from llmkit.apps.rag.pg_store import PgVectorStore, redact_url  # noqa: E402
from llmkit.apps.rag.records import Chunk  # noqa: E402
from llmkit.apps.rag.stores import StoreError, StoreMismatch, VectorStore, matches_where, open_store  # noqa: E402

DIM = 24
ROOT = Path(__file__).resolve().parents[3]
FORMATS = ("pdf", "markdown", "html")


# ---------------------------------------------------------------- data: documents of random vectors


def document(i: int, version: int = 0, n: int | None = None) -> tuple[str, str, list[Chunk], np.ndarray]:
    """(doc_id, content_hash, chunks, vectors) of document i, the same on every call (and in a subprocess)."""
    rng = np.random.default_rng([i, version])
    n = n if n is not None else 3 + i % 5
    doc_id = f"doc{i}"
    chunks = [Chunk(f"{doc_id}#{j}", doc_id, j, f"text of {doc_id} v{version} part {j}",
                    {"source": f"{doc_id}.txt", "format": FORMATS[i % 3], "page": j % 4, "draft": i % 2 == 1})
              for j in range(n)]
    return doc_id, f"hash-{i}-{version}", chunks, rng.standard_normal((n, DIM)).astype(np.float32)


def corpus(n_docs: int = 50, **kw) -> dict[str, tuple[str, list[Chunk], np.ndarray]]:
    return {d: (h, c, v) for d, h, c, v in (document(i, **kw) for i in range(n_docs))}


def fill(store, docs) -> None:
    for doc_id, (content_hash, chunks, vectors) in docs.items():
        store.upsert_document(doc_id, content_hash, chunks, vectors)


def brute_force(docs, q: np.ndarray, k: int, where: dict | None = None) -> list[tuple[str, float]]:
    """Top-k (chunk_id, cosine) by numpy over every chunk whose metadata equals `where` (type included)."""
    items = [(c, v) for _, chunks, vectors in docs.values() for c, v in zip(chunks, vectors)
             if all(key in c.metadata and type(c.metadata[key]) is type(value) and c.metadata[key] == value
                    for key, value in (where or {}).items())]
    if not items:
        return []
    x = np.stack([v for _, v in items]).astype(np.float64)
    scores = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    order = np.argsort(-scores)[:k]
    return [(items[i][0].chunk_id, float(scores[i])) for i in order]


def stored(store) -> dict[str, tuple[str, dict]]:
    return {c.chunk_id: (c.text, c.metadata) for c in store.chunks()}


def expected(docs) -> dict[str, tuple[str, dict]]:
    return {c.chunk_id: (c.text, c.metadata) for _, chunks, _ in docs.values() for c in chunks}


def assert_consistent(store, docs) -> None:
    """Every stored document has exactly its chunks (none partial, none orphaned), and the index agrees
    with the database: each chunk's own vector finds it first."""
    hashes = store.document_hashes()
    assert set(hashes) <= set(docs)
    assert stored(store) == expected({d: docs[d] for d in hashes})
    assert all(hashes[d] == docs[d][0] for d in hashes)
    if isinstance(store, FaissStore):
        assert store.index_size - store.tombstones == len(store)
    for doc_id in hashes:
        _, chunks, vectors = docs[doc_id]
        assert store.search(vectors[-1], 1)[0].chunk.chunk_id == chunks[-1].chunk_id


# ---------------------------------------------------------------- the stores under test


@pytest.fixture(params=["faiss-flat", "faiss-hnsw", "pgvector"])
def spec(request, tmp_path):
    """(location, options) of a new store of each kind; `make(spec)` opens it."""
    if request.param == "pgvector":
        return request.getfixturevalue("postgres"), {"table": f"t_{uuid.uuid4().hex[:12]}"}
    return str(tmp_path / "store"), {"kind": request.param.removeprefix("faiss-")}


def make(spec, embedder_name: str | None = "embedder-a", dim: int | None = DIM, create: bool = True):
    location, options = spec
    return open_store(location, embedder_name=embedder_name, dim=dim, create=create, **options)


def test_round_trip_delete_and_reopen(spec):
    docs = corpus()
    store = make(spec)
    assert isinstance(store, VectorStore) and len(store) == 0 and store.search(np.ones(DIM), 3) == []
    fill(store, docs)
    assert len(store) == sum(len(c) for _, c, _ in docs.values())
    assert stored(store) == expected(docs)
    assert store.document_hashes() == {d: h for d, (h, _, _) in docs.items()}
    hit = store.search(docs["doc7"][2][1], 3)[0]
    assert hit.chunk == docs["doc7"][1][1] and hit.score == pytest.approx(1.0, abs=1e-5)

    store.delete_document("doc7")
    store.delete_document("no-such-doc")  # harmless
    gone = {c.chunk_id for c in docs.pop("doc7")[1]}
    assert stored(store) == expected(docs) and "doc7" not in store.document_hashes()
    assert not gone & {h.chunk.chunk_id for h in store.search(np.ones(DIM), len(store))}
    assert_consistent(store, docs)
    store.close()
    again = make(spec, embedder_name=None, dim=None, create=False)  # the manifest says what it holds
    assert again.manifest["embedder"] == "embedder-a" and again.manifest["dim"] == DIM
    assert stored(again) == expected(docs)
    assert_consistent(again, docs)
    again.close()


def test_a_changed_document_replaces_exactly_its_chunks(spec):
    docs = corpus()
    store = make(spec)
    fill(store, docs)
    old_vectors = docs["doc4"][2]
    doc_id, content_hash, chunks, vectors = document(4, version=1, n=2)  # 7 chunks become 2
    store.upsert_document(doc_id, content_hash, chunks, vectors)
    docs[doc_id] = (content_hash, chunks, vectors)
    assert stored(store) == expected(docs)  # the others untouched, doc4 exactly its new chunks
    assert store.document_hashes()[doc_id] == "hash-4-1"
    hits = store.search(old_vectors[5], len(store))
    assert {h.chunk.chunk_id for h in hits if h.chunk.doc_id == doc_id} <= {"doc4#0", "doc4#1"}
    assert all("v1" in h.chunk.text for h in hits if h.chunk.doc_id == doc_id)
    assert_consistent(store, docs)
    store.close()


def test_a_mismatched_embedder_or_dim_is_refused(spec):
    make(spec).close()
    with pytest.raises(StoreMismatch) as error:
        make(spec, embedder_name="embedder-b")
    assert "embedder-a" in str(error.value) and "embedder-b" in str(error.value)
    with pytest.raises(StoreMismatch) as error:
        make(spec, dim=DIM + 8)
    assert f"dim {DIM}" in str(error.value) and f"dim {DIM + 8}" in str(error.value)


def test_a_new_store_needs_create_and_both_names(spec):
    with pytest.raises(StoreError, match="create=True"):
        make(spec, create=False)
    with pytest.raises(StoreError, match="needs dim"):
        make(spec, dim=None)
    with pytest.raises(StoreError, match="needs embedder_name"):
        make(spec, embedder_name=None)


def test_metadata_filters_return_the_top_k_among_matching_chunks(spec):
    docs = corpus()
    store = make(spec)
    fill(store, docs)
    rng = np.random.default_rng(7)
    for where in ({"format": "pdf"}, {"format": "html", "draft": True}, {"page": 2}, {"source": "doc9.txt"}):
        for q in rng.standard_normal((5, DIM)):
            want = brute_force(docs, q, 6, where)
            exact = store.search(q, 6, where=where, exact=True)
            assert [h.chunk.chunk_id for h in exact] == [c for c, _ in want]
            assert [h.score for h in exact] == pytest.approx([s for _, s in want], abs=1e-5)
            fast = store.search(q, 6, where=where)
            assert len(fast) == len(want)
            assert all(h.chunk.metadata[key] == value for h in fast for key, value in where.items())
    # values match with their JSON type, in both stores alike (and as BM25's filter does)
    floats = Chunk("float#0", "float", 0, "a page number written 2.0", {"page": 2.0, "format": "pdf"})
    store.upsert_document("float", "hash-float", [floats], rng.standard_normal((1, DIM)).astype(np.float32))
    for exact in (True, False):
        pages = [h.chunk for h in store.search(rng.standard_normal(DIM), 500, where={"page": 2}, exact=exact)]
        assert pages and "float#0" not in {c.chunk_id for c in pages}
        assert all(matches_where(c.metadata, {"page": 2}) for c in pages)
    assert not matches_where(floats.metadata, {"page": 2}) and matches_where(floats.metadata, {"format": "pdf"})
    assert store.search(rng.standard_normal(DIM), 5, where={"page": "2"}) == []
    assert store.search(rng.standard_normal(DIM), 5, where={"draft": 1}) == []
    assert store.search(rng.standard_normal(DIM), 5, where={"no_such_key": "x"}) == []
    for bad in ({"format'; DROP TABLE x; --": "pdf"}, {"a.b": 1}, {"page": 1.5}, {"page": None}):
        with pytest.raises(StoreError, match="where"):
            store.search(np.ones(DIM), 3, where=bad)
    store.close()


def test_bad_input_is_refused_and_leaves_the_store_as_it_was(spec):
    docs = corpus(6)
    store = make(spec)
    fill(store, docs)
    doc_id, content_hash, chunks, vectors = document(1, version=1)
    with pytest.raises(StoreError, match=r"shape \(n, 24\)"):
        store.upsert_document(doc_id, content_hash, chunks, vectors[:, :10])
    with pytest.raises(StoreError, match="NaN"):
        store.upsert_document(doc_id, content_hash, chunks, np.full_like(vectors, np.nan))
    with pytest.raises(StoreError, match="chunks but"):
        store.upsert_document(doc_id, content_hash, chunks, vectors[:-1])
    with pytest.raises(StoreError, match="belongs to doc_id 'doc2'"):
        store.upsert_document(doc_id, content_hash, [document(2)[2][0]], vectors[:1])
    stolen = Chunk("doc2#0", "doc1", 0, "a chunk id of another document", {})  # unique in the whole store
    with pytest.raises(StoreError, match="doc2#0"):
        store.upsert_document("doc1", content_hash, [stolen], vectors[:1])
    assert stored(store) == expected(docs) and store.document_hashes()["doc1"] == "hash-1-0"
    assert_consistent(store, docs)
    store.close()


# ---------------------------------------------------------------- exactness across stores


def test_faiss_flat_matches_numpy_and_pgvector_exact_scan(tmp_path, postgres):
    docs = corpus(60)
    flat = FaissStore(tmp_path / "flat", "e", DIM, create=True)
    pg = PgVectorStore(postgres, "e", DIM, table=f"t_{uuid.uuid4().hex[:12]}", create=True)
    fill(flat, docs)
    fill(pg, docs)
    for q in np.random.default_rng(3).standard_normal((25, DIM)):
        want = brute_force(docs, q, 10)
        a, b = flat.search(q, 10), pg.search(q, 10, exact=True)
        assert [h.chunk.chunk_id for h in a] == [c for c, _ in want] == [h.chunk.chunk_id for h in b]
        assert [h.score for h in a] == pytest.approx([s for _, s in want], abs=1e-5)
        assert [h.score for h in b] == pytest.approx([h.score for h in a], abs=1e-5)
    flat.close()
    pg.close()


def test_pgvector_answers_through_its_hnsw_index(postgres):
    docs = corpus(60)
    table = f"t_{uuid.uuid4().hex[:12]}"
    store = PgVectorStore(postgres, "e", DIM, table=table, create=True)
    fill(store, docs)
    store._conn.execute("SET enable_seqscan = off")  # a table this small is otherwise scanned, not indexed
    rng = np.random.default_rng(9)
    plan = "\n".join(r[0] for r in store._conn.execute(
        f"EXPLAIN SELECT chunk_id FROM {table} ORDER BY embedding <=> %s LIMIT 5", (rng.standard_normal(DIM),)))
    assert f"Index Scan using {table}_hnsw" in plan
    found = 0
    for q in rng.standard_normal((20, DIM)):
        assert len(store.search(q, 100)) == 100  # more rows than HNSW's default ef_search (40) gives
        want = brute_force(docs, q, 10)
        found += len({c for c, _ in want} & {h.chunk.chunk_id for h in store.search(q, 10)})
        for where in ({"source": "doc9.txt"}, {"format": "pdf", "page": 3}):  # selective: iterative scans
            hits = store.search(q, 10, where=where)
            assert len(hits) == len(brute_force(docs, q, 10, where))
            assert all(h.chunk.metadata[key] == value for h in hits for key, value in where.items())
    assert found / 200 >= 0.9

    def index_scans() -> int:
        store._conn.execute("SELECT pg_stat_force_next_flush()")  # this backend's counters, now
        return store._conn.execute("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = %s",
                                   (f"{table}_hnsw",)).fetchone()[0]

    before = index_scans()
    store.search(np.ones(DIM), 10, exact=True)
    assert index_scans() == before  # exact: a sequential scan
    store.search(np.ones(DIM), 10)
    assert index_scans() == before + 1
    store._conn.execute("SET hnsw.ef_search = 1")  # an index scan would now return a single row
    for q in rng.standard_normal((5, DIM)):
        want = brute_force(docs, q, 10, {"draft": True})
        assert [h.chunk.chunk_id for h in store.search(q, 10, exact=True)] == [c for c, _ in brute_force(docs, q, 10)]
        assert [h.chunk.chunk_id for h in store.search(q, 10, where={"draft": True}, exact=True)] == \
            [c for c, _ in want]
    store.close()


# ---------------------------------------------------------------- HNSW


def test_hnsw_skips_tombstones_and_compacts_past_the_threshold(tmp_path):
    docs = {d: (h, c, v) for d, h, c, v in (document(i, n=5) for i in range(60))}
    store = FaissStore(tmp_path / "h", "e", DIM, kind="hnsw", create=True)
    fill(store, docs)
    assert (store.index_size, store.tombstones) == (300, 0)
    store.delete_document("doc0")
    store.upsert_document(*document(1, version=1, n=5))  # a replaced document leaves tombstones too
    docs.pop("doc0")
    docs["doc1"] = document(1, version=1, n=5)[1:]
    assert (store.index_size, store.tombstones, len(store)) == (305, 10, 295)
    dead = {f"doc0#{j}" for j in range(5)} | {f"doc1#{j}" for j in range(5)}
    for q in [*document(0, n=5)[3], *document(1, n=5)[3]]:  # the deleted vectors themselves
        hits = store.search(q, 40)
        assert len(hits) == 40 and all(h.chunk.chunk_id not in dead or "v1" in h.chunk.text for h in hits)
    store.close()

    store = FaissStore(tmp_path / "h")  # tombstones are recomputed from the saved index
    assert not store.rebuilt_on_open and store.tombstones == 10
    for i in range(2, 60):
        before, size = store.tombstones, store.index_size
        store.delete_document(f"doc{i}")
        docs.pop(f"doc{i}")
        if before + 5 > 0.2 * size:  # past 20% of the index: rebuilt from the database
            assert (store.tombstones, store.index_size) == (0, len(store))
            break
        assert (store.tombstones, store.index_size) == (before + 5, size)
    else:
        pytest.fail("the index was never compacted")
    store.delete_document(f"doc{i + 1}")
    docs.pop(f"doc{i + 1}")
    assert store.tombstones == 5
    store.compact()
    assert (store.tombstones, store.index_size) == (0, len(store))
    assert_consistent(store, docs)
    store.close()


def test_hnsw_recall_against_flat(tmp_path):
    docs = {d: (h, c, v) for d, h, c, v in (document(i, n=5) for i in range(80))}
    flat = FaissStore(tmp_path / "flat", "e", DIM, create=True)
    hnsw = FaissStore(tmp_path / "hnsw", "e", DIM, kind="hnsw", create=True)
    fill(flat, docs)
    fill(hnsw, docs)
    found = 0
    queries = np.random.default_rng(11).standard_normal((300, DIM))
    for q in queries:
        found += len({h.chunk.chunk_id for h in flat.search(q, 10)} & {h.chunk.chunk_id for h in hnsw.search(q, 10)})
    assert found / (10 * len(queries)) >= 0.95
    for q in queries[:20]:  # exact=True scans the stored vectors
        assert [h.chunk.chunk_id for h in hnsw.search(q, 10, exact=True)] == [c for c, _ in brute_force(docs, q, 10)]
    flat.close()
    hnsw.close()


def test_hnsw_filtered_search_through_the_selector_and_its_fallback(tmp_path):
    docs = corpus(60)
    store = FaissStore(tmp_path / "h", "e", DIM, kind="hnsw", create=True, exact_filter_limit=0)  # always the selector
    fill(store, docs)
    rng = np.random.default_rng(5)
    found = total = 0
    for q in rng.standard_normal((30, DIM)):
        want = {c for c, _ in brute_force(docs, q, 10, {"format": "pdf"})}
        hits = store.search(q, 10, where={"format": "pdf"})
        assert len(hits) == 10 and all(h.chunk.metadata["format"] == "pdf" for h in hits)
        found, total = found + len(want & {h.chunk.chunk_id for h in hits}), total + 10
        # a few allowed ids: the graph walk may meet too few of them, and the store then scans them
        selective = {"source": "doc13.txt"}
        assert [h.chunk.chunk_id for h in store.search(q, 10, where=selective)] == \
            [c for c, _ in brute_force(docs, q, 10, selective)]
    assert found / total >= 0.9
    store.close()


# ---------------------------------------------------------------- interruption


def test_a_crash_inside_upsert_keeps_the_old_document(spec, monkeypatch):
    docs = corpus(20)
    store = make(spec)
    fill(store, docs)
    store.flush()

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash after the chunk inserts, before the commit")

    monkeypatch.setattr(store, "_set_hash", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.upsert_document(*document(3, version=1, n=9))
    reopened = make(spec, create=False)  # what another process (or the next run) sees
    assert stored(reopened) == expected(docs)
    assert_consistent(reopened, docs)
    assert_consistent(store, docs)  # and the store that failed still agrees with its database
    reopened.close()
    monkeypatch.undo()
    store.close()


_INDEXER = """
import sys
from llmkit.apps.rag.stores import open_store
from tests.apps.rag.test_stores import DIM, document
location, table, kind = sys.argv[1], sys.argv[2], sys.argv[3]
options = {"table": table} if location.startswith("postgresql") else {"kind": kind}
store = open_store(location, embedder_name="e", dim=DIM, create=True, **options)
for i in range(100_000):
    doc_id, content_hash, chunks, vectors = document(i, n=20 + i % 7)
    store.upsert_document(doc_id, content_hash, chunks, vectors)
    if i == 10:
        store.flush()  # FAISS: an index file that the later documents leave behind
    print(i, flush=True)
"""


@pytest.mark.parametrize("kind", ["faiss-flat", "faiss-hnsw", "pgvector"])
def test_a_killed_indexer_leaves_a_consistent_store(kind, tmp_path, request):
    location = request.getfixturevalue("postgres") if kind == "pgvector" else str(tmp_path / "store")
    table = f"t_{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _INDEXER, location, table, kind.removeprefix("faiss-")], cwd=ROOT,
                            env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if int(line) >= 25:
                break
        else:
            pytest.fail(f"the indexer stopped early: {proc.stderr.read()[-2000:]}")
        os.kill(proc.pid, signal.SIGKILL)  # mid-indexing: no flush, no close, maybe mid-transaction
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    store = open_store(location, table=table) if kind == "pgvector" else open_store(location)
    docs = {d: (h, c, v) for d, h, c, v in (document(i, n=20 + i % 7) for i in range(len(store.document_hashes())))}
    assert set(store.document_hashes()) == set(docs) and len(docs) > 25  # whole documents, in order
    if kind != "pgvector":
        assert store.rebuilt_on_open and store.kind == kind.removeprefix("faiss-")  # the index file was behind
    assert_consistent(store, docs)
    store.close()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_a_stale_missing_or_damaged_index_is_rebuilt_on_open(kind, tmp_path):
    path = tmp_path / "store"
    docs = corpus(30)
    first = dict(list(docs.items())[:15])
    store = FaissStore(path, "e", DIM, kind=kind, create=True)
    fill(store, first)
    store.close()
    saved = {name: (path / name).read_bytes() for name in ("index.faiss", "index.json")}
    store = FaissStore(path)
    assert not store.rebuilt_on_open
    fill(store, dict(list(docs.items())[15:]))
    store.delete_document("doc2")
    docs.pop("doc2")
    store.close()
    for name, data in saved.items():  # as if the process had died before its last flush
        (path / name).write_bytes(data)
    assert json.loads((path / "index.json").read_text())["generation"] == 15
    store = FaissStore(path)
    assert store.rebuilt_on_open
    assert_consistent(store, docs)
    store.close()
    for damage in (lambda: (path / "index.faiss").unlink(), lambda: (path / "index.faiss").write_bytes(b"junk")):
        damage()
        store = FaissStore(path)
        assert store.rebuilt_on_open
        assert_consistent(store, docs)
        store.close()  # writes a good index again
        assert not FaissStore(path).rebuilt_on_open


# ---------------------------------------------------------------- opening errors


def test_a_directory_that_is_not_a_store_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(StoreError, match="not an llmkit vector store"):
        open_store(str(tmp_path), embedder_name="e", dim=DIM, create=True)
    with pytest.raises(StoreError, match="is a file"):
        open_store(str(tmp_path / "notes.txt"), embedder_name="e", dim=DIM, create=True)
    with pytest.raises(StoreError, match="kind='ivf'"):
        open_store(str(tmp_path / "new"), embedder_name="e", dim=DIM, kind="ivf", create=True)


def test_a_table_that_is_not_a_store_is_refused(postgres):
    import psycopg

    table = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int)")
    with pytest.raises(StoreError, match="not an llmkit vector store"):
        PgVectorStore(postgres, "e", DIM, table=table, create=True)
    with pytest.raises(StoreError, match="table="):
        PgVectorStore(postgres, "e", DIM, table="Robert'); DROP TABLE students;--", create=True)


def test_an_unreachable_database_is_named_without_its_password():
    url = "postgresql://alice:s3cret-pw@127.0.0.1:1/nodb"
    with pytest.raises(StoreError) as error:
        open_store(url, embedder_name="e", dim=DIM, create=True, connect_timeout=3)
    message = str(error.value)
    assert "postgresql://alice:***@127.0.0.1:1/nodb" in message and "s3cret" not in message
    assert "server is running" in message
    assert redact_url("postgresql://u:p@ss@h/db?password=x&sslmode=require") == \
        "postgresql://u:***@h/db?password=***&sslmode=require"
