"""Reciprocal-rank fusion, MMR, the not-found threshold and the retrieval metrics, on cases worked by
hand (no model, no store)."""

from __future__ import annotations

import numpy as np
import pytest

from llmkit.apps.rag.evaluate import (balanced_accuracy, choose_rule, choose_threshold, document_ranking, first_hit,
                                     retrieval_record, word_overlap)
from llmkit.apps.rag.records import Chunk, ScoredChunk
from llmkit.apps.rag.retrieval import mmr, rrf
from llmkit.data.rag_questions import RAGQuestion


def test_rrf_adds_reciprocal_ranks_and_weights_them():
    fused = dict(rrf([["a", "b", "c"], ["c", "a"]], k=60))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["b"] == pytest.approx(1 / 62)
    assert [key for key, _ in rrf([["a", "b", "c"], ["c", "a"]], k=60)] == ["a", "c", "b"]
    # a ranking weighted 0 does not count; ties keep first-met order
    assert [key for key, _ in rrf([["x", "y"], ["y", "x"]], weights=[1.0, 0.0])] == ["x", "y"]
    assert [key for key, _ in rrf([["x"], ["y"]])] == ["x", "y"]
    with pytest.raises(ValueError, match="2 weights for 1 rankings"):
        rrf([["a"]], weights=[1, 1])


def test_mmr_skips_a_near_duplicate_that_relevance_alone_would_take():
    q = np.array([1.0, 0.0, 0.0])
    rows = np.array([[0.9, 0.436, 0.0], [0.9, 0.436, 0.001], [0.8, -0.6, 0.0]])
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    assert mmr(q, rows, 2, lam=1.0) == [0, 1]  # relevance only: the two copies
    assert mmr(q, rows, 2, lam=0.5) == [0, 2]  # the copy is redundant with the first pick
    with pytest.raises(ValueError, match="lambda"):
        mmr(q, rows, 2, lam=1.5)


def test_the_threshold_maximises_balanced_accuracy():
    sims = [0.9, 0.8, 0.7, 0.45, 0.6, 0.5, 0.3]
    answerable = [True, True, True, True, False, False, False]
    t = choose_threshold(sims, answerable)
    # at 0.7: answerable kept 3/4, unanswerable refused 3/3 -> 0.875; at 0.45: 4/4 and 1/3 -> 0.667
    assert t == 0.7
    with pytest.raises(ValueError, match="both"):
        choose_threshold([0.1, 0.2], [True, True])


def test_the_rule_weighs_unknown_words_only_when_they_separate_better():
    # answerable: similarity 0.70, 0.60, 0.55; unanswerable: 0.65, 0.58, 0.40. By similarity alone the
    # best balanced accuracy is 4/6 (any threshold keeps a false answer or loses a true one). The
    # unanswerable 0.65 and 0.58 have half their words unknown to the documents, the answerable 0.60 a
    # fifth: with weight w, 0.65 - 0.5w and 0.58 - 0.6w fall under min(0.55, 0.60 - 0.2w) once w > 0.2,
    # so the first weight of the grid that separates all six is 0.25, at threshold 0.55 (the lowest kept).
    sims = [0.70, 0.60, 0.55, 0.65, 0.58, 0.40]
    unknown = [0.0, 0.2, 0.0, 0.5, 0.6, 0.0]
    answerable = [True, True, True, False, False, False]
    threshold, weight = choose_rule(sims, unknown, answerable)
    assert weight == 0.25 and threshold == pytest.approx(0.55)
    assert balanced_accuracy([s - weight * u for s, u in zip(sims, unknown)], answerable, threshold) == 1.0
    assert balanced_accuracy(sims, answerable, choose_threshold(sims, answerable)) == pytest.approx(4 / 6)
    # when the similarity alone separates them, the simpler rule (weight 0) is kept
    assert choose_rule([0.9, 0.8, 0.3], [0.0, 0.5, 0.9], [True, True, False]) == (0.8, 0.0)


