"""Metrics. BLEU/chrF come from sacrebleu and ROUGE from rouge-score (the references everyone
reports against); the rest are short enough to read here."""

from __future__ import annotations

import math
import re
import statistics
import string
from collections import Counter
from typing import Any, Callable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def _refs(reference: str | Sequence[str]) -> list[str]:
    return [reference] if isinstance(reference, str) else list(reference)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, reference: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference."""
    return float(any(normalize_answer(prediction) == normalize_answer(r) for r in _refs(reference)))


def token_f1(prediction: str, reference: str | Sequence[str]) -> float:
    """SQuAD token F1 on normalised words, the best over the references."""
    best = 0.0
    pred = normalize_answer(prediction).split()
    for ref in _refs(reference):
        gold = normalize_answer(ref).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            p, r = common / len(pred), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


def accuracy(predictions: Sequence, labels: Sequence) -> float:
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    return sum(p == l for p, l in zip(predictions, labels)) / max(1, len(labels))


def macro_f1(predictions: Sequence, labels: Sequence) -> float:
    """Mean over classes of F1 (scikit-learn's ``f1_score(average="macro")``): a class that never
    occurs and is never predicted does not count; one predicted but absent, or present but never
    predicted, scores 0."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    classes = sorted(set(labels) | set(predictions), key=str)
    if not classes:
        return 0.0
    scores = []
    for c in classes:
        tp = sum(p == c and y == c for p, y in zip(predictions, labels))
        fp = sum(p == c and y != c for p, y in zip(predictions, labels))
        fn = sum(p != c and y == c for p, y in zip(predictions, labels))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores)


def per_class(predictions: Sequence, labels: Sequence) -> dict[str, dict[str, Any]]:
    """Per class: precision, recall (each with its 95% Wilson interval and the counts behind it) and
    F1, as scikit-learn's ``precision_recall_fscore_support`` (0 where a ratio has no denominator)."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    out = {}
    for c in sorted(set(labels) | set(predictions), key=str):
        tp = sum(p == c and y == c for p, y in zip(predictions, labels))
        predicted, actual = sum(p == c for p in predictions), sum(y == c for y in labels)
        precision, recall = (tp / predicted if predicted else 0.0), (tp / actual if actual else 0.0)
        out[str(c)] = {"precision": precision, "precision_ci": list(wilson_interval(tp, predicted)),
                       "recall": recall, "recall_ci": list(wilson_interval(tp, actual)),
                       "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
                       "tp": tp, "predicted": predicted, "support": actual}
    return out


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (better than the normal one near 0 and 1)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _streams(references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    """Per-prediction reference lists -> sacrebleu's reference streams."""
    per = [_refs(r) for r in references]
    width = max(len(r) for r in per)
    return [[r[i] if i < len(r) else r[0] for r in per] for i in range(width)]


def _need(module: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise ImportError(f"this metric needs {module}: pip install 'llmkit[eval]'") from e


def bleu(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Corpus BLEU (sacrebleu, default 13a tokenisation), 0-100."""
    sacrebleu = _need("sacrebleu")
    return float(sacrebleu.corpus_bleu(list(predictions), _streams(references)).score)


def chrf(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Corpus chrF (sacrebleu), 0-100."""
    sacrebleu = _need("sacrebleu")
    return float(sacrebleu.corpus_chrf(list(predictions), _streams(references)).score)


def rouge(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (rouge-score, Porter stemming), the best reference per example."""
    _need("rouge_score")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references):
        scores = [scorer.score(r, pred) for r in _refs(ref)]
        for key in totals:
            totals[key] += max(s[key].fmeasure for s in scores)
    n = max(1, len(predictions))
    return {k: v / n for k, v in totals.items()}


def rouge_l(predictions: Sequence[str], answers: Sequence[str]) -> float | None:
    """Mean ROUGE-L F-measure where it tells more than exact match: when some answer is a word
    sequence (sorting), whose longest common subsequence with the prediction credits a partly
    right order; None for one-word answers, or without rouge-score (the eval extra)."""
    if not any(len(a.split()) > 1 for a in answers):
        return None
    try:
        return rouge(predictions, answers)["rougeL"]
    except ImportError:
        return None


def _edits(a: Sequence[str], b: Sequence[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def word_error_rate(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus WER: word-level edit distance summed over examples / reference words."""
    edits = sum(_edits(r.split(), p.split()) for p, r in zip(predictions, references))
    words = sum(len(r.split()) for r in references)
    return edits / max(1, words)


def perplexity(total_nll: float, n_tokens: int) -> float:
    return math.exp(total_nll / max(1, n_tokens))


def bits_per_byte(total_nll_nats: float, n_bytes: int) -> float:
    return total_nll_nats / (math.log(2) * max(1, n_bytes))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021) from n samples of which c pass: 1 - C(n-c, k)/C(n, k)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(results: Sequence[tuple[int, int]], k: int) -> float:
    return sum(pass_at_k(n, c, k) for n, c in results) / max(1, len(results))


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> float:
    """ECE with equal-width bins: Σ_b |B|/N · |accuracy(B) - mean confidence(B)|."""
    bins: list[list[tuple[float, bool]]] = [[] for _ in range(n_bins)]
    for conf, ok in zip(confidences, correct):
        bins[min(n_bins - 1, int(conf * n_bins))].append((conf, bool(ok)))
    total = max(1, len(confidences))
    return sum(len(b) / total * abs(sum(ok for _, ok in b) / len(b) - sum(c for c, _ in b) / len(b))
               for b in bins if b)


def bootstrap_ci(values: Sequence[float], stat: Callable[[Sequence[float]], float] | None = None,
                 n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of `stat` (default the mean), deterministic."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (float("nan"), float("nan"))
    stat = stat or (lambda x: float(np.mean(x)))
    rng = np.random.default_rng(seed)
    draws = [stat(data[rng.integers(0, data.size, data.size)]) for _ in range(n_resamples)]
    return float(np.quantile(draws, alpha / 2)), float(np.quantile(draws, 1 - alpha / 2))


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with `df` degrees of freedom: the two-sided
    probability P(|T| <= t) in closed form for integer df (Abramowitz & Stegun 26.7.3-4),
    inverted by bisection. Written here because scipy is not a core dependency."""
    if not (0.5 < p < 1 and df >= 1):
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")

    def two_sided(t: float) -> float:
        theta = math.atan(t / math.sqrt(df))
        s, c2 = math.sin(theta), math.cos(theta) ** 2
        if df % 2:
            term, total = math.cos(theta), 0.0
            for j in range(1, (df - 1) // 2 + 1):  # cos θ + (2/3) cos³θ + ... up to cos^(df-2) θ
                total += term
                term *= c2 * (2 * j) / (2 * j + 1)
            return 2 / math.pi * (theta + s * total)
        term, total = 1.0, 0.0
        for j in range(df // 2):  # 1 + (1/2) cos²θ + (1·3)/(2·4) cos⁴θ + ... up to cos^(df-2) θ
            total += term
            term *= c2 * (2 * j + 1) / (2 * j + 2)
        return s * total

    target, lo, hi = 2 * p - 1, 0.0, 1.0
    while two_sided(hi) < target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if two_sided(mid) < target else (lo, mid)
        if hi - lo < 1e-12 * hi:
            break
    return (lo + hi) / 2


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` with its Student-t interval (n - 1 degrees of freedom)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan, math.nan
    half = t_quantile(0.5 + level / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half
