"""AI feedback (RLAIF): a judge model labels pairs of the policy's own answers, and the result is
preference JSONL that `llmkit align dpo` and `llmkit align reward` take. The judge may also be a
reward (a checker such as ``arith-exact``, ``module:function`` or a reward model): then each
prompt gets several samples and the best-scored is chosen over the worst.

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
from .prompts import Prompt

log = logging.getLogger(__name__)


@dataclass
class LabelStats:
    prompts: int = 0
    pairs: int = 0  # written
    identical: int = 0  # both samples the same text
    ties: int = 0
    invalid: int = 0  # the judge named no verdict, even after a retry
    empty: int = 0  # an answer was empty (preference files need text on both sides)
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
        if not a.strip() or not b.strip():
            stats.empty += 1
            continue
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


def label_with_reward(policy: Any, reward_fn: Any, prompts: Sequence[Prompt], samples: int = 4,
                      max_new_tokens: int = 64, temperature: float = 1.0, seed: int = 0, batch_size: int = 64,
                      progress: bool = False) -> LabelStats:
    """Preference rows from a reward (a checker such as arith-exact, or a reward model): `samples`
    answers per prompt, the best-scored one chosen over the worst when their scores differ (on
    verifiable tasks: a right answer over a wrong one of the model's own, as iterative RPO does).
    Prompts whose answers all score the same are counted as ties."""
    from tqdm.auto import tqdm

    from .rewards import call_reward

    if samples < 2:
        raise ValueError(f"samples={samples}: a pair needs at least 2 answers per prompt")
    stats = LabelStats(prompts=len(prompts))
    per = max(1, batch_size // samples)
    for start in tqdm(range(0, len(prompts), per), desc="labelling", disable=not progress):
        chunk = list(prompts[start:start + per])
        ids = [policy.chat_prompt(p.as_messages()) for p in chunk for _ in range(samples)]
        texts = [c.text for c in policy.complete(ids, max_new_tokens=max_new_tokens, temperature=temperature,
                                                  seed=seed + start)]
        rep = [p for p in chunk for _ in range(samples)]
        scores = call_reward(reward_fn, [p.text for p in rep], texts, [p.answer for p in rep])
        for i, p in enumerate(chunk):
            group = [(sc, t) for sc, t in zip(scores[i * samples:(i + 1) * samples], texts[i * samples:(i + 1) * samples])
                     if sc == sc and t.strip()]  # NaN scores and empty answers left out
            if len(group) < samples and len({t.strip() for _, t in group}) < 2:
                stats.empty += 1
                continue
            if len({t.strip() for _, t in group}) < 2:
                stats.identical += 1
                continue
            best, worst = max(group, key=lambda x: x[0]), min(group, key=lambda x: x[0])
            if best[0] == worst[0]:
                stats.ties += 1
                continue
            prompt = p.text if len(p.messages) == 1 else p.as_messages()
            stats.rows.append({"prompt": prompt, "chosen": best[1], "rejected": worst[1],
                               "scores": [best[0], worst[0]]})
    stats.pairs = len(stats.rows)
    return stats


def is_reward_judge(judge: str) -> bool:
    """Whether --judge names a reward (a built-in checker, module:function, or a reward-model
    directory) rather than a judge model."""
    from .rewards import builtin_reward

    if judge.startswith(("http://", "https://")):
        return False
    if Path(judge).expanduser().is_dir():
        d = Path(judge).expanduser()
        cfg = (d / "model" / "config.json") if (d / "model" / "config.json").is_file() else d / "config.json"
        return cfg.is_file() and "ForSequenceClassification" in cfg.read_text()
    try:
        return builtin_reward(judge.split("*")[0].split("+")[0].strip()) is not None or ":" in judge
    except ValueError:
        return True


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
          device: str | None = None, api_key: str | None = None, progress: bool = False, samples: int = 4,
          train_size: int | None = None) -> LabelStats:
    """The whole job: load the policy and the judge, label, write `out` (and `out`.summary.json).
    `judge` is a judge model (pairwise verdicts, both orders) or a reward (`is_reward_judge`:
    best of `samples` answers over the worst). `train_size`: fresh builtin prompts."""
    from ..infer.llm import load
    from ..utils import default_device, write_json_atomic
    from .prompts import read_prompts

    out = Path(out)
    if out.exists() and out.is_dir():
        raise IsADirectoryError(f"--out {out} is a directory: give the preference JSONL file to write")
    rows, _ = read_prompts(prompts, train_size=train_size)
    if limit is not None:
        rows = rows[:limit]
    device = device or default_device()
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: greedy answers are all the same; sample (temperature 1)")
    policy = load(model, device=device, api_key=api_key)
    if is_reward_judge(judge):
        from .rewards import parse_reward

        if not hasattr(policy, "complete"):
            raise ValueError("labelling with a reward samples answers in batches: --model must be a local model")
        stats = label_with_reward(policy, parse_reward(judge, device=device), rows, samples, max_new_tokens,
                                  temperature, seed, progress=progress)
    else:
        judge_llm = load(judge, device=device, api_key=api_key)
        stats = label_preferences(policy, judge_llm, rows, max_new_tokens, temperature, seed, swap, progress=progress)
    if not stats.rows:
        raise ValueError(f"no pair was labelled: of {stats.prompts} prompts {stats.identical} gave identical samples, "
                         f"{stats.empty} empty answers, "
                         f"{stats.ties} ties, {stats.invalid} with no verdict from the judge; try more prompts, a "
                         "higher temperature, or a stronger judge")
    write_preferences(stats.rows, out)
    write_json_atomic(out.with_name(out.name + ".summary.json"), {"model": model, "judge": judge, "prompts": prompts,
                                                                  "swap": swap, **stats.summary()})
    return stats