def _chunk(doc: str, i: int) -> ScoredChunk:
    return ScoredChunk(Chunk(f"{doc}#{i}", doc, i, f"text of {doc}", {}), 1.0 - i / 10)


def test_recall_and_mrr_count_documents_not_chunks():
    qs = [RAGQuestion("q1", "read csv rows", ("d2",), "x", True),
          RAGQuestion("q2", "sort a list", ("d9",), "y", True),
          RAGQuestion("q3", "pandas dataframe", (), None, False)]
    results = [([_chunk("d1", 0), _chunk("d1", 1), _chunk("d2", 0)], 0.8),  # d2 is the 2nd document
               ([_chunk("d3", 0)], 0.7), ([_chunk("d4", 0)], 0.2)]
    assert document_ranking(results[0][0]) == ["d1", "d2"] and first_hit(["d1", "d2"], ("d2",)) == 2
    rec = retrieval_record("dense", qs, results, seconds=3.0, threshold=0.5,
                           documents={"d2": "Read rows from a file.", "d9": "Sorts."})
    m = rec.metrics
    assert m["recall@1"] == 0.0 and m["recall@5"] == 0.5 and m["mrr"] == pytest.approx(0.25)
    assert m["n"] == 2 and m["unanswerable"] == 1
    assert m["not_found_correct"] == 1.0 and m["answerable_kept"] == 1.0
    assert rec.samples[0]["overlap"] == pytest.approx(2 / 3, abs=1e-3)  # "read" and "rows", not "csv"
    assert [s["score"] for s in rec.samples if "score" in s] == [1.0, 0.0]


def test_word_overlap_ignores_function_words_and_case():
    assert word_overlap("How do I read a CSV file?", "csv.reader reads a CSV file") == pytest.approx(2 / 3)
    assert word_overlap("the of and", "anything") == 0.0


def test_word_retrievers_rank_by_their_cosines_and_tfidf_matches_scikit_learn():
    from tests.peers import peer

    from llmkit.apps.rag.representations import word_searcher
    from llmkit.data.vectors import tokenize

    texts = ["parse csv rows from a file", "compute days between dates", "csv csv writer"]
    chunks = [Chunk(f"c{i}", f"d{i}", 0, t, {}) for i, t in enumerate(texts)]

    def ranked(method: str, query: str) -> list[str]:
        return [c.chunk_id for c in word_searcher(method, chunks).search(query)[0]]

    # "csv file": counts favour the chunk that repeats "csv" (cos 2/sqrt(5*2) = 0.632 against
    # 2/sqrt(6*2) = 0.577); TF-IDF weighs "file" (in one chunk) over "csv" (in two) and turns it round
    # (0.532 against 0.506, smoothed idf); chunks sharing no word are left out
    assert ranked("bow", "csv file") == ["c2", "c0"]
    assert ranked("tfidf", "csv file") == ["c0", "c2"]
    assert ranked("bow", "days between dates") == ["c1"] and ranked("tfidf", "xylophone") == []
    sklearn_text = peer("sklearn").feature_extraction.text
    vectorizer = sklearn_text.TfidfVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None)
    matrix = vectorizer.fit_transform(texts)
    scores = (matrix @ vectorizer.transform(["csv file"]).T).toarray().ravel()
    assert scores == pytest.approx([0.532, 0.0, 0.506], abs=1e-3)
    assert ranked("tfidf", "csv file") == [f"c{i}" for i in np.argsort(-scores) if scores[i] > 0]
    # word2vec: the mean of word vectors trained on the chunks; a chunk's own words find it first
    copies = [Chunk(f"c{i}-{j}", f"d{i}", j, t, {}) for j in range(4) for i, t in enumerate(texts)]
    w2v = word_searcher("word2vec", copies)
    assert w2v.search("compute days between dates")[0][0].doc_id == "d1"
    assert w2v.search("xylophone")[0] == []
