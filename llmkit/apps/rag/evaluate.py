"""Retrieval measured on labelled questions: recall@k and MRR per document, per retriever, and the
"not in the documents" decision on the unanswerable ones.

A question's documents are ranked by their best chunk (the first time a document appears in the
retrieved chunks); a hit at k is a gold document among the first k. Recall@k and MRR are over the
answerable questions, each with a 95% bootstrap interval; the unanswerable ones score the threshold
decision (the retrieval's evidence under the threshold = "not in the documents"; see
`llmkit.apps.rag.retrieval`). The threshold and the weight of unknown words are chosen on a tuning
split (`choose_rule`), never on the questions they are reported on. Each question's word
overlap with its gold document is kept, so lexical give-aways are visible.

The run is an `EvalRun` (records ``<questions>/<retriever>``), so `llmkit compare` reads two of them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ...eval.metrics import bootstrap_ci
from ...eval.runner import EvalRun, EvalSettings, TaskRecord

KS = (1, 5, 10)
UNKNOWN_WEIGHTS = tuple(round(0.05 * i, 2) for i in range(41))  # 0.0 .. 2.0, the grid `choose_rule` tries
_WORD = re.compile(r"[a-z0-9_]+")
_STOP = frozenset("a an and are as at be by can do does for from how i if in is it its me my of on or that the "
                  "then this to what when which why with without you your i'm get use".split())


def content_words(text: str) -> set[str]:
    """Lowercased words of `text` less common English function words."""
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1}


def word_overlap(question: str, document: str) -> float:
    """The share of the question's content words that occur in `document` (1.0: every one)."""
    words = content_words(question)
    return len(words & content_words(document)) / len(words) if words else 0.0


def document_ranking(chunks: Sequence[Any]) -> list[str]:
    """Distinct document ids in the order their first chunk appears (chunks or ScoredChunks)."""
    seen: dict[str, None] = {}
    for item in chunks:
        chunk = getattr(item, "chunk", item)
        seen.setdefault(chunk.doc_id, None)
    return list(seen)


def first_hit(ranking: Sequence[str], gold: Sequence[str]) -> int | None:
    """1-based rank of the first gold document in `ranking`, or None."""
    return next((i for i, doc in enumerate(ranking, 1) if doc in gold), None)


def choose_threshold(similarities: Sequence[float], answerable: Sequence[bool]) -> float:
    """The similarity threshold with the best balanced accuracy (the mean of answerable questions
    kept and unanswerable ones refused) on these questions; ties go to the lower threshold."""
    pairs = list(zip(similarities, answerable))
    if not any(a for _, a in pairs) or all(a for _, a in pairs):
        raise ValueError("choosing a threshold needs both answerable and unanswerable questions")
    candidates = sorted({s for s, _ in pairs}) + [max(s for s, _ in pairs) + 1e-6]
    return max(candidates, key=lambda t: (balanced_accuracy(similarities, answerable, t), -t))


def balanced_accuracy(scores: Sequence[float], answerable: Sequence[bool], threshold: float) -> float:
    """The mean of the answerable questions kept (score >= threshold) and the unanswerable refused."""
    kept = [s >= threshold for s, a in zip(scores, answerable) if a]
    refused = [s < threshold for s, a in zip(scores, answerable) if not a]
    return (sum(kept) / len(kept) + sum(refused) / len(refused)) / 2


def choose_rule(similarities: Sequence[float], unknown: Sequence[float], answerable: Sequence[bool],
                weights: Sequence[float] = UNKNOWN_WEIGHTS) -> tuple[float, float]:
    """The (threshold, unknown_weight) whose evidence, similarity - weight x unknown, has the best
    balanced accuracy on these questions (`choose_threshold` for each weight); ties go to the smaller
    weight, the simpler rule."""
    best: tuple[float, float, float] | None = None
    for w in sorted(weights):
        evidence = [s - w * u for s, u in zip(similarities, unknown)]
        t = choose_threshold(evidence, answerable)
        score = balanced_accuracy(evidence, answerable, t)
        if best is None or score > best[0] + 1e-12:
            best = (score, t, float(w))
    assert best is not None, "give at least one weight"
    return best[1], best[2]


