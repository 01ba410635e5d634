"""Preference data: pairs of a prompt, a chosen and a rejected answer.

JSONL rows, one pair per line (or several, from a ranked list):

    {"prompt": "...", "chosen": "...", "rejected": "..."}
    {"prompt": [messages], "chosen": [{"role": "assistant", ...}], "rejected": [...]}   (trl's chat form)
    {"chosen": [messages], "rejected": [messages]}          (the prompt is their shared beginning)
    {"prompt": "...", "ranked": ["best", "next", ..., "worst"]}      (every better-worse pair)

Prompts are rendered with the model's chat template, and only the final assistant turn counts.
A pair whose chosen and rejected answers are the same teaches nothing and is skipped (counted);
any other bad row is an error naming its line unless `skip_bad_rows`.

`builtin_preferences(split)` is an embedded set made from the checkable tasks, with their splits:
the right answer over a wrong one of the same form ("correct"), and the bare answer over the same
answer wrapped in rambling ("concise").
"""

from __future__ import annotations

import logging
import os
import random
import zlib
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..data.dataset import DataError
from ..data.instruct import (IGNORE_INDEX, BadRow, Messages, SFTLoader, builtin_tasks, encode_conversation,
                             is_builtin, read_jsonl)

log = logging.getLogger(__name__)

BUILTIN_PREF_TASKS = ("arith", "sorting", "stdlib-qa", "sentiment")
BUILTIN_PREF_KINDS = ("correct", "concise")


@dataclass(frozen=True)
class Pair:
    prompt: tuple[tuple[str, str], ...]  # ((role, content), ...) ending with a user (or system) turn
    chosen: str
    rejected: str

    @property
    def messages(self) -> Messages:
        return [{"role": r, "content": c} for r, c in self.prompt]


def _prompt_messages(value: Any, field: str) -> Messages:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"field '{field}' is empty")
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        for i, m in enumerate(value):
            if m["role"] not in ("system", "user", "assistant") or not isinstance(m["content"], str):
                raise ValueError(f"{field}[{i}] must have role system/user/assistant and string content")
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise ValueError(f"field '{field}' must be a string or a non-empty list of {{role, content}} messages")


def _answer(value: Any, field: str) -> str:
    if isinstance(value, str):
        text = value
    elif (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
          and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str)):
        text = value[0]["content"]
    else:
        raise ValueError(f"field '{field}' must be a string or one assistant message")
    if not text.strip():
        raise ValueError(f"field '{field}' is an empty answer")
    return text


def pairs_from_ranked(prompt: Messages | str, ranked: Sequence[str]) -> list[Pair]:
    """Every (better, worse) pair of answers ranked best first: n answers give n(n-1)/2 pairs."""
    msgs = _prompt_messages(prompt, "prompt")
    key = tuple((m["role"], m["content"]) for m in msgs)
    return [Pair(key, a, b) for a, b in combinations(ranked, 2)]


