"""LLM-as-judge: pairwise comparison with position swapping, and rubric scoring.

The judge is any `LLM` (a local model or a `RemoteLLM` at an OpenAI-compatible URL). Each pair
is judged twice, once in each order: judges favour a position, and a verdict that flips with the
order is a tie. A reply that names no verdict is asked once more with a reminder; if it still
names none, the pair is counted as invalid and left out of the win rate.

    result = pairwise(judge, prompts, answers_a, answers_b)
    result.win_rate_b, result.ci, result.invalid      # B's win rate, its interval, unparseable verdicts

    run = judge_models("runs/sft", "runs/dpo", "prompts.jsonl", judge="http://host/v1")   # `llmkit judge`
    text = run.format(); run.write("runs/judged")       # the table `llmkit judge` prints
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..data.jsonl import read_jsonl
from .metrics import bootstrap_ci

PAIRWISE_PROMPT = """Please act as an impartial judge and compare two answers to the user's question. \
Judge helpfulness, correctness and clarity; ignore the order of the answers and their length.

[Question]
{prompt}

[Answer A]
{first}

[Answer B]
{second}

Reply with only one verdict: "A" if answer A is better, "B" if answer B is better, or "tie"."""

RUBRIC_PROMPT = """Please act as an impartial judge and rate the answer to the user's question \
on a scale from {low} to {high} following this rubric: {rubric}

[Question]
{prompt}

[Answer]
{answer}

Reply with only the score, a whole number from {low} to {high}."""

DEFAULT_RUBRIC = "helpful, correct, clear and concise answers score high; wrong or evasive ones score low."
REMINDER = "\n\nYour reply must be exactly one of: A, B, tie."

# capital A/B only (the article "a" is not a verdict); tie in any case
_VERDICT = re.compile(r"\[\[(A|B|[Tt]ie)\]\]|\b(A|B|[Tt]ie|TIE)\b")


def parse_verdict(text: str) -> str | None:
    """"A", "B" or "tie" from a judge's reply ("[[A]]", "A", "Answer B is better", "Tie."), or
    None when the reply names no verdict or names both A and B."""
    found = {(m.group(1) or m.group(2)).lower() for m in _VERDICT.finditer(text.strip().split("\n")[0])}
    if not found:
        found = {(m.group(1) or m.group(2)).lower() for m in _VERDICT.finditer(text)}
    if len(found) != 1:
        return None
    verdict = found.pop()
    return "tie" if verdict == "tie" else verdict.upper()


def parse_score(text: str, low: int, high: int) -> int | None:
    m = re.search(r"-?\d+", text)
    if m is None:
        return None
    value = int(m.group(0))
    return value if low <= value <= high else None


def reply(llm: Any, conversation: list[dict], max_new_tokens: int, plain_suffix: str = "") -> str:
    """One greedy reply: through the chat template when the model has one (remote models always
    do), else a plain completion of the last turn's text (plus `plain_suffix`): a base model."""
    tokenizer = getattr(llm, "tokenizer", None)
    if tokenizer is not None and not getattr(tokenizer, "chat_templates", None):
        return llm.generate(conversation[-1]["content"] + plain_suffix, max_new_tokens=max_new_tokens, temperature=0,
                            truncate_prompt=True)
    return llm.chat(conversation, max_new_tokens=max_new_tokens, temperature=0)


def ask(llm: Any, text: str, max_new_tokens: int = 16) -> str:
    """The judge's greedy reply to `text` (a base model is cued with "Verdict:")."""
    return reply(llm, [{"role": "user", "content": text}], max_new_tokens, plain_suffix="\nVerdict:")


@dataclass
class Judgment:
    prompt: str
    a: str
    b: str
    verdicts: list[str | None]  # per order, in terms of a/b: "a", "b", "tie" or None (garbage twice)
    winner: str | None  # "a", "b", "tie", or None when invalid
    replies: list[str] = field(default_factory=list)
    retries: int = 0


@dataclass
class PairwiseResult:
    judgments: list[Judgment]
    wins_a: int
    wins_b: int
    ties: int
    invalid: int
    win_rate_b: float  # (wins of b + ties / 2) / valid pairs
    ci: tuple[float, float]  # bootstrap 95% interval of win_rate_b

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "judgments"}


