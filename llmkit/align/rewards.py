"""Rewards for the rollout methods (PPO, GRPO): plain Python callables, or a reward model.

A reward function takes the prompts, the generated completions and each prompt's reference
answer (None when the prompt file has none) and returns one number per completion:

    def my_reward(prompts: list[str], completions: list[str], references: list[str | None]) -> list[float]

On the command line `reward=` (or `--reward`) names one or more, joined with ``+`` and each
optionally weighted with ``*``: ``arith-exact``, ``arith-exact+format*0.1``, ``length*-0.01``,
``mymodule:my_reward`` (an importable function), or a reward-model directory (``runs/rm``, its
``model/``) trained with `llmkit align reward`.

Built in: ``<task>-exact`` (1 when the task's answer extraction of the completion equals the
reference, else 0; arith-exact, sorting-exact, gsm8k-exact, ...), ``format`` (1 when the
extraction finds an answer at all, for the task in the prompt file's ``task`` field, else
last-number), and ``length`` (the completion's length in characters; weight it negatively).

A function that raises stops the run with an error naming it and the first prompt of the batch;
a NaN or infinite reward is a counted skip: that completion is left out of the update.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger(__name__)

RewardFn = Callable[[Sequence[str], Sequence[str], Sequence["str | None"]], Sequence[float]]


class RewardError(ValueError):
    """A reward function failed, or returned the wrong number of rewards."""


def exact_reward(task: str) -> RewardFn:
    """1.0 when `task`'s answer extraction of the completion equals the reference, else 0.0."""
    from ..data.tasks import get_task
    from ..eval.harness import extract_answer
    from ..eval.metrics import exact_match

    how = get_task(task).extract

    def reward(prompts, completions, references):
        out = []
        for c, ref in zip(completions, references):
            if ref is None:
                raise RewardError(f"{task}-exact needs a reference answer for every prompt: give each row of the "
                                  "prompt file an 'answer' field")
            pred = extract_answer(c, how)
            out.append(0.0 if pred is None else exact_match(pred, ref))
        return out

    reward.__name__ = f"{task}-exact"
    return reward


def format_reward(extract: str = "last_number") -> RewardFn:
    """1.0 when the completion holds an answer the extraction finds (whatever its value)."""
    from ..eval.harness import extract_answer

    def reward(prompts, completions, references):
        return [0.0 if extract_answer(c, extract) is None else 1.0 for c in completions]

    reward.__name__ = "format"
    return reward


def length_reward(prompts, completions, references):
    """The completion's length in characters (weight it: length*-0.01 favours short answers)."""
    return [float(len(c)) for c in completions]


length_reward.__name__ = "length"


class ModelReward:
    """A trained reward model as a reward function: it scores (prompt, completion) in its own
    tokenizer and chat template, so the policy's tokenizer need not match."""

    def __init__(self, path: str | os.PathLike, device=None, batch_size: int = 16):
        from ..models.hf import CheckpointError
        from ..tokenizer import DEFAULT_CHAT_TEMPLATE, Tokenizer
        from .reward import load_reward_model

        path = Path(path)
        if (path / "model" / "config.json").exists():
            path = path / "model"
        try:
            self.model = load_reward_model(path, device).requires_grad_(False)
        except (CheckpointError, FileNotFoundError) as e:
            raise RewardError(f"reward {path}: not a reward model ({e}); train one with `llmkit align reward`") from None
        self.tokenizer = Tokenizer.from_dir(path)
        if self.tokenizer.chat_template is None:
            self.tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        self.path, self.batch_size = path, batch_size
        self.__name__ = f"reward model {path}"

    def to(self, device) -> "ModelReward":
        self.model.to(device)
        return self

    def __call__(self, prompts, completions, references):
        return self.model.score_texts(self.tokenizer, list(zip(prompts, completions)), self.batch_size)


@dataclass
class WeightedReward:
    """The weighted sum of several reward functions (`parse_reward`'s result)."""

    parts: list[tuple[RewardFn, float]]

    @property
    def __name__(self) -> str:  # noqa: A003 (reads like a function's)
        return "+".join(f"{_name(f)}*{w:g}" if w != 1 else _name(f) for f, w in self.parts)

    @property
    def reward_models(self) -> list[ModelReward]:
        return [f for f, _ in self.parts if isinstance(f, ModelReward)]

    def __call__(self, prompts, completions, references) -> list[float]:
        total = [0.0] * len(completions)
        for fn, weight in self.parts:
            values = call_reward(fn, prompts, completions, references)
            total = [t + weight * v for t, v in zip(total, values)]
        return total


def _name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def call_reward(fn: RewardFn, prompts: Sequence[str], completions: Sequence[str],
                references: Sequence[str | None]) -> list[float]:
    """`fn`'s rewards as floats (NaN where it gave something that is not a number), with errors
    that name the function."""
    try:
        values = list(fn(list(prompts), list(completions), list(references)))
    except RewardError:
        raise
    except Exception as e:
        raise RewardError(f"reward function {_name(fn)} raised {type(e).__name__}: {e} (on a batch of "
                          f"{len(prompts)} completions; the first prompt: {prompts[0][:80]!r})") from e
    if len(values) != len(completions):
        raise RewardError(f"reward function {_name(fn)} returned {len(values)} rewards for {len(completions)} "
                          "completions: return one number per completion")
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


def builtin_reward(name: str, task: str | None = None) -> RewardFn | None:
    from ..data.tasks import TASKS

    if name.endswith("-exact") and name[:-len("-exact")] in TASKS:
        t = TASKS[name[:-len("-exact")]]
        if t.kind != "generation":
            raise RewardError(f"reward {name}: {t.name} is a {t.kind} task; -exact rewards are for generation "
                              f"tasks ({', '.join(n for n, s in TASKS.items() if s.kind == 'generation')})")
        return exact_reward(t.name)
    if name == "format":
        return format_reward(TASKS[task].extract if task in TASKS else "last_number")
    if name == "length":
        return length_reward
    return None


def parse_reward(spec: str | RewardFn, task: str | None = None, device=None) -> WeightedReward:
    """A reward from its command-line spelling (see the module doc) or a callable."""
    if callable(spec):
        return WeightedReward([(spec, 1.0)])
    if not isinstance(spec, str) or not spec.strip():
        raise RewardError("no reward given: set reward= (e.g. arith-exact, a reward-model directory, "
                          "or module:function)")
    parts = []
    for term in spec.split("+"):
        term = term.strip()
        name, _, weight = term.partition("*")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise RewardError(f"reward term {term!r}: the weight after '*' must be a number") from None
        parts.append((_one_reward(name.strip(), task, device), w))
    return WeightedReward(parts)


def _one_reward(name: str, task: str | None, device) -> RewardFn:
    fn = builtin_reward(name, task)
    if fn is not None:
        return fn
    if Path(name).expanduser().is_dir():
        return ModelReward(Path(name).expanduser(), device)
    if ":" in name and not name.startswith(("http://", "https://")):
        module, _, attr = name.partition(":")
        try:
            found = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise RewardError(f"reward {name}: cannot import {attr} from {module} ({e})") from None
        if not callable(found):
            raise RewardError(f"reward {name}: {attr} is not callable")
        return found
    from ..data.tasks import TASKS

    exact = ", ".join(f"{n}-exact" for n, s in TASKS.items() if s.kind == "generation")
    raise RewardError(f"reward {name!r} is not known: use {exact}, format, length, a reward-model directory "
                      "(llmkit align reward), or module:function")