def row_to_pairs(row: Any) -> list[Pair]:
    """The pairs of one JSONL row (formats in the module docstring); ValueError says what is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if "ranked" in row:
        ranked = row["ranked"]
        if not isinstance(ranked, list) or len(ranked) < 2:
            raise ValueError("field 'ranked' must list at least two answers, best first")
        return pairs_from_ranked(row.get("prompt", ""), [_answer(a, f"ranked[{i}]") for i, a in enumerate(ranked)])
    if "chosen" not in row or "rejected" not in row:
        raise ValueError(f"a preference row needs 'chosen' and 'rejected' (fields: {', '.join(row) or 'none'})")
    if "prompt" in row:
        msgs = _prompt_messages(row["prompt"], "prompt")
        chosen, rejected = _answer(row["chosen"], "chosen"), _answer(row["rejected"], "rejected")
    else:  # two whole conversations: the prompt is what they share
        c, r = _prompt_messages(row["chosen"], "chosen"), _prompt_messages(row["rejected"], "rejected")
        n = 0
        while n < min(len(c), len(r)) - 1 and c[n] == r[n]:
            n += 1
        if not (len(c) == len(r) == n + 1 and c[n]["role"] == r[n]["role"] == "assistant") or n == 0:
            raise ValueError("'chosen' and 'rejected' conversations must share every turn but a final assistant one")
        msgs, chosen, rejected = c[:n], c[n]["content"], r[n]["content"]
    if msgs[-1]["role"] == "assistant":
        raise ValueError("the prompt must end with a user (or system) turn: the answers are the assistant's")
    return [Pair(tuple((m["role"], m["content"]) for m in msgs), chosen, rejected)]


@dataclass
class PairStats:
    pairs: int = 0
    identical: int = 0  # chosen == rejected: skipped
    bad: list[BadRow] | None = None


def read_preferences(path: str | os.PathLike, skip_bad_rows: bool = False) -> tuple[list[Pair], PairStats]:
    """Pairs of a JSONL file (or ``builtin[:task,...]``: the embedded set's train split)."""
    text = str(path)
    if is_builtin(text):
        return _count(builtin_preferences("train", builtin_pref_tasks(text)), [])
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preference file {path} does not exist (or use --data builtin for the embedded set)")
    pairs, bad = read_jsonl(path, row_to_pairs, skip_bad_rows, "preference pairs")
    return _count(pairs, bad)


def _count(pairs: list[Pair], bad: list[BadRow]) -> tuple[list[Pair], PairStats]:
    kept = [p for p in pairs if p.chosen.strip() != p.rejected.strip()]
    stats = PairStats(pairs=len(kept), identical=len(pairs) - len(kept), bad=bad)
    if stats.identical:
        log.warning("skipped %d pair(s) whose chosen and rejected answers are the same", stats.identical)
    if not kept:
        raise DataError("no usable preference pairs" + (f" ({stats.identical} had identical answers)"
                                                        if stats.identical else ""))
    return kept, stats


# ------------------------------------------------------------------------------ embedded set
def builtin_pref_tasks(spec: str) -> tuple[str, ...]:
    return builtin_tasks(spec, BUILTIN_PREF_TASKS, "preference")


def wrong_answer(task: str, ex, rng: random.Random) -> str:
    """A wrong answer of the right form: another number, the list out of order, another choice."""
    if ex.choices:
        return rng.choice([c for c in ex.choices if c != ex.answer])
    if task == "arith":
        value = int(ex.answer)
        return str(value + rng.choice([-10, -2, -1, 1, 2, 10]))
    if task == "sorting":
        nums = ex.answer.split()
        for _ in range(20):
            i = rng.randrange(len(nums) - 1)
            if nums[i] != nums[i + 1]:
                nums[i], nums[i + 1] = nums[i + 1], nums[i]
                return " ".join(nums)
        return " ".join(reversed(nums)) if len(set(nums)) > 1 else ex.answer + " 0"
    raise ValueError(f"no wrong answers for task {task!r}")


RAMBLES = ("Well, let me think about this carefully before I answer. {a} — at least I believe so, although I "
           "could be wrong, and you may want to check it yourself.",
           "That is a great question! There are many ways to look at it. After some thought, my answer would be "
           "{a}, but please do not rely on it too much.",
           "Hmm. I am not entirely sure. It might be {a}. Then again, it might not. Answers like this one are "
           "often tricky, so take it with a grain of salt.")


def builtin_preferences(split: str = "train", tasks: Sequence[str] = BUILTIN_PREF_TASKS,
                        kinds: Sequence[str] = BUILTIN_PREF_KINDS) -> list[Pair]:
    """The embedded preference set: for every example of `split` of each task, the right answer
    over a wrong one ("correct") and the bare right answer over it wrapped in rambling
    ("concise"). Deterministic (seeded by each example's id)."""
    from ..data.tasks import load_task

    bad = [k for k in kinds if k not in BUILTIN_PREF_KINDS]
    if bad:
        raise DataError(f"preference kind {bad[0]!r} is not known: use {', '.join(BUILTIN_PREF_KINDS)}")
    out = []
    for task in tasks:
        for ex in load_task(task, split):
            rng = random.Random(zlib.crc32(ex.id.encode()))
            prompt = (("user", ex.prompt),)
            if "correct" in kinds:
                out.append(Pair(prompt, ex.answer, wrong_answer(task, ex, rng)))
            if "concise" in kinds:
                out.append(Pair(prompt, ex.answer, rng.choice(RAMBLES).format(a=ex.answer)))
    return out


# ------------------------------------------------------------------------------- encoding
@dataclass
class PairExample:
    chosen_ids: np.ndarray
    chosen_labels: np.ndarray
    rejected_ids: np.ndarray
    rejected_labels: np.ndarray
    ref_chosen: float | None = None  # the reference model's log-probs, when precomputed
    ref_rejected: float | None = None


def encode_pairs(tokenizer, pairs: Sequence[Pair], max_len: int) -> tuple[list[PairExample], int]:
    """Token ids and labels (only the final answer and its end-of-turn marker count) of both
    sides of every pair; pairs where a side has no answer token left within `max_len` (the
    prompt alone fills the context) are dropped and counted."""
    out, dropped = [], 0
    for p in pairs:
        sides = []
        for answer in (p.chosen, p.rejected):
            ids, labels = encode_conversation(tokenizer, p.messages + [{"role": "assistant", "content": answer}],
                                              max_len + 1, last_only=True)
            sides.append((np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)))
        if any(not (lab[1:] != IGNORE_INDEX).any() for _, lab in sides):
            dropped += 1
            continue
        out.append(PairExample(sides[0][0], sides[0][1], sides[1][0], sides[1][1]))
    if dropped:
        log.warning("dropped %d pair(s) whose prompt leaves no room for the answer within %d tokens", dropped, max_len)
    return out, dropped


