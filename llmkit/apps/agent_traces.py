"""Training traces for agents, written by code: ReAct trajectories and PAL programs that solve the
built-in arithmetic tasks, as chat conversations a fine-tuning job learns the formats from.

    records = agent_traces(tasks=("arith", "arith-small"), kinds=("react", "pal"))
    write_traces("runs/traces.jsonl", records)
    # llmkit finetune --config recipes/agents-lora.yaml --data runs/traces.jsonl

Each record is ``{"messages": [...], "meta": {"task", "id", "kind", "answer", "question"}}``; the
fine-tuning reader takes ``messages`` and ignores ``meta``. The messages are rendered by the very
functions the agents prompt with, so what is trained on is what inference sees:

- ``react``: `react_transcript` with the tools (calculator by default): a thought naming the
  operation, ``Action: calculator``, ``Action Input: {"expression": "17 * 8"}``, the calculator's real
  answer (`Tool.run`) as the observation, then ``Final Answer:``. `ReActAgent(llm,
  builtin_tools("calculator"))` asks with exactly that system message.
- ``pal``: `pal_messages(question, program)`: the assistant turn is the ```python block PAL's runner
  prefills with its opening fence and stops at the closing one.

Only train-split questions are used, and none whose text is also a held-out question (dev, test,
heldout) of any of the tasks asked for: arith-small's train split shares questions with arith's
test split, and a model tuned on them would be scored on what it saw. Thoughts and programs are
drawn from a few wordings (seeded), so that the model learns the format rather than one string.
"""

from __future__ import annotations

import json
import os
import random
import re
from typing import Any, Sequence

from ..data.tasks import held_out_splits, load_task
from ..utils import atomic_path
from .calculator import calculate
from .pal import extract_program, pal_messages, run_program
from .prompting import question_text
from .react_format import Step, react_transcript
from .toolbox import builtin_tools
from .tools import Tool

KINDS = ("react", "pal")

# the operator as a question writes it -> (Python's operator, the result's noun, the operation, the word read aloud)
OPERATIONS: dict[str, tuple[str, str, str, str]] = {
    "+": ("+", "sum", "addition", "plus"),
    "-": ("-", "difference", "subtraction", "minus"),
    "x": ("*", "product", "multiplication", "times"),
    "*": ("*", "product", "multiplication", "times"),
}
_QUESTION = re.compile(r"What is (\d+) ([+\-x*]) (\d+)\?")

# ReAct thoughts; the first is the system message's own worked example, word for word
THOUGHTS = (
    "I should compute {expr} with the calculator.",
    "This is {article} {operation}: I will use the calculator for {expr}.",
    "I need the {noun} of {a} and {b}, so I should use the calculator.",
    "To find the {noun}, I should compute {expr} with the calculator.",
    "The question asks for {a} {word} {b}; the calculator can compute {expr}.",
)

# PAL programs: each prints the value as its last (only) line
PROGRAMS = (
    "a = {a}\nb = {b}\nprint(a {op} b)",
    "{noun} = {a} {op} {b}\nprint({noun})",
    "x = {a}\ny = {b}\n{noun} = x {op} y\nprint({noun})",
    "answer = {a} {op} {b}\nprint(answer)",
)


class TraceError(ValueError):
    """A question the trace writer cannot solve, or a trace that disagrees with the gold answer."""


def parse_question(question: str) -> tuple[int, str, int]:
    """(a, operator, b) of an arithmetic question "What is a op b?" (op one of + - x *)."""
    m = _QUESTION.fullmatch(question.strip())
    if m is None:
        raise TraceError(f"question {question!r} is not of the form 'What is A OP B?' with OP one of + - x *: "
                         "agent_traces only writes traces for the arithmetic tasks (arith, arith-small)")
    return int(m.group(1)), m.group(2), int(m.group(3))


def expression(a: int, op: str, b: int) -> str:
    """The calculator's (and Python's) spelling of the question's arithmetic: ``x`` becomes ``*``."""
    return f"{a} {OPERATIONS[op][0]} {b}"


def react_record(question: str, gold: str, calculator: Tool, tools: Sequence[Tool], rng: random.Random) -> list[dict]:
    """The ReAct conversation solving `question`: one calculator call, its real observation, the answer."""
    a, op, b = parse_question(question)
    sym, noun, operation, word = OPERATIONS[op]
    expr = expression(a, op, b)
    thought = rng.choice(THOUGHTS).format(expr=expr, a=a, b=b, noun=noun, operation=operation, word=word,
                                          article="an" if operation[0] in "aeiou" else "a")
    args = {"expression": expr}
    observation = calculator.run(args)
    if observation != gold:  # the trace would teach a wrong answer: the task or the tool is broken
        raise TraceError(f"calculator({expr!r}) gave {observation!r} but the gold answer of {question!r} is "
                         f"{gold!r}: fix the task data or the calculator")
    return react_transcript(question, [Step(thought, calculator.name, args, observation)], observation, tools=tools)


