"""Retrieval over a store: dense (the store's vector search), BM25 (the project's one keyword index,
`llmkit.apps.docs_search.KeywordIndex`, built over the store's chunks), hybrid by reciprocal-rank
fusion, optional MMR, metadata filters, and an optional reranking pass that scores candidates with an
LLM.

    retriever = Retriever(store, embedder)                  # mode "hybrid"
    found = retriever.search("How do I read a CSV file?", k=5, where={"format": "markdown"})
    found.chunks            # [ScoredChunk(...)], best first
    found.similarity        # the best dense cosine between the question and any chunk
    found.evidence          # that, less unknown_weight x the share of question words no chunk
                            # contains: below a threshold, "not in the documents"

Reciprocal-rank fusion (Cormack et al., 2009) adds 1 / (rrf_k + rank) over the rankings a chunk
appears in, so it needs no calibration between cosine and BM25 scores; `weights` scale each ranking.
The default rrf_k is 10, not the paper's 60: chosen on the dev half of the shipped questions (recall@5
0.812 against 0.792 at 60), so the top of each ranking counts for more.
MMR (Carbonell & Goldstein, 1998) then picks, among the candidates, the one most similar to the
question less its similarity to those already picked.

"Not in the documents" is decided on the evidence: the best cosine alone confuses a question about a
library the documents never name with a vaguely worded one, while the words no chunk contains
("pandas", "Django") tell them apart. The weight and the threshold are chosen together on tuning
questions (`llmkit.apps.rag.evaluate.choose_rule`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .embedding import EmbeddingCache, embed_texts
from .records import Chunk, ScoredChunk
from .stores import matches_where

log = logging.getLogger(__name__)

MODES = ("dense", "bm25", "hybrid")
RERANK_PROMPT = ("Passage:\n{passage}\n\nQuestion: {question}\n"
                 "Does the passage answer the question? Answer yes or no.\nAnswer:")


@dataclass
class Retrieval:
    """What a search found: `chunks` best first (their scores are the mode's: cosine, BM25, or
    fused); `similarity`, the best dense cosine between the question and any chunk (None without
    an embedder); `unknown`, the share of the question's words that no chunk contains; `evidence`,
    which decides "not in the documents"."""

    question: str
    chunks: list[ScoredChunk]
    similarity: float | None
    mode: str
    rankings: dict[str, list[str]] = field(default_factory=dict)  # chunk ids per ranking that was fused
    unknown: float | None = None  # None: not measured (the retriever's unknown_weight is 0)
    unknown_weight: float = 0.0

    @property
    def evidence(self) -> float | None:
        """`similarity` less `unknown_weight` x `unknown` (None without a similarity)."""
        if self.similarity is None:
            return None
        return self.similarity - self.unknown_weight * (self.unknown or 0.0)


def rrf(rankings: Sequence[Sequence[str]], k: int = 60, weights: Sequence[float] | None = None) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion of rankings of ids (best first): (id, fused score), best first; ties
    keep the order in which the ids were first met."""
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings: give one per ranking")
    scores: dict[str, float] = {}
    for ranking, w in zip(rankings, weights):
        for rank, key in enumerate(ranking, 1):
            scores[key] = scores.get(key, 0.0) + w / (k + rank)
    order = {key: i for i, key in enumerate(dict.fromkeys(key for r in rankings for key in r))}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))


def check_unknown_weight(weight: Any) -> float:
    """`weight` as a float, or a ValueError naming it: a finite number, zero or more."""
    try:
        value = float(weight)
    except (TypeError, ValueError):
        raise ValueError(f"unknown_weight={weight!r} must be a number (zero or more)") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"unknown_weight={weight!r} must be a finite number, zero or more (0: the similarity alone)")
    return value