def _verdict(judge: Any, text: str, max_new_tokens: int) -> tuple[str | None, list[str], int]:
    replies = [ask(judge, text, max_new_tokens)]
    verdict = parse_verdict(replies[0])
    if verdict is None:  # one retry with a reminder
        replies.append(ask(judge, text + REMINDER, max_new_tokens))
        verdict = parse_verdict(replies[1])
    return verdict, replies, len(replies) - 1


def judge_pair(judge: Any, prompt: str, a: str, b: str, swap: bool = True, max_new_tokens: int = 16) -> Judgment:
    """Judge answer `a` against `b`, in both orders when `swap`. Each order gives b a point of
    1 (b better), 1/2 (tie) or 0; the mean decides: an order-dependent verdict becomes a tie."""
    orders = [(a, b, {"A": "a", "B": "b"})] + ([(b, a, {"A": "b", "B": "a"})] if swap else [])
    verdicts, replies, retries = [], [], 0
    for first, second, mapping in orders:
        v, r, n = _verdict(judge, PAIRWISE_PROMPT.format(prompt=prompt, first=first, second=second), max_new_tokens)
        verdicts.append(None if v is None else mapping.get(v, "tie"))
        replies += r
        retries += n
    if any(v is None for v in verdicts):
        winner = None
    else:
        points = sum({"a": 0.0, "tie": 0.5, "b": 1.0}[v] for v in verdicts) / len(verdicts)
        winner = "b" if points > 0.5 else "a" if points < 0.5 else "tie"
    return Judgment(prompt, a, b, verdicts, winner, replies, retries)


def pairwise(judge: Any, prompts: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str],
             swap: bool = True, max_new_tokens: int = 16, seed: int = 0, progress: bool = False) -> PairwiseResult:
    """Win rate of the b answers over the a answers, with ties as half a win, and its interval."""
    from tqdm.auto import tqdm

    if not len(prompts) == len(answers_a) == len(answers_b):
        raise ValueError(f"need one answer of each model per prompt: {len(prompts)} prompts, "
                         f"{len(answers_a)} answers a, {len(answers_b)} answers b")
    judgments = [judge_pair(judge, p, a, b, swap, max_new_tokens)
                 for p, a, b in tqdm(list(zip(prompts, answers_a, answers_b)), desc="judging", disable=not progress)]
    points = [{"a": 0.0, "tie": 0.5, "b": 1.0}[j.winner] for j in judgments if j.winner is not None]
    wins = {w: sum(j.winner == w for j in judgments) for w in ("a", "b", "tie")}
    rate = sum(points) / len(points) if points else float("nan")
    return PairwiseResult(judgments, wins["a"], wins["b"], wins["tie"], len(judgments) - len(points), rate,
                          bootstrap_ci(points, seed=seed))


@dataclass
class RubricResult:
    scores: list[int | None]
    mean: float
    ci: tuple[float, float]
    invalid: int
    replies: list[list[str]]


def rubric_scores(judge: Any, prompts: Sequence[str], answers: Sequence[str], rubric: str = DEFAULT_RUBRIC,
                  low: int = 1, high: int = 10, max_new_tokens: int = 8, seed: int = 0) -> RubricResult:
    """Score each answer on [low, high] by the rubric; garbage is retried once, then counted."""
    if len(prompts) != len(answers):
        raise ValueError(f"need one answer per prompt: {len(prompts)} prompts, {len(answers)} answers")
    scores, replies = [], []
    for prompt, answer in zip(prompts, answers):
        text = RUBRIC_PROMPT.format(prompt=prompt, answer=answer, rubric=rubric, low=low, high=high)
        got = [ask(judge, text, max_new_tokens)]
        score = parse_score(got[0], low, high)
        if score is None:
            got.append(ask(judge, text + f"\n\nReply with a single whole number from {low} to {high}.", max_new_tokens))
            score = parse_score(got[1], low, high)
        scores.append(score)
        replies.append(got)
    valid = [s for s in scores if s is not None]
    mean = sum(valid) / len(valid) if valid else float("nan")
    return RubricResult(scores, mean, bootstrap_ci(valid, seed=seed), len(scores) - len(valid), replies)


