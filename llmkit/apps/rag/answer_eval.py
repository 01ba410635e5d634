"""Answer quality with and without retrieval, on labelled questions, through any generator.

For each answerable question: does the reply contain the gold answer (case and whitespace aside),
and does it cite a passage of a gold document (the citation-hit rate)? The no-retrieval baseline
asks the same model the same question with no passages ("closed book"). For the unanswerable ones:
does the RAG answer say it is not in the documents? Replies are generated in batches through
`llmkit.apps.batching.complete_chats` (a local model decodes them together in the engine).

The run is an `EvalRun` with records ``<questions>/closed-book`` and ``<questions>/rag`` (primary
metric: containment on the answerable questions, the same ids in both, so the paired table of
`llmkit.apps.prompt_eval.strategy_table` sets one against the other) and
``<questions>-unanswerable/rag`` (the share answered "not in the documents").
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from ...eval.metrics import bootstrap_ci, normalize_answer
from ...eval.runner import EvalRun, EvalSettings, TaskRecord
from ..batching import complete_chats
from .answer import finish, prepare

CLOSED_BOOK = "Answer the question about Python briefly."


def contains(reply: str, answer: str) -> bool:
    """Whether `reply` holds `answer`, both normalised as SQuAD does (case, punctuation, articles,
    whitespace: `llmkit.eval.metrics.normalize_answer`)."""
    gold = normalize_answer(answer)
    return bool(gold) and f" {gold} " in f" {normalize_answer(reply)} "


def _reply(prepared: Any, reply: Any) -> Any:
    """A prepared question's `RAGAnswer` from its batched reply (a failed request: an empty answer whose
    status says why)."""
    result = finish(prepared, reply.text if reply.error is None else "", reply.seconds)
    if reply.error is not None:
        result.status = f"model_error: {reply.error}"
    return result


def answer_eval(llm: Any, retriever: Any, questions: Sequence[Any], label: str = "questions", k: int = 5,
                threshold: float | None = None, max_new_tokens: int = 128, batch_size: int = 16,
                budget: int | None = None, progress: bool = False) -> EvalRun:
    """The RAG answers and the closed-book ones (see the module docstring)."""
    answerable = [q for q in questions if q.answerable and q.answer]
    start = time.perf_counter()
    prepared = [prepare(llm, retriever, q.question, k=k, threshold=threshold, max_new_tokens=max_new_tokens,
                        budget=budget) for q in questions]
    asked = [p for p in prepared if p.messages is not None]
    replies = complete_chats(llm, [p.messages for p in asked], batch_size=batch_size, progress=progress,
                             desc="rag answers", errors="return", max_new_tokens=max_new_tokens, temperature=0.0)
    answers = iter(replies)
    results = [finish(p, "") if p.messages is None else _reply(p, next(answers)) for p in prepared]
    rag_seconds = time.perf_counter() - start

    start = time.perf_counter()
    closed = complete_chats(llm, [[{"role": "system", "content": CLOSED_BOOK}, {"role": "user", "content": q.question}]
                                  for q in answerable], batch_size=batch_size, progress=progress, desc="closed book",
                            errors="return", max_new_tokens=max_new_tokens, temperature=0.0)
    closed_seconds = time.perf_counter() - start

    rag_samples, refusals, closed_samples = [], [], []
    for q, result in zip(questions, results):
        sample = {"id": q.id, "question": q.question, "reply": result.text, "status": result.status,
                  "cited_docs": [c.doc_id for c in result.cited_citations]}
        if q.answerable and q.answer:
            rag_samples.append({**sample, "score": float(contains(result.text, q.answer)),
                                "citation_hit": float(any(c.doc_id in q.docs for c in result.cited_citations))})
        elif not q.answerable:
            refusals.append({**sample, "score": float(result.status == "not_found")})
    for q, reply in zip(answerable, closed):
        closed_samples.append({"id": q.id, "question": q.question, "reply": reply.text,
                               "score": float(contains(reply.text, q.answer))})

    def record(name: str, samples: list[dict], seconds: float, primary: str = "containment",
               **extra: float) -> TaskRecord:
        scores = [s["score"] for s in samples]
        ci = bootstrap_ci(scores) if scores else (0.0, 0.0)
        metrics = {primary: sum(scores) / len(scores) if scores else 0.0, "n": float(len(scores)),
                   "seconds_per_question": seconds / max(len(samples), 1), **extra}
        return TaskRecord(name, "rag-answer", metrics, primary, True, (float(ci[0]), float(ci[1])), seconds, samples)

    hits = [s["citation_hit"] for s in rag_samples]
    records = {f"{label}/closed-book": record("closed-book", closed_samples, closed_seconds),
               f"{label}/rag": record("rag", rag_samples, rag_seconds,
                                      citation_hit=sum(hits) / len(hits) if hits else 0.0,
                                      cited_any=sum(bool(s["cited_docs"]) for s in rag_samples) / max(len(hits), 1))}
    if refusals:  # a task of its own: "not in the documents" said where it is true
        records[f"{label}-unanswerable/rag"] = record("rag", refusals, rag_seconds, primary="not_found_correct")
    settings = EvalSettings(tasks=[label], split=label, strategies=["closed-book", "rag"])
    return EvalRun(str(getattr(llm, "name", "")), settings, records, time.strftime("%Y-%m-%dT%H:%M:%S"))