def collate_pairs(examples: Sequence[PairExample], pad_id: int, full: bool = False) -> dict[str, torch.Tensor]:
    """One batch of 2B rows, the B chosen sides first, then the B rejected ones: inputs ids[:-1],
    labels labels[1:] (with `full`, the whole sequences, for a reward model), right padding.
    Adds ``ref_logps`` (2B,) when every pair has them."""
    rows = [(e.chosen_ids, e.chosen_labels) for e in examples] + [(e.rejected_ids, e.rejected_labels) for e in examples]
    cut = 0 if full else 1
    width = max(len(i) for i, _ in rows) - cut
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (i, lab) in enumerate(rows):
        n = len(i) - cut
        ids[r, :n], labels[r, :n], mask[r, :n] = torch.from_numpy(i[:n]), torch.from_numpy(lab[cut:]), 1
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    if all(e.ref_chosen is not None for e in examples):
        batch["ref_logps"] = torch.tensor([e.ref_chosen for e in examples] + [e.ref_rejected for e in examples],
                                          dtype=torch.float64)
    return batch


def pair_loader(examples: list[PairExample], batch_size: int, pad_id: int, seed: int = 0, rank: int = 0,
                world_size: int = 1, full: bool = False) -> SFTLoader:
    """Endless, seeded, resumable batches of `batch_size` pairs (the SFT loader, pair-collated)."""
    if not examples:
        raise DataError("no training pairs")
    return SFTLoader(examples, batch_size, pad_id, seed=seed, rank=rank, world_size=world_size,
                     collate_fn=lambda picked: collate_pairs(picked, pad_id, full))


@dataclass
class PairValidation:
    """Held-out pairs for the Trainer's validation loss: ``batches(size, n)`` yields (batch, pairs)."""

    examples: list[PairExample]
    pad_id: int
    full: bool = False

    def __len__(self) -> int:
        return len(self.examples)

    def batches(self, size: int, n: int):
        for start in range(0, min(n, len(self.examples)), size):
            chunk = self.examples[start:min(n, start + size)]
            yield collate_pairs(chunk, self.pad_id, self.full), len(chunk)
