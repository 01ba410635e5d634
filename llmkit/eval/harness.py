"""The task harness: multiple choice by log-likelihood, generation with answer extraction, and
perplexity with a sliding window. Works with any `LLM` (through its scoring and generation
methods); examples are duck-typed objects with ``id``, ``prompt``, ``answer`` and ``choices``.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .metrics import exact_match, expected_calibration_error, mean_pass_at_k, rouge_l, token_f1

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class TaskResult:
    task: str
    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)


# what chain-of-thought prompting appends to a question (Kojima et al., 2022)
COT_SUFFIX = " Let's think step by step."


def fewshot_examples(pool: Sequence[Any], k: int, seed: int, avoid: str | None = None) -> list[Any]:
    """`k` examples drawn from `pool` (a separate split) with an RNG seeded by `seed` and the
    question's id `avoid` (never drawn itself): each question gets its own, reproducible shots."""
    if k <= 0 or not pool:
        return []
    rng = random.Random(f"{seed}-{avoid}")
    candidates = [ex for ex in pool if getattr(ex, "id", None) != avoid]
    return rng.sample(candidates, min(k, len(candidates)))


def fewshot_prefix(pool: Sequence[Any], k: int, seed: int, avoid: str | None = None) -> str:
    """`k` solved examples drawn from `pool` (see `fewshot_examples`), one per block."""
    return "".join(f"{ex.prompt} {ex.answer}\n\n" for ex in fewshot_examples(pool, k, seed, avoid))


def extract_answer(text: str, how: str = "last_number") -> str | None:
    """The answer in a generated text: the last number, the first line, or a regex's first group;
    None when the extractor finds nothing (the harness counts those instead of failing)."""
    if how == "last_number":
        found = NUMBER.findall(text)
        return found[-1] if found else None
    if how == "first_line":
        line = text.strip().split("\n")[0].strip()
        return line or None
    if how.startswith("regex:"):
        m = re.search(how[len("regex:"):], text)
        if m is None:
            return None
        return (m.group(1) if m.groups() else m.group(0)).strip()
    raise ValueError(f"answer extraction {how!r} is not supported: use last_number, first_line or regex:PATTERN")


def _chunks(n: int, size: int, progress: bool, desc: str):
    """Index ranges of `size` items, with a progress bar when asked."""
    from tqdm.auto import tqdm

    starts = range(0, n, size)
    return tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False)


def run_multiple_choice(llm: Any, name: str, examples: Sequence[Any], pool: Sequence[Any] = (), shots: int = 0,
                        seed: int = 0, batch_size: int = 16, progress: bool = False,
                        chat: bool = False) -> TaskResult:
    """Score every choice as a continuation of the prompt; `acc` takes the highest log-likelihood,
    `acc_norm` the highest per character of the choice (lm-eval's length normalisation), and
    `calibration_error` is the ECE of the softmax over the choices' log-likelihoods. With `chat`,
    the prompt is the user turn and each choice the start of the assistant's answer."""
    requests, spans = [], []
    for ex in examples:
        context = fewshot_prefix(pool, shots, seed, ex.id) + ex.prompt
        if chat:
            context = chat_wrap(llm, context)
        start = len(requests)
        requests += [(context, ("" if chat else " ") + choice) for choice in ex.choices]
        spans.append((start, len(requests)))
    scores = []
    chunk = batch_size * 4
    for i in _chunks(len(requests), chunk, progress, name):
        scores += llm.loglikelihood(requests[i:i + chunk], batch_size=batch_size)
    samples, correct, correct_norm, confidences = [], 0, 0, []
    for ex, (a, b) in zip(examples, spans):
        lls = [s.logprob for s in scores[a:b]]
        norm = [ll / max(1, len(" " + c)) for ll, c in zip(lls, ex.choices)]
        best, best_norm = max(range(len(lls)), key=lls.__getitem__), max(range(len(norm)), key=norm.__getitem__)
        pick, pick_norm = ex.choices[best], ex.choices[best_norm]
        top = max(lls)
        confidences.append(1.0 / sum(math.exp(ll - top) for ll in lls))  # softmax probability of the pick
        correct += pick == ex.answer
        correct_norm += pick_norm == ex.answer
        samples.append({"id": ex.id, "prompt": requests[a][0], "choices": list(ex.choices), "loglikelihoods": lls,
                        "prediction": pick, "prediction_norm": pick_norm, "answer": ex.answer,
                        "score": float(pick == ex.answer)})
    n = max(1, len(examples))
    ece = expected_calibration_error(confidences, [s["score"] == 1.0 for s in samples]) if samples else 0.0
    return TaskResult(name, {"acc": correct / n, "acc_norm": correct_norm / n, "calibration_error": ece,
                             "n": len(examples)}, samples)


def chat_wrap(llm: Any, prompt: str) -> str:
    """`prompt` as the user turn of the model's chat template, ready for the assistant's answer
    (how a chat fine-tuned model is asked)."""
    tokenizer = getattr(llm, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("chat prompting needs a local model with a chat template (this LLM has no tokenizer)")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)


def _prompts(examples: Sequence[Any], pool: Sequence[Any], shots: int, seed: int, chain_of_thought: bool,
             llm: Any = None, chat: bool = False) -> list[str]:
    prompts = []
    for ex in examples:
        prompt = fewshot_prefix(pool, shots, seed, ex.id) + ex.prompt
        if chain_of_thought:
            prompt += COT_SUFFIX
        prompts.append(chat_wrap(llm, prompt) if chat else prompt)
    return prompts