# ------------------------------------------------------------------- two models, one judge (`llmkit judge`)
def read_judge_prompts(path: str | Path) -> list[list[dict]]:
    """Conversations (lists of messages) from a JSONL file of {"prompt"} or {"messages"} rows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--prompts {path} does not exist")
    rows, _ = read_jsonl(path, _conversation, what="prompts", fix="Fix them: each row is {\"prompt\": \"...\"} "
                         "or {\"messages\": [{\"role\": ..., \"content\": ...}]}")
    return rows


def _conversation(row: Any) -> list[list[dict]]:
    if isinstance(row, dict) and isinstance(row.get("prompt"), str):
        return [[{"role": "user", "content": row["prompt"]}]]
    if isinstance(row, dict) and isinstance(row.get("messages"), list) and row["messages"] and all(
            isinstance(m, dict) and "role" in m and "content" in m for m in row["messages"]):
        return [row["messages"]]
    raise ValueError(f"expected a 'prompt' string or a 'messages' list of {{role, content}}, got {str(row)[:80]!r}")


@dataclass
class JudgeRun:
    """Two models' greedy answers to the same prompts, judged pairwise (and by rubric when asked)."""

    a: str
    b: str
    judge: str
    swap: bool
    prompts: list[str]
    result: PairwiseResult
    rubric: dict[str, RubricResult] = field(default_factory=dict)  # "a", "b" when a rubric was given

    def summary(self) -> dict[str, Any]:
        out = {"a": self.a, "b": self.b, "judge": self.judge, "swap": self.swap, **self.result.summary()}
        for side, r in self.rubric.items():
            out[f"rubric_{side}"] = {"mean": r.mean, "ci": list(r.ci), "invalid": r.invalid, "scores": r.scores}
        return out

    def format(self) -> str:
        r, (lo, hi) = self.result, self.result.ci
        lines = [f"B ({self.b}) vs A ({self.a}) on {len(self.prompts)} prompts, judged by {self.judge}:",
                 f"  B wins {r.wins_b}, A wins {r.wins_a}, ties {r.ties}, invalid {r.invalid}",
                 f"  win rate of B: {r.win_rate_b:.3f} (95% CI {lo:.3f}–{hi:.3f}; ties count half)"]
        if r.invalid:
            lines.append(f"  note: the judge gave no usable verdict for {r.invalid} pairs, even after a retry; "
                         "they are left out")
        for side, s in self.rubric.items():
            lines.append(f"  rubric score {side.upper()}: {s.mean:.2f} (95% CI {s.ci[0]:.2f}–{s.ci[1]:.2f}, "
                         f"invalid {s.invalid})")
        return "\n".join(lines)

    def write(self, out: str | Path) -> tuple[Path, Path]:
        """`out`/summary.json and `out`/judgments.jsonl (every pair: answers, verdicts, the judge's replies)."""
        from ..utils import write_json_atomic, write_text_atomic

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "summary.json", self.summary())
        write_text_atomic(out / "judgments.jsonl", "".join(
            json.dumps({"prompt": j.prompt, "a": j.a, "b": j.b, "verdicts": j.verdicts, "winner": j.winner,
                        "replies": j.replies}, ensure_ascii=False) + "\n" for j in self.result.judgments))
        return out / "summary.json", out / "judgments.jsonl"


def judge_models(a: str, b: str, prompts: str | Path, judge: str, api_key: str | None = None,
                 device: str | None = None, max_new_tokens: int = 128, swap: bool = True,
                 rubric: str | None = None, progress: bool = False) -> JudgeRun:
    """Model `b` against model `a` (any model names `llmkit.load` takes, URLs included) on the
    prompts of a JSONL file: each answers greedily, `judge` compares the pairs in both orders
    (unless not `swap`), and scores each side by `rubric` when given. One model is loaded at a time."""
    from ..infer.llm import load
    from ..utils import default_device

    conversations = read_judge_prompts(prompts)
    device = device or default_device()

    def answers(name: str) -> list[str]:
        llm = load(name, device=device, api_key=api_key)
        return [reply(llm, c, max_new_tokens) for c in conversations]

    answers_a, answers_b = answers(a), answers(b)
    judge_llm = load(judge, device=device, api_key=api_key)
    texts = [c[-1]["content"] for c in conversations]
    result = pairwise(judge_llm, texts, answers_a, answers_b, swap=swap, progress=progress)
    scored = {side: rubric_scores(judge_llm, texts, answers, rubric)
              for side, answers in (("a", answers_a), ("b", answers_b))} if rubric else {}
    return JudgeRun(a, b, judge, swap, texts, result, scored)
