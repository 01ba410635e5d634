"""The task harness: multiple choice by log-likelihood, generation with answer extraction, and
perplexity with a sliding window. Works with any `LLM` (through its scoring and generation
methods); examples are duck-typed objects with ``id``, ``prompt``, ``answer`` and ``choices``.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from .metrics import exact_match, token_f1

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class TaskResult:
    task: str
    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)


def fewshot_prefix(pool: Sequence[Any], k: int, seed: int, avoid: str | None = None) -> str:
    """`k` solved examples drawn from `pool` (a separate split) with a seeded RNG, one per block."""
    if k <= 0 or not pool:
        return ""
    rng = random.Random(f"{seed}-{avoid}")
    candidates = [ex for ex in pool if getattr(ex, "id", None) != avoid]
    shots = rng.sample(candidates, min(k, len(candidates)))
    return "".join(f"{ex.prompt} {ex.answer}\n\n" for ex in shots)


def extract_answer(text: str, how: str = "last_number") -> str:
    """The answer in a generated text: the last number, the first line, or a regex's first group."""
    if how == "last_number":
        found = NUMBER.findall(text)
        return found[-1] if found else text.strip()
    if how == "first_line":
        return text.strip().split("\n")[0].strip()
    if how.startswith("regex:"):
        m = re.search(how[len("regex:"):], text)
        return (m.group(1) if m and m.groups() else m.group(0) if m else "").strip()
    raise ValueError(f"answer extraction {how!r} is not supported: use last_number, first_line or regex:PATTERN")


def run_multiple_choice(llm: Any, name: str, examples: Sequence[Any], pool: Sequence[Any] = (), shots: int = 0,
                        seed: int = 0, batch_size: int = 16) -> TaskResult:
    """Score every choice as a continuation of the prompt; `acc` takes the highest log-likelihood,
    `acc_norm` the highest per character of the choice (lm-eval's length normalisation)."""
    requests, spans = [], []
    for ex in examples:
        context = fewshot_prefix(pool, shots, seed, ex.id) + ex.prompt
        start = len(requests)
        requests += [(context, " " + choice) for choice in ex.choices]
        spans.append((start, len(requests)))
    scores = llm.loglikelihood(requests, batch_size=batch_size)
    samples, correct, correct_norm = [], 0, 0
    for ex, (a, b) in zip(examples, spans):
        lls = [s.logprob for s in scores[a:b]]
        norm = [ll / max(1, len(" " + c)) for ll, c in zip(lls, ex.choices)]
        pick, pick_norm = ex.choices[max(range(len(lls)), key=lls.__getitem__)], \
            ex.choices[max(range(len(norm)), key=norm.__getitem__)]
        correct += pick == ex.answer
        correct_norm += pick_norm == ex.answer
        samples.append({"id": ex.id, "prompt": requests[a][0], "choices": list(ex.choices), "loglikelihoods": lls,
                        "prediction": pick, "answer": ex.answer, "score": float(pick == ex.answer)})
    n = max(1, len(examples))
    return TaskResult(name, {"acc": correct / n, "acc_norm": correct_norm / n, "n": len(examples)}, samples)


def run_generation(llm: Any, name: str, examples: Sequence[Any], pool: Sequence[Any] = (), shots: int = 0,
                   seed: int = 0, max_new_tokens: int = 32, extract: str = "last_number",
                   chain_of_thought: bool = False, batch_size: int = 16) -> TaskResult:
    """Greedy generation up to a blank line; the extracted answer is scored by EM and token F1."""
    prompts = []
    for ex in examples:
        prompt = fewshot_prefix(pool, shots, seed, ex.id) + ex.prompt
        if chain_of_thought:
            prompt += " Let's think step by step."
        prompts.append(prompt)
    outputs: list[str] = []
    for i in range(0, len(prompts), batch_size):
        outputs += llm.generate(prompts[i:i + batch_size], max_new_tokens=max_new_tokens, temperature=0,
                                stop=["\n\n"], truncate_prompt=True)
    samples, em, f1 = [], 0.0, 0.0
    for ex, prompt, out in zip(examples, prompts, outputs):
        pred = extract_answer(out, extract)
        e, f = exact_match(pred, ex.answer), token_f1(pred, ex.answer)
        em, f1 = em + e, f1 + f
        samples.append({"id": ex.id, "prompt": prompt, "output": out, "prediction": pred, "answer": ex.answer,
                        "score": e})
    n = max(1, len(examples))
    return TaskResult(name, {"exact_match": em / n, "f1": f1 / n, "n": len(examples)}, samples)


def run_perplexity(llm: Any, name: str, texts: Sequence[str], batch_size: int = 16) -> TaskResult:
    """Token perplexity and bits per byte over whole texts, with a sliding window for texts longer
    than the context (`LLM.loglikelihood_rolling`)."""
    nll, tokens, nbytes, samples = 0.0, 0, 0, []
    results = llm.loglikelihood_rolling(list(texts), batch_size=batch_size)
    for text, (logprob, n) in zip(texts, results):
        nll -= logprob
        tokens += n
        nbytes += len(text.encode("utf-8"))
        samples.append({"text": text[:200], "logprob": logprob, "tokens": n})
    metrics = {"perplexity": math.exp(nll / max(1, tokens)), "bits_per_byte": nll / (math.log(2) * max(1, nbytes)),
               "tokens": tokens, "n": len(texts)}
    return TaskResult(name, metrics, samples)
