"""The three jobs of `llmkit rag`, as functions: index documents into a store, open a retriever on
it, and measure retrieval on labelled questions.

    report = build_index("docs/", "runs/idx")                    # or "postgresql://user@host/db"
    retriever = open_retriever("runs/idx")                        # the store's embedder, hybrid
    run = evaluate_store("runs/idx", "builtin:rag-stdlib:test", tune="builtin:rag-stdlib:dev")

Documents are a directory (text, Markdown, HTML, PDF) or ``stdlib``: the standard library's
documentation (`llmkit.apps.docs_search.stdlib_documents`), the corpus of the shipped question set.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from .embedding import DEFAULT_EMBEDDER, EmbeddingCache, default_embedder, embedder_name, embedding_dim
from .indexing import ChunkSettings, IndexReport, index_documents
from .records import Document

log = logging.getLogger(__name__)

STDLIB = "stdlib"
RETRIEVERS = ("bm25", "dense", "hybrid")
WORD_RETRIEVERS = ("bow", "tfidf", "word2vec")  # the encoders chapter's representations, for comparison


def is_url(spec: str) -> bool:
    return str(spec).startswith(("postgresql://", "postgres://"))


def load_documents(docs: str | os.PathLike) -> tuple[list[Document], list[tuple[str, str]]]:
    """(documents, failures) from a directory, or ``stdlib``."""
    from .loaders import documents_from_records, load_directory

    if str(docs) == STDLIB:
        from ..docs_search import stdlib_documents

        return documents_from_records(stdlib_documents()), []
    path = Path(docs)
    if not path.is_dir():
        raise FileNotFoundError(f"--docs {docs}: no such directory (give a folder of .txt/.md/.html/.pdf files, "
                                f"or '{STDLIB}' for the standard library's documentation)")
    result = load_directory(path)
    return result.documents, result.failures


def default_cache(store: str) -> Path:
    """Where a store's embedding cache lives: inside a FAISS store's directory; for a database, in
    the llmkit home ($LLMKIT_HOME/rag/embeddings.db)."""
    if is_url(store):
        home = Path(os.environ.get("LLMKIT_HOME") or Path.home() / ".cache" / "llmkit")
        return home / "rag" / "embeddings.db"
    return Path(store) / "embeddings.db"


def resolve_embedder(embedder: Any = None) -> Any:
    """An embedder `LLM`: the one given, a model name / path / URL to load, or the default."""
    if embedder is None:
        return default_embedder()
    if isinstance(embedder, (str, os.PathLike)):
        return default_embedder(str(embedder))
    return embedder


def build_index(docs: str | os.PathLike | Sequence[Document], store: str, embedder: Any = None, kind: str = "flat",
                settings: ChunkSettings | None = None, delete_missing: bool = True,
                progress: Callable[[int, int], None] | None = None) -> IndexReport:
    """Index `docs` (a directory, ``stdlib``, or Documents) into `store` (a directory: FAISS of
    `kind` flat or hnsw; a postgresql:// URL: pgvector), creating it if needed; documents that
    fail to load are listed in the report's failures."""
    from .stores import open_store

    embedder = resolve_embedder(embedder)
    keep: list[str] = []
    if isinstance(docs, (str, os.PathLike)):
        documents, failures = load_documents(docs)
        if failures and str(docs) != STDLIB:  # their ids, as a loaded document's would be
            root = Path(docs).resolve()
            for path, _ in failures:
                try:
                    keep.append(Path(path).resolve().relative_to(root).as_posix())
                except ValueError:
                    pass
    else:
        documents, failures = list(docs), []
    vectors = open_store(store, embedder_name=embedder_name(embedder), dim=embedding_dim(embedder), kind=kind,
                         create=True)
    cache = EmbeddingCache(default_cache(store))
    try:
        report = index_documents(vectors, documents, embedder, settings, cache=cache, delete_missing=delete_missing,
                                 keep=keep, progress=progress)
    finally:
        vectors.close()
        cache.close()
    report.failures = failures + report.failures
    return report


def open_retriever(store: str, embedder: Any = None, mode: str = "hybrid", **options: Any) -> Any:
    """A `Retriever` on the store at `store`, with its own embedder (the manifest names it; another
    one is refused by the store)."""
    from .retrieval import Retriever
    from .stores import open_store

    vectors = open_store(store)
    # the embedder even for BM25: "not in the documents" is decided on the dense similarity (the evidence)
    embedder = resolve_embedder(embedder if embedder is not None
                                else vectors.manifest.get("embedder") or DEFAULT_EMBEDDER)
    cache = EmbeddingCache(default_cache(store)) if embedder is not None else None
    return Retriever(vectors, embedder, mode=mode, cache=cache, **options)


def evaluate_store(store: str, questions: str, retrievers: Sequence[str] = RETRIEVERS, embedder: Any = None,
                   tune: str | None = None, threshold: float | None = None, unknown_weight: float | None = None,
                   k: int = 100,
                   progress: Callable[[int], None] | None = None, retriever: Any = None) -> tuple[Any, dict[str, Any]]:
    """Measure each retriever on `questions` (a split of the shipped set, ``builtin:rag-stdlib:test``,
    or a JSONL path); `retrievers` among bm25, dense, hybrid and, for comparison, bow, tfidf,
    word2vec. The not-found rule is `threshold` and `unknown_weight` (default 0), else both are chosen
    on `tune` (another split: never the measured one), else there is none. Returns the `EvalRun` and
    what was chosen (with the `retriever`, set to the chosen weight)."""
    from ...data.rag_questions import load_rag_questions
    from .evaluate import choose_rule, rag_eval, retriever_searcher
    from .representations import word_searcher

    for name in retrievers:
        if name not in RETRIEVERS + WORD_RETRIEVERS:
            raise ValueError(f"retriever {name!r} is not known: use {', '.join(RETRIEVERS + WORD_RETRIEVERS)}")
    from .retrieval import check_unknown_weight

    if unknown_weight is not None:
        if threshold is None:
            raise ValueError("unknown_weight is part of a fixed rule: give threshold= with it (or tune= to choose both)")
        unknown_weight = check_unknown_weight(unknown_weight)
    if threshold is not None and tune is not None:
        raise ValueError("give either threshold= (a fixed rule) or tune= (questions to choose it on), not both")
    measured = load_rag_questions(_split(questions))
    retriever = retriever or open_retriever(store, embedder, mode="hybrid")
    chosen: dict[str, Any] = {"questions": questions, "k": k}
    if threshold is None and tune is not None:
        tuning = load_rag_questions(_split(tune))
        shared = {q.id for q in tuning} & {q.id for q in measured} or \
            {q.question for q in tuning} & {q.question for q in measured}
        if shared:
            raise ValueError(f"tune={tune!r} shares {len(shared)} question(s) with questions={questions!r} (e.g. "
                             f"{sorted(shared)[0]!r}): choose the threshold on other questions (e.g. the dev split)")
        sims = [retriever.search(q.question, k=1, mode="dense").similarity for q in tuning]
        unknown = [retriever.unknown_share(q.question) for q in tuning]
        threshold, unknown_weight = choose_rule(sims, unknown, [q.answerable for q in tuning])
        chosen["tuned_on"] = tune
    if threshold is not None:  # the rule measured, and the one `chosen["retriever"]` answers with
        retriever.unknown_weight = float(unknown_weight or 0.0)
    chosen["threshold"], chosen["unknown_weight"] = threshold, retriever.unknown_weight
    texts: dict[str, list[str]] = {}
    for c in retriever.store.chunks():
        texts.setdefault(c.doc_id, []).append(c.text)
    documents = {doc: "\n".join(parts) for doc, parts in texts.items()}

    chunks = list(retriever.store.chunks()) if set(retrievers) & set(WORD_RETRIEVERS) else []
    searchers = [word_searcher(m, chunks, k) if m in WORD_RETRIEVERS else retriever_searcher(retriever, m, k)
                 for m in retrievers]
    run = rag_eval(searchers, measured, label=_label(questions),
                   threshold=threshold, documents=documents, model=embedder_name(retriever.embedder),
                   progress=progress, unknown_weight=retriever.unknown_weight)
    chosen["retriever"] = retriever  # open: the answers of --model use it; close its store when done
    return run, chosen


def evaluate_answers(llm: Any, retriever: Any, questions: str, threshold: float | None = None, k: int = 5,
                     batch_size: int = 16, progress: bool = False) -> Any:
    """Answer quality on `questions` (see `llmkit.apps.rag.answer_eval`): containment and citation hits
    with retrieval, against the same model closed-book."""
    from ...data.rag_questions import load_rag_questions
    from .answer_eval import answer_eval

    return answer_eval(llm, retriever, load_rag_questions(_split(questions)), label=_label(questions), k=k,
                       threshold=threshold, batch_size=batch_size, progress=progress)


def _split(spec: str) -> str:
    """``builtin:rag-stdlib:test`` -> "test"; a path stays a path."""
    if spec.startswith("builtin:"):
        parts = spec.split(":")
        if len(parts) != 3 or parts[1] != "rag-stdlib":
            raise ValueError(f"questions {spec!r}: the shipped set is builtin:rag-stdlib:dev or builtin:rag-stdlib:test")
        return parts[2]
    return spec


def _label(spec: str) -> str:
    return spec.split(":", 1)[1].replace(":", "-") if spec.startswith("builtin:") else Path(spec).stem
