"""Trivial baselines a trained model must beat on the checkable built-in tasks:

- **majority class**: always give the most common answer of the training split;
- **format only**: an answer in the right format but random: for multiple choice a random choice,
  for arith a random answer drawn from the training answers, for sorting the given numbers in a
  random order;
- **copy the input** (generation tasks; what a sequence-to-sequence model that learnt nothing but
  to echo its source would answer): for sorting, the given numbers in the given order (right when
  they already ascend); for every other generation task, the prompt itself taken as the output and
  read by the task's answer extractor as a model's output is (arith: the last number of the
  question, its second operand, right when a op b equals b).

Scored on the same examples with the same exact match as the model.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any, Sequence

from .metrics import exact_match, rouge_l, wilson_interval


def majority_class(train: Sequence, test: Sequence) -> float:
    if not test:
        return 0.0
    top = Counter(ex.answer for ex in train).most_common(1)[0][0]
    return sum(exact_match(top, ex.answer) for ex in test) / len(test)


def format_only(task: str, train: Sequence, test: Sequence, seed: int = 0, draws: int = 20) -> float:
    """Mean exact match of format-right random answers (averaged over `draws` seeded draws)."""
    if not test:
        return 0.0
    rng = random.Random(seed)
    answers = [ex.answer for ex in train]
    total = 0.0
    for _ in range(draws):
        for ex in test:
            if ex.choices:
                guess = rng.choice(list(ex.choices))
            elif task == "sorting":
                nums = given_numbers(ex.prompt)
                rng.shuffle(nums)
                guess = " ".join(nums)
            else:
                guess = rng.choice(answers)
            total += exact_match(guess, ex.answer)
    return total / (draws * len(test))


def given_numbers(prompt: str) -> list[str]:
    """The numbers a sorting prompt gives, in its order (its first line holds them)."""
    return re.findall(r"-?\d+", prompt.split("\n")[0])


def copy_answer(task: str, prompt: str, extract: str = "last_number") -> str | None:
    """What copying the input answers (see the module doc); None where the extractor finds nothing."""
    from .harness import extract_answer

    if task == "sorting":
        return " ".join(given_numbers(prompt))
    return extract_answer(prompt, extract)


def copy_input(task: str, examples: Sequence, extract: str = "last_number") -> dict[str, Any]:
    """The copy-the-input baseline on `examples`: its exact match, that proportion's 95% Wilson
    interval ("ci"), the copied answers ("answers") and, where `rouge_l` applies, "rougeL"."""
    answers = [copy_answer(task, ex.prompt, extract) for ex in examples]
    hits = sum(a is not None and bool(exact_match(a, ex.answer)) for a, ex in zip(answers, examples))
    n = len(examples)
    out: dict[str, Any] = {"exact_match": hits / max(1, n), "ci": list(wilson_interval(hits, n)), "n": n,
                           "answers": answers}
    score = rouge_l([a or "" for a in answers], [ex.answer for ex in examples])
    if score is not None:
        out["rougeL"] = score
    return out


def task_baselines(task: str, split: str = "test", limit: int | None = None) -> dict[str, Any]:
    """Every baseline of a built-in task on `split` (its first `limit` examples): "majority",
    "format_only" and, for generation tasks, "copy" (exact match) with "copy_ci", its Wilson interval."""
    from ..data.tasks import get_task, load_task

    spec = get_task(task)
    train, test = load_task(task, "train"), load_task(task, split)
    if limit:
        test = test[:limit]
    out = {"majority": majority_class(train, test), "format_only": format_only(task, train, test)}
    if spec.kind == "generation":
        copied = copy_input(task, test, spec.extract)
        out.update(copy=copied["exact_match"], copy_ci=copied["ci"])
    return out
