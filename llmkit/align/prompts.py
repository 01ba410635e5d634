"""Prompts for rollout methods (PPO, GRPO): JSONL rows of ``prompt`` (a string, or chat messages)
with an optional ``answer`` (what ``*-exact`` rewards compare with) and ``task`` (how to extract an
answer), or ``builtin[:arith,sorting]``: the generated tasks' questions with their answers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..data.instruct import builtin_tasks, is_builtin, read_jsonl

RL_PROMPT_TASKS = ("arith", "sorting")


@dataclass(frozen=True)
class Prompt:
    messages: tuple[tuple[str, str], ...]  # ((role, content), ...) ending with a user turn
    answer: str | None = None
    task: str | None = None

    @property
    def text(self) -> str:
        """The last user turn: what reward functions are shown as "the prompt"."""
        return next(c for r, c in reversed(self.messages) if r == "user")

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


def _row_to_prompt(row: Any) -> list[Prompt]:
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if "prompt" not in row:
        raise ValueError(f"field 'prompt' is missing (fields: {', '.join(row) or 'none'})")
    value = row["prompt"]
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("field 'prompt' is empty")
        messages = (("user", value),)
    elif isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        if any(m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str)
               for m in value):
            raise ValueError("every message of 'prompt' needs role system/user/assistant and string content")
        if value[-1]["role"] != "user":
            raise ValueError("the last message of 'prompt' must be the user's (the model answers it)")
        messages = tuple((m["role"], m["content"]) for m in value)
    else:
        raise ValueError("field 'prompt' must be a string or a non-empty list of {role, content} messages")
    answer = row.get("answer", row.get("reference"))
    if answer is not None and not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
        raise ValueError("field 'answer' must be a string or a number")
    task = row.get("task")
    if task is not None and not isinstance(task, str):
        raise ValueError("field 'task' must be a string")
    return [Prompt(messages, None if answer is None else str(answer), task)]


def builtin_prompts(split: str, tasks: Sequence[str], train_size: int | None = None) -> list[Prompt]:
    """The generated tasks' questions with their answers (train split: fresh ones with `train_size`)."""
    from ..data.build_tasks import fresh_train
    from ..data.tasks import load_task

    out = []
    for name in tasks:
        if split == "train" and train_size is not None:
            rows = [(r["prompt"], r["answer"]) for r in fresh_train(name, train_size)]
        else:
            rows = [(ex.prompt, ex.answer) for ex in load_task(name, split)]
        out += [Prompt((("user", p),), a, name) for p, a in rows]
    return out


def read_prompts(path: str, skip_bad_rows: bool = False, train_size: int | None = None) -> tuple[list[Prompt], int]:
    """(prompts, bad rows skipped) of a JSONL file, or of ``builtin[:arith,sorting]``."""
    if is_builtin(path):
        return builtin_prompts("train", builtin_prompt_tasks(path), train_size), 0
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"prompt file {p} does not exist (or use --prompts builtin:arith)")
    prompts, bad = read_jsonl(p, _row_to_prompt, skip_bad_rows, "prompts")
    return prompts, len(bad)


def builtin_prompt_tasks(spec: str) -> tuple[str, ...]:
    """The tasks of a ``builtin[:arith,sorting]`` prompt path."""
    return builtin_tasks(spec, RL_PROMPT_TASKS, "prompt")

