"""Trivial baselines a trained model must beat on the checkable built-in tasks:

- **majority class**: always give the most common answer of the training split;
- **format only**: an answer in the right format but random: for multiple choice a random choice,
  for arith a random answer drawn from the training answers, for sorting the given numbers in a
  random order. Scored on the same examples with the same exact match as the model.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Sequence

from .metrics import exact_match


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
                nums = re.findall(r"-?\d+", ex.prompt.split("\n")[0])
                rng.shuffle(nums)
                guess = " ".join(nums)
            else:
                guess = rng.choice(answers)
            total += exact_match(guess, ex.answer)
    return total / (draws * len(test))


def task_baselines(task: str, split: str = "test", limit: int | None = None) -> dict[str, float]:
    from ..data.tasks import load_task

    train, test = load_task(task, "train"), load_task(task, split)
    if limit:
        test = test[:limit]
    return {"majority": majority_class(train, test), "format_only": format_only(task, train, test)}