@dataclass
class Searcher:
    """A named retriever: `search(question) -> (chunks, evidence)` or `(chunks, evidence, details)`;
    evidence may be None, and `details` (a dict) is kept in the question's sample."""

    name: str
    search: Callable[[str], tuple[Sequence[Any], float | None]]


def retriever_searcher(retriever: Any, mode: str, k: int = 100) -> Searcher:
    """A `Retriever` in one mode (dense, bm25, hybrid) as a searcher of `k` chunks."""
    def search(question: str) -> tuple[Sequence[Any], float | None]:
        found = retriever.search(question, k=k, mode=mode)
        return found.chunks, found.evidence, {"similarity": found.similarity, "unknown": found.unknown}

    return Searcher(mode, search)


def record_samples(questions: Sequence[Any], results: Sequence[tuple[Sequence[Any], float | None]],
                   threshold: float | None, documents: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """A sample per question: its documents' ranking, the gold rank, hit@5 as its score (answerable),
    and, with a `threshold`, whether "not in the documents" was said and whether that was right (an
    unanswerable question's score)."""
    samples = []
    for q, (chunks, evidence, *details) in zip(questions, results):
        ranking = document_ranking(chunks)
        rank = first_hit(ranking, q.docs) if q.answerable else None
        sample: dict[str, Any] = {"id": q.id, "question": q.question, "answerable": q.answerable,
                                  "gold": list(q.docs), "retrieved": ranking[:10], "documents_seen": len(ranking),
                                  "rank": rank, "evidence": evidence, **(details[0] if details else {})}
        if q.answerable:
            sample["score"] = float(rank is not None and rank <= 5)
            if documents is not None and q.docs and q.docs[0] in documents:
                sample["overlap"] = round(word_overlap(q.question, documents[q.docs[0]]), 3)
        if threshold is not None and evidence is not None:
            refused = evidence < threshold
            sample["not_found"] = refused
            sample["refusal_correct"] = refused != q.answerable
            if not q.answerable:
                sample["score"] = float(sample["refusal_correct"])
        samples.append(sample)
    return samples


def retrieval_record(name: str, questions: Sequence[Any], results: Sequence[tuple[Sequence[Any], float | None]],
                     seconds: float, threshold: float | None, documents: Mapping[str, str] | None = None,
                     seed: int = 0, samples: list[dict[str, Any]] | None = None) -> TaskRecord:
    """One retriever's record: recall@1/5/10 and MRR over the answerable questions (bootstrap 95% CI
    on recall@5, the primary), the not-found accuracy on the unanswerable ones at `threshold`, and a
    sample per question (rank, hit@k, evidence, word overlap with its gold document)."""
    samples = samples if samples is not None else record_samples(questions, results, threshold, documents)
    ranks = [s["rank"] for s in samples if s["answerable"]]
    n = len(ranks)
    metrics: dict[str, float] = {"n": float(n), "unanswerable": float(len(questions) - n)}
    for k in KS:
        metrics[f"recall@{k}"] = sum(r is not None and r <= k for r in ranks) / n if n else 0.0
    metrics["mrr"] = sum(1.0 / r for r in ranks if r is not None) / n if n else 0.0
    judged = [s for s in samples if "refusal_correct" in s]
    if judged:
        no = [s for s in judged if not s["answerable"]]
        yes = [s for s in judged if s["answerable"]]
        metrics["not_found_correct"] = sum(s["refusal_correct"] for s in no) / len(no) if no else float("nan")
        metrics["answerable_kept"] = sum(s["refusal_correct"] for s in yes) / len(yes) if yes else float("nan")
        metrics["threshold"] = float(threshold)
    metrics["seconds_per_question"] = seconds / max(len(questions), 1)
    return TaskRecord(name, "retrieval", metrics, "recall@5", True, _ci(samples, True, seed), seconds,
                      [s for s in samples if s["answerable"]])


def refusal_record(answerable_record: TaskRecord, samples: Sequence[dict[str, Any]], seed: int = 0) -> TaskRecord:
    """The unanswerable questions' record beside a retriever's: "not in the documents" said or not
    (primary `not_found_correct`), so each record's samples score one thing (`llmkit compare` pairs them)."""
    m = answerable_record.metrics
    metrics = {"not_found_correct": m["not_found_correct"], "n": float(len(samples)), "threshold": m["threshold"],
               "unknown_weight": m.get("unknown_weight", 0.0)}
    return TaskRecord(answerable_record.task, "retrieval", metrics, "not_found_correct", True,
                      _ci(samples, False, seed), answerable_record.seconds, list(samples))


def _ci(samples: Sequence[dict[str, Any]], answerable: bool, seed: int) -> tuple[float, float]:
    scores = [s["score"] for s in samples if s["answerable"] == answerable and "score" in s]
    lo, hi = bootstrap_ci(scores, seed=seed) if scores else (0.0, 0.0)
    return float(lo), float(hi)


def rag_eval(searchers: Sequence[Searcher], questions: Sequence[Any], label: str = "questions",
             threshold: float | None = None, documents: Mapping[str, str] | None = None,
             model: str = "", progress: Callable[[int], None] | None = None,
             unknown_weight: float = 0.0) -> EvalRun:
    """Every searcher on every question (see the module docstring); `documents` (doc id → text)
    adds each question's word overlap with its gold document."""
    if not searchers or not questions:
        raise ValueError("give at least one retriever and one question")
    records: dict[str, TaskRecord] = {}
    for s in searchers:
        start = time.perf_counter()
        results = []
        for q in questions:
            results.append(s.search(q.question))
            if progress:
                progress(1)
        samples = record_samples(questions, results, threshold, documents)
        record = retrieval_record(s.name, questions, results, time.perf_counter() - start, threshold, documents,
                                  samples=samples)
        if threshold is not None:
            record.metrics["unknown_weight"] = float(unknown_weight)
        records[f"{label}/{s.name}"] = record
        refusals = [x for x in samples if not x["answerable"] and "score" in x]  # judged by the threshold
        if refusals:
            records[f"{label}-unanswerable/{s.name}"] = refusal_record(record, refusals)
    settings = EvalSettings(tasks=[label], split=label, strategies=[s.name for s in searchers])
    return EvalRun(model, settings, records, time.strftime("%Y-%m-%dT%H:%M:%S"))


def retrieval_table(run: EvalRun) -> str:
    """Recall@1/5/10 and MRR per retriever as markdown, with the interval on recall@5 and, where a
    threshold was given, the not-found accuracy and the share of answerable questions kept."""
    lines = ["| retriever | n | recall@1 | recall@5 [95% CI] | recall@10 | MRR | not found, correct | answerable kept "
             "| s / question |", "|---|---|---|---|---|---|---|---|---|"]
    for key, rec in run.tasks.items():
        if "recall@5" not in rec.metrics:  # the unanswerable questions' record: shown in its retriever's row
            continue
        m = rec.metrics
        refused = f"{m['not_found_correct']:.3f}" if "not_found_correct" in m else "—"
        kept = f"{m['answerable_kept']:.3f}" if "answerable_kept" in m else "—"
        lines.append(f"| {key.partition('/')[2]} | {int(m['n'])} | {m['recall@1']:.3f} | {m['recall@5']:.3f} "
                     f"[{rec.ci[0]:.3f}, {rec.ci[1]:.3f}] | {m['recall@10']:.3f} | {m['mrr']:.3f} | {refused} | {kept} | "
                     f"{m['seconds_per_question']:.3f} |")
    return "\n".join(lines)
