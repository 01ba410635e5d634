"""AI feedback (RLAIF): a judge model labels pairs of the policy's own answers, and the result is
preference JSONL that `llmkit align dpo` and `llmkit align reward` take.

    llmkit align label --model runs/sft --judge runs/big --prompts prompts.jsonl --out prefs.jsonl
    llmkit align label --model runs/sft --judge http://host:8000/v1 --prompts builtin:arith --out prefs.jsonl

For each prompt the model samples two answers (temperature 1 by default, seeded); when they are
the same text there is nothing to compare (counted). The judge (any `LLM`: a local model or an
OpenAI-compatible URL) sees the pair in both orders (`llmkit.eval.judge.judge_pair`): a verdict
that flips with the order is a tie, and ties and replies with no verdict are counted and left out.
Each kept row is ``{"prompt", "chosen", "rejected", "verdicts"}``; the file is written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..utils import atomic_path
from .rl import Prompt

log = logging.getLogger(__name__)


@dataclass
class LabelStats:
    prompts: int = 0
    pairs: int = 0  # written
    identical: int = 0  # both samples the same text
    ties: int = 0
    invalid: int = 0  # the judge named no verdict, even after a retry
    first_position_wins: int = 0  # of the single-order verdicts, how many favoured the answer shown first
    verdicts: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "rows"}


def _sample(llm: Any, prompt: Prompt, n: int, max_new_tokens: int, temperature: float, seed: int) -> list[str]:
    msgs = prompt.as_messages()
    return [llm.chat(msgs, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + k) for k in range(n)]


def label_preferences(policy: Any, judge: Any, prompts: Sequence[Prompt], max_new_tokens: int = 64,
                      temperature: float = 1.0, seed: int = 0, swap: bool = True, judge_tokens: int = 16,
                      progress: bool = False) -> LabelStats:
    """Preference rows from `judge`'s verdicts on pairs of `policy`'s sampled answers."""
    from tqdm.auto import tqdm

    from ..eval.judge import judge_pair

    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: two greedy answers are the same; sample (temperature 1)")
    stats = LabelStats(prompts=len(prompts))
    for i, p in enumerate(tqdm(prompts, desc="labelling", disable=not progress)):
        a, b = _sample(policy, p, 2, max_new_tokens, temperature, seed + 2 * i)
        if a.strip() == b.strip():
            stats.identical += 1
            continue
        j = judge_pair(judge, p.text, a, b, swap=swap, max_new_tokens=judge_tokens)
        for k, v in enumerate(j.verdicts):  # order k=0 shows a first, k=1 shows b first
            if v in ("a", "b"):
                stats.verdicts += 1
                stats.first_position_wins += (v == "a") == (k == 0)
        if j.winner is None:
            stats.invalid += 1
        elif j.winner == "tie":
            stats.ties += 1
        else:
            chosen, rejected = (a, b) if j.winner == "a" else (b, a)
            prompt = p.text if len(p.messages) == 1 else p.as_messages()
            stats.rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "verdicts": j.verdicts})
    stats.pairs = len(stats.rows)
    return stats


def write_preferences(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def label(model: str, judge: str, prompts: str, out: str | os.PathLike, limit: int | None = None,
          max_new_tokens: int = 64, temperature: float = 1.0, seed: int = 0, swap: bool = True,
          device: str | None = None, api_key: str | None = None, progress: bool = False) -> LabelStats:
    """The whole job: load the policy and the judge, label, write `out` (and `out`.summary.json)."""
    from ..infer.llm import load
    from ..utils import default_device, write_json_atomic
    from .rl import read_prompts

    out = Path(out)
    if out.exists() and out.is_dir():
        raise IsADirectoryError(f"--out {out} is a directory: give the preference JSONL file to write")
    rows, _ = read_prompts(prompts)
    if limit is not None:
        rows = rows[:limit]
    device = device or default_device()
    policy = load(model, device=device, api_key=api_key)
    judge_llm = load(judge, device=device, api_key=api_key)
    stats = label_preferences(policy, judge_llm, rows, max_new_tokens, temperature, seed, swap, progress=progress)
    if not stats.rows:
        raise ValueError(f"no pair was labelled: of {stats.prompts} prompts {stats.identical} gave identical samples, "
                         f"{stats.ties} ties, {stats.invalid} with no verdict from the judge; try more prompts, a "
                         "higher temperature, or a stronger judge")
    write_preferences(stats.rows, out)
    write_json_atomic(out.with_name(out.name + ".summary.json"), {"model": model, "judge": judge, "prompts": prompts,
                                                                  "swap": swap, **stats.summary()})
    return stats
