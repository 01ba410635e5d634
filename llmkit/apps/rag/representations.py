"""The representations of the encoders chapter as retrievers over one store's chunks, so that one
table shows why sentence embeddings win: bag-of-words and TF-IDF (cosine of count / weighted
vectors, `llmkit.data.vectors`), word2vec (the mean of a chunk's word vectors, trained here on the
chunks themselves), BM25, the store's dense embedder, and hybrid.

    searchers = representation_searchers(retriever, k=30)
    run = rag_eval(searchers, load_rag_questions("test"), threshold=None)
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np

from ...data.vectors import VectorConfig, bow_matrix, build_vocab, fit_vectors, idf, tokenize
from .evaluate import Searcher, retriever_searcher

log = logging.getLogger(__name__)

WORD_METHODS = ("bow", "tfidf", "word2vec")


def _unit(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return (m / np.where(norms == 0, 1, norms)).astype(np.float32)


def word_searcher(method: str, chunks: Sequence[Any], k: int = 100, max_vocab: int = 20_000,
                  seed: int = 0) -> Searcher:
    """A searcher ranking `chunks` by the cosine of `method` vectors ("bow", "tfidf", "word2vec")."""
    if method not in WORD_METHODS:
        raise ValueError(f"method={method!r}: use one of {', '.join(WORD_METHODS)}")
    docs = [tokenize(c.text) for c in chunks]
    if method == "word2vec":
        vectors = fit_vectors(VectorConfig(method="word2vec", min_count=2, max_vocab=max_vocab, seed=seed),
                              texts=[c.text for c in chunks])
        table = {w: i for i, w in enumerate(vectors.words)}
        words = vectors.vectors

        def embed(tokens_list: Sequence[Sequence[str]]) -> np.ndarray:
            out = np.zeros((len(tokens_list), words.shape[1]), dtype=np.float32)
            for row, tokens in enumerate(tokens_list):
                ids = [table[t] for t in tokens if t in table]
                if ids:
                    out[row] = words[ids].mean(axis=0)
            return _unit(out)
    else:
        vocab, _ = build_vocab(docs, min_count=1, max_vocab=max_vocab)
        if method == "tfidf":
            weights = idf(bow_matrix(docs, vocab)).astype(np.float32)  # as llmkit.data.vectors.tfidf_matrix

            def embed(tokens_list: Sequence[Sequence[str]]) -> np.ndarray:
                return _unit(bow_matrix(tokens_list, vocab) * weights)
        else:
            def embed(tokens_list: Sequence[Sequence[str]]) -> np.ndarray:
                return _unit(bow_matrix(tokens_list, vocab))
    matrix = embed(docs)

    def search(question: str) -> tuple[list[Any], float | None]:
        q = embed([tokenize(question)])[0]
        scores = matrix @ q
        top = np.argsort(-scores, kind="stable")[:k]
        # no similarity: "not in the documents" is decided on the dense embedder's cosine, not on these
        return [chunks[i] for i in top if scores[i] > 0], None

    return Searcher(method, search)


def representation_searchers(retriever: Any, k: int = 100, methods: Sequence[str] = ("bow", "tfidf", "word2vec"),
                             progress: Callable[[str], None] | None = None) -> list[Searcher]:
    """Bag-of-words, TF-IDF and word2vec over the retriever's store, then BM25, dense and hybrid."""
    chunks = list(retriever.store.chunks())
    searchers = []
    for method in methods:
        if progress:
            progress(method)
        searchers.append(word_searcher(method, chunks, k))

    return searchers + [retriever_searcher(retriever, name, k) for name in ("bm25", "dense", "hybrid")]