def mmr(query: np.ndarray, vectors: np.ndarray, k: int, lam: float = 0.7) -> list[int]:
    """Indices of `k` rows of `vectors` (unit length) picked by maximal marginal relevance to `query`."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"mmr lambda={lam} must be between 0 and 1 (1: relevance only)")
    relevance = vectors @ query
    picked: list[int] = []
    left = list(range(len(vectors)))
    while left and len(picked) < k:
        if picked:
            redundancy = (vectors[left] @ vectors[picked].T).max(axis=1)
        else:
            redundancy = np.zeros(len(left))
        best = int(np.argmax(lam * relevance[left] - (1 - lam) * redundancy))
        picked.append(left.pop(best))
    return picked


class Retriever:
    """Search `store` (see the module docstring). `embedder` embeds questions (the store's own
    embedder: the store refuses another); `candidates` is how many each ranking contributes before
    fusion, MMR or reranking; `reranker` an LLM whose yes/no log-odds reorder the candidates;
    `unknown_weight` how much the share of question words no chunk contains lowers the evidence."""

    def __init__(self, store: Any, embedder: Any = None, mode: str = "hybrid", rrf_k: int = 10,
                 weights: Sequence[float] = (1.0, 1.0), candidates: int = 30, mmr_lambda: float | None = None,
                 reranker: Any = None, cache: EmbeddingCache | None = None, unknown_weight: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"retrieval mode={mode!r} is not known: use one of {', '.join(MODES)}")
        if mode != "bm25" and embedder is None:
            raise ValueError(f"retrieval mode={mode!r} needs an embedder (or mode='bm25')")
        if candidates < 1:
            raise ValueError(f"candidates={candidates} must be at least 1")
        check_unknown_weight(unknown_weight)
        if embedder is not None:  # vectors of another embedder are not comparable: the store refuses them
            from .embedding import embedder_name, embedding_dim
            from .stores import check_manifest

            check_manifest(store.manifest, embedder_name(embedder), embedding_dim(embedder),
                           str(getattr(store, "location", "the store")))
        self.store, self.embedder, self.mode, self.rrf_k = store, embedder, mode, rrf_k
        self.weights, self.candidates, self.mmr_lambda, self.reranker = tuple(weights), candidates, mmr_lambda, reranker
        self.cache, self.unknown_weight = cache, float(unknown_weight)
        self._keyword: Any = None
        self._chunks: dict[str, Chunk] = {}
        self._stamp: Any = None

    # ------------------------------------------------------------------ the rankings
    def keyword_index(self) -> Any:
        """The BM25 index over the store's chunks, built on first use and again when the store has
        changed since (a FAISS store's write generation; a pgvector store's chunk count, so call
        `refresh()` after re-indexing one whose documents changed but not their number of chunks)."""
        stamp = self._store_stamp()
        if self._keyword is not None and stamp != self._stamp:
            self.refresh()
        if self._keyword is None:
            from ..docs_search import KeywordIndex

            chunks = list(self.store.chunks())
            if not chunks:
                raise ValueError("the store holds no chunks: index some documents first (llmkit rag index)")
            self._chunks = {c.chunk_id: c for c in chunks}
            self._keyword = KeywordIndex.build([(c.chunk_id, c.text, {"title": str(c.metadata.get("title") or "")})
                                                for c in chunks])
            self._stamp = stamp
        return self._keyword

    def _store_stamp(self) -> Any:
        generation = getattr(self.store, "generation", None)
        return generation if generation is not None else len(self.store)

    def refresh(self) -> None:
        """Forget the BM25 index, so the next search sees what was indexed since."""
        self._keyword, self._chunks = None, {}

    def unknown_share(self, question: str) -> float:
        """The share of `question`'s distinct words (as BM25 reads them, question words left out)
        that no chunk of the store contains, whatever a search's `where` filter; 0.0 for none."""
        unknown, total = self.keyword_index().unknown_terms(question)
        return len(unknown) / total if total else 0.0

    def embed_question(self, question: str) -> np.ndarray:
        return embed_texts(self.embedder, [question], cache=self.cache)[0]

    def dense(self, question: str, k: int, where: Mapping[str, Any] | None = None,
              vector: np.ndarray | None = None) -> list[ScoredChunk]:
        vector = self.embed_question(question) if vector is None else vector
        return list(self.store.search(vector, k, where=where))

    def bm25(self, question: str, k: int, where: Mapping[str, Any] | None = None) -> list[ScoredChunk]:
        index = self.keyword_index()
        want = k if not where else len(index)  # a filter may keep few: rank them all, then filter
        hits = index.search(question, k=want) if question.strip() else []
        found = [ScoredChunk(self._chunks[h.doc_id], h.score) for h in hits]
        return [s for s in found if matches_where(s.chunk.metadata, where)][:k]

    # ------------------------------------------------------------------ the search
    def search(self, question: str, k: int = 5, where: Mapping[str, Any] | None = None,
               mode: str | None = None) -> Retrieval:
        """The `k` best chunks for `question` (see the module docstring)."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty: give some words to search for")
        if k < 1:
            raise ValueError(f"k={k} must be at least 1")
        mode = mode or self.mode
        if mode not in MODES:
            raise ValueError(f"retrieval mode={mode!r} is not known: use one of {', '.join(MODES)}")
        pool = max(k, self.candidates)
        vector = self.embed_question(question) if self.embedder is not None else None
        dense = self.dense(question, pool, where, vector) if vector is not None else []
        similarity = dense[0].score if dense else None
        rankings: dict[str, list[str]] = {}
        if mode == "dense":
            found = dense
        elif mode == "bm25":
            found = self.bm25(question, pool, where)
        else:
            keyword = self.bm25(question, pool, where)
            by_id = {s.chunk.chunk_id: s.chunk for s in dense + keyword}
            rankings = {"dense": [s.chunk.chunk_id for s in dense], "bm25": [s.chunk.chunk_id for s in keyword]}
            fused = rrf(list(rankings.values()), self.rrf_k, self.weights)
            found = [ScoredChunk(by_id[key], score) for key, score in fused]
        if self.mmr_lambda is not None and vector is not None and len(found) > 1:
            from .stores import normalize

            dim = len(vector)
            vectors = normalize(embed_texts(self.embedder, [s.chunk.text for s in found], cache=self.cache), dim)
            query = normalize(vector, dim)[0]
            found = [found[i] for i in mmr(query, vectors, min(pool, len(found)), self.mmr_lambda)]
        if self.reranker is not None:
            found = rerank(self.reranker, question, found[:pool])
        # measured only where it counts: with a weight, and a similarity to lower (an empty store has none)
        unknown = self.unknown_share(question) if self.unknown_weight > 0 and similarity is not None else None
        return Retrieval(question, found[:k], similarity, mode, rankings, unknown, self.unknown_weight)


def rerank(llm: Any, question: str, found: Sequence[ScoredChunk], max_chars: int = 1500) -> list[ScoredChunk]:
    """`found` reordered by the LLM's log-odds of "yes" over "no" to "does the passage answer the
    question?" (the score becomes that log-odds; ties keep the earlier order)."""
    if not found:
        return []
    prompts = [RERANK_PROMPT.format(passage=s.chunk.text[:max_chars], question=question) for s in found]
    scored = llm.loglikelihood([(p, c) for p in prompts for c in (" yes", " no")])
    odds = [scored[2 * i].logprob - scored[2 * i + 1].logprob for i in range(len(found))]
    order = sorted(range(len(found)), key=lambda i: (-odds[i], i))
    return [ScoredChunk(found[i].chunk, float(odds[i]) if math.isfinite(odds[i]) else -1e9) for i in order]