def pal_program(question: str, rng: random.Random) -> str:
    """A short program that computes and prints the answer of `question` (a wording drawn by `rng`)."""
    a, op, b = parse_question(question)
    return rng.choice(PROGRAMS).format(a=a, b=b, op=OPERATIONS[op][0], noun=OPERATIONS[op][1])


def _held_out_questions(tasks: Sequence[str]) -> set[str]:
    """Every dev/test/heldout question of `tasks`: what no trace may contain."""
    return {question_text(ex) for task in tasks for split in held_out_splits(task) for ex in load_task(task, split)}


def agent_traces(tasks: Sequence[str] = ("arith", "arith-small"), split: str = "train",
                 kinds: Sequence[str] = KINDS, n: int | None = None, seed: int = 0,
                 tools: str | Sequence[Tool] = "calculator") -> list[dict[str, Any]]:
    """One record per question and kind (see the module docstring), over the `split` questions of
    `tasks` (at most `n` per task, drawn with `seed`; None: all), less any held-out question of
    `tasks` and any question met before. `tools` are the tools the ReAct system message lists (the
    agent's `tools`: builtin names or `Tool`s); they must include the calculator. Records come
    question by question, each question's kinds together."""
    kinds = list(kinds)
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"kinds: {kind!r} is not a trace kind: use {', '.join(KINDS)}")
    if not kinds or not tasks:
        raise ValueError(f"kinds={kinds} and tasks={list(tasks)} must each name at least one")
    if split != "train":  # traces are for training: a held-out split would leak into the tuned model
        raise ValueError(f"split={split!r}: traces are made from the train split only (split='train')")
    if n is not None and n < 1:
        raise ValueError(f"n={n} must be at least 1 (or None: every question)")
    tool_list = builtin_tools(tools) if isinstance(tools, str) else list(tools)
    calculator = next((t for t in tool_list if t.name == "calculator"), None)
    if calculator is None:
        raise ValueError(f"tools={[t.name for t in tool_list]} has no calculator, which the traces call: add it")
    rng = random.Random(seed)
    held_out, seen = _held_out_questions(tasks), set()
    records: list[dict[str, Any]] = []
    for task in tasks:
        examples = load_task(task, split)
        if n is not None and n < len(examples):
            examples = sorted(rng.sample(examples, n), key=lambda ex: ex.id)
        for ex in examples:
            question = question_text(ex)
            if question in held_out or question in seen:
                continue
            seen.add(question)
            for kind in kinds:
                if kind == "react":
                    messages = react_record(question, ex.answer, calculator, tool_list, rng)
                else:
                    messages = pal_messages(question, pal_program(question, rng))
                meta = {"task": task, "id": ex.id, "kind": kind, "answer": ex.answer, "question": question}
                records.append({"messages": messages, "meta": meta})
    check_answers(records)  # the PAL programs too are the question's arithmetic: they print the gold answer
    return records


def check_pal(records: Sequence[dict[str, Any]], k: int = 8, seed: int = 0) -> list[str]:
    """Run `k` of the PAL records' programs (drawn with `seed`) in the sandbox; the problems found
    (a program that fails, or prints something other than its gold answer), empty when all agree."""
    pals = [r for r in records if r["meta"]["kind"] == "pal"]
    problems = []
    for r in random.Random(seed).sample(pals, min(k, len(pals))):
        program = extract_program(r["messages"][-1]["content"])
        result = run_program(r["meta"]["question"], program)
        if result.answer != r["meta"]["answer"]:
            problems.append(f"{r['meta']['id']}: the program printed {result.answer!r} ({result.status}"
                            f"{': ' + result.error if result.error else ''}), the gold answer is {r['meta']['answer']!r}")
    return problems


def check_answers(records: Sequence[dict[str, Any]]) -> None:
    """Cheap consistency check of every record: the arithmetic of its question equals its gold answer."""
    for r in records:
        a, op, b = parse_question(r["meta"]["question"])
        if str(calculate(expression(a, op, b))) != r["meta"]["answer"]:
            raise TraceError(f"record {r['meta']['id']} ({r['meta']['kind']}): {r['meta']['question']!r} is not "
                             f"{r['meta']['answer']!r}")


def write_traces(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> int:
    """Write `records` as JSONL (one per line), atomically: a crash leaves the old file or none.
    Returns how many were written."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return len(records)