def run_generation(llm: Any, name: str, examples: Sequence[Any], pool: Sequence[Any] = (), shots: int = 0,
                   seed: int = 0, max_new_tokens: int = 32, extract: str = "last_number",
                   chain_of_thought: bool = False, batch_size: int = 16, progress: bool = False,
                   chat: bool = False, num_beams: int = 1) -> TaskResult:
    """Greedy generation (beam search with `num_beams` > 1) up to a blank line; the extracted
    answer is scored by EM and token F1, and by ROUGE-L where answers are word sequences
    (`metrics.rouge_l`). Outputs where the extractor finds nothing score 0 and are counted in
    `no_answer`. With `chat`, each prompt is the user turn of the chat template; an encoder-decoder
    reads each prompt as its source."""
    extract_answer("", extract)  # a bad extractor fails before any generation
    prompts = _prompts(examples, pool, shots, seed, chain_of_thought, llm, chat)
    beams = {"num_beams": num_beams} if num_beams > 1 else {}  # a server without beam search still answers greedily
    outputs: list[str] = []
    for i in _chunks(len(prompts), batch_size, progress, name):
        outputs += llm.generate(prompts[i:i + batch_size], max_new_tokens=max_new_tokens, temperature=0,
                                stop=["\n\n"], truncate_prompt=True, **beams)
    samples, em, f1, missing = [], 0.0, 0.0, 0
    for ex, prompt, out in zip(examples, prompts, outputs):
        pred = extract_answer(out, extract)
        if pred is None:
            missing += 1
            e = f = 0.0
        else:
            e, f = exact_match(pred, ex.answer), token_f1(pred, ex.answer)
        em, f1 = em + e, f1 + f
        samples.append({"id": ex.id, "prompt": prompt, "output": out, "prediction": pred, "answer": ex.answer,
                        "score": e})
    n = max(1, len(examples))
    metrics = {"exact_match": em / n, "f1": f1 / n, "no_answer": missing, "n": len(examples)}
    rouge = rouge_l([s["prediction"] or "" for s in samples], [ex.answer for ex in examples])
    if rouge is not None:
        metrics["rougeL"] = rouge
    return TaskResult(name, metrics, samples)


CODE_STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert "]


def run_code(llm: Any, name: str, examples: Sequence[Any], samples_per_task: int = 1, ks: Sequence[int] = (1,),
             temperature: float = 0.8, max_new_tokens: int = 128, seed: int = 0, timeout: float = 10.0,
             batch_size: int = 16, progress: bool = False,
             runner: Callable[..., Any] | None = None) -> TaskResult:
    """HumanEval-style code tasks: the model completes a function from its signature and
    docstring; each completion runs with the task's tests in the sandbox; pass@k uses the unbiased
    estimator. One sample per task is greedy; several are sampled at `temperature` (seeded)."""
    from .sandbox import run_code as sandbox_run

    runner = runner or sandbox_run
    bad = [k for k in ks if k > samples_per_task]
    if bad:
        raise ValueError(f"pass@{bad[0]} needs at least {bad[0]} samples per task, got samples_per_task="
                         f"{samples_per_task}: raise samples_per_task or drop k={bad[0]}")
    greedy = samples_per_task == 1
    prompts = [ex.prompt for ex in examples for _ in range(samples_per_task)]
    outputs: list[str] = []
    for i in _chunks(len(prompts), batch_size, progress, name):
        outputs += llm.generate(prompts[i:i + batch_size], max_new_tokens=max_new_tokens,
                                temperature=0 if greedy else temperature, seed=None if greedy else seed + i,
                                stop=CODE_STOPS, truncate_prompt=True)
    samples, counts = [], []
    for j, ex in enumerate(examples):
        passed = 0
        runs = []
        for out in outputs[j * samples_per_task:(j + 1) * samples_per_task]:
            program = ex.prompt + out + "\n\n" + ex.meta.get("tests", "") + "\n"
            res = runner(program, timeout=timeout)
            passed += res.passed
            runs.append({"output": out, "status": res.status})
        counts.append((samples_per_task, passed))
        samples.append({"id": ex.id, "prompt": ex.prompt, "output": runs[0]["output"], "runs": runs,
                        "answer": ex.answer, "score": passed / samples_per_task})
    metrics: dict[str, float] = {f"pass@{k}": mean_pass_at_k(counts, k) for k in ks}
    metrics["n"] = len(examples)
    return TaskResult(name, metrics, samples)


def run_perplexity(llm: Any, name: str, texts: Sequence[str], batch_size: int = 16,
                   ids: Sequence[str] | None = None) -> TaskResult:
    """Token perplexity and bits per byte over whole texts, with a sliding window for texts longer
    than the context (`LLM.loglikelihood_rolling`). Each sample's score is its negative log-likelihood
    per byte (lower is better)."""
    nll, tokens, nbytes, samples = 0.0, 0, 0, []
    results = llm.loglikelihood_rolling(list(texts), batch_size=batch_size)
    for j, (text, (logprob, n)) in enumerate(zip(texts, results)):
        size = len(text.encode("utf-8"))
        nll -= logprob
        tokens += n
        nbytes += size
        samples.append({"id": ids[j] if ids else str(j), "text": text[:200], "logprob": logprob, "tokens": n,
                        "score": -logprob / (math.log(2) * max(1, size))})
    metrics = {"perplexity": math.exp(nll / max(1, tokens)), "bits_per_byte": nll / (math.log(2) * max(1, nbytes)),
               "tokens": tokens, "n": len(texts)}
    return TaskResult(name, metrics, samples)
