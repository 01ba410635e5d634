"""Retrieval measured on the shipped questions over the standard library's documentation.

The default-suite case is small: the gold documents of the first 24 answerable dev questions among
distractors (every document of their modules and of a few unrelated ones), indexed with the real
all-MiniLM-L6-v2; hybrid retrieval finds the gold document in the top 5 far more often than
bag-of-words does. The slow case indexes the whole corpus and measures the held-out half as the
README reports it, dense recall checked against sentence-transformers + FAISS on the same chunks."""

from __future__ import annotations

import numpy as np
import pytest

from llmkit.apps.docs_search import stdlib_documents
from llmkit.apps.rag.evaluate import rag_eval, retriever_searcher
from llmkit.apps.rag.indexing import ChunkSettings, index_documents
from llmkit.apps.rag.loaders import documents_from_records
from llmkit.apps.rag.representations import word_searcher
from llmkit.apps.rag.retrieval import Retriever
from llmkit.apps.rag.stores import open_store
from llmkit.data.rag_questions import load_rag_questions


@pytest.fixture(scope="module")
def embedder(minilm):
    import llmkit

    from tests.apps.rag.test_rag_pipeline import FP32

    return FP32(llmkit.load(minilm.path))


def test_hybrid_retrieval_finds_gold_documents_among_distractors_better_than_bag_of_words(tmp_path, embedder):
    questions = [q for q in load_rag_questions("dev") if q.answerable][:24]
    records = stdlib_documents()
    gold = {d for q in questions for d in q.docs}
    modules = {r[2].get("module") for r in records if r[0] in gold} - {None}
    # distractors that share a module with a gold document are the hard ones
    chosen = [r for r in records if r[0] in gold or (r[2].get("module") in modules and r[2].get("kind") != "topic")]
    chosen = [r for r in chosen if r[0] in gold] + [r for r in chosen if r[0] not in gold][:160]
    store = open_store(str(tmp_path / "idx"), "all-minilm-l6-v2", 384, create=True)
    index_documents(store, documents_from_records(chosen), embedder, ChunkSettings(size=254))
    assert len(store) >= 200
    retriever = Retriever(store, embedder)
    run = rag_eval([word_searcher("bow", list(store.chunks())), retriever_searcher(retriever, "hybrid")],
                   questions, label="dev24")
    bow, hybrid = run.tasks["dev24/bow"].value, run.tasks["dev24/hybrid"].value
    print(f"recall@5 of 24 dev questions among {len(store)} chunks: bag-of-words {bow:.3f}, hybrid {hybrid:.3f}")
    assert hybrid >= 0.75 and hybrid - bow >= 0.2, (bow, hybrid)  # measured: 0.958 and 0.667


@pytest.mark.slow
def test_the_held_out_questions_over_the_whole_corpus(tmp_path, embedder, minilm):
    """Index every document, choose the not-found rule on dev, measure test (the README's table), and
    check dense recall against a plain sentence-transformers + FAISS script on the same chunks."""
    from tests.peers import peer

    from llmkit.apps.rag.evaluate import choose_rule, retrieval_table

    store = open_store(str(tmp_path / "idx"), "all-minilm-l6-v2", 384, create=True)
    index_documents(store, documents_from_records(stdlib_documents()), embedder, ChunkSettings(size=254))
    assert len(store) >= 2000
    retriever = Retriever(store, embedder)
    dev = load_rag_questions("dev")
    threshold, retriever.unknown_weight = choose_rule(
        [retriever.search(q.question, k=1, mode="dense").similarity for q in dev],
        [retriever.unknown_share(q.question) for q in dev], [q.answerable for q in dev])
    test = load_rag_questions("test")
    run = rag_eval([retriever_searcher(retriever, m) for m in ("bm25", "dense", "hybrid")], test, label="test",
                   threshold=threshold)
    print(f"threshold {threshold:.3f}, unknown weight {retriever.unknown_weight:.2f}\n{retrieval_table(run)}")
    hybrid = run.tasks["test/hybrid"].metrics
    # the README's figures: hybrid recall@5 0.812 and "not in the documents" on 0.958 of the
    # unanswerable ones (the targets: 0.8 both), keeping 0.833 of the answerable ones
    claims = (hybrid["recall@5"], run.tasks["test-unanswerable/dense"].value, hybrid["answerable_kept"])

    sentence_transformers, faiss = peer("sentence_transformers"), peer("faiss")
    chunks = list(store.chunks())
    st = sentence_transformers.SentenceTransformer(str(minilm.path), device="cpu")
    index = faiss.IndexFlatIP(384)
    index.add(np.asarray(st.encode([c.text for c in chunks], batch_size=64, normalize_embeddings=True), np.float32))

    def plain(question: str):
        _, ids = index.search(np.asarray(st.encode([question], normalize_embeddings=True), np.float32), 30)
        return [chunks[i] for i in ids[0]], None

    from llmkit.apps.rag.evaluate import Searcher

    theirs = rag_eval([Searcher("plain", plain)], test, label="test").tasks["test/plain"].metrics
    ours = run.tasks["test/dense"].metrics
    assert all(abs(ours[f"recall@{k}"] - theirs[f"recall@{k}"]) < 1e-9 for k in (1, 5, 10)), (ours, theirs)
    assert claims[0] >= 0.8 and claims[1] >= 0.8 and claims[2] >= 0.8, claims
