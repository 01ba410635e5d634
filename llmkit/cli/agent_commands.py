"""`llmkit agent`: answer a question with a ReAct agent and the built-in tools (or with PAL: a program
the model writes and the sandbox runs), printing each step as it happens."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

from .commands import add_model_arg, load_llm, positive_int

MAX_SHOWN = 600  # characters of an observation or a program's output printed per step


def add_agent_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Answer QUESTION with a ReAct agent: the model thinks, calls one of --tools, reads the result, and "
        "repeats until it gives a final answer. Each step (Thought / Action / Observation) is printed to stderr as "
        "it happens and the answer to stdout; the exit status is 0 when the model answered, 1 when it did not "
        "(step limit, token budget, a loop of the same call, or a model error: the reason is printed). "
        "--mode text prompts the classic Thought/Action/Action Input/Observation format (any chat model); "
        "--mode native uses the model's function calling. With --pal the model instead writes a Python program "
        "that the sandbox runs; its last printed line is the answer. --model may be an http(s)://…/v1 server "
        "(with --api-key). Example: llmkit agent -m smollm2-135m-instruct --tools datetime --mode native "
        "--tool-choice required \"How many days are there between 2024-02-03 and 2024-11-23?\"")
    add_model_arg(p)
    p.add_argument("question", help="the question to answer ('-' reads standard input)")
    p.add_argument("--tools", default="calculator,python,datetime,stdlib-docs", metavar="NAMES",
                   help="built-in tools, comma-separated (default: calculator,python,datetime,stdlib-docs; "
                        "`llmkit tools list` shows them)")
    p.add_argument("--mode", choices=["text", "native"], default="text",
                   help="text: the ReAct text format (default); native: the model's own function calling")
    p.add_argument("--max-steps", type=positive_int, default=8, help="steps before giving up (default 8)")
    p.add_argument("--max-tokens", type=positive_int, default=32_000,
                   help="token budget of the whole run: every step's prompt and completion (default 32000)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="tokens each step may generate (default 256; --pal: the program, default 384)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--tool-choice", choices=["auto", "required"], default="auto",
                   help="native mode: required makes the model call a tool before it may answer (default auto)")
    p.add_argument("--system", default=None,
                   help="instructions put at the top of the system message, instead of the default ones")
    p.add_argument("--trace", default=None, metavar="FILE.jsonl",
                   help="append every model call, tool call and step to this file as JSON lines")
    p.add_argument("--pal", action="store_true",
                   help="answer with a program instead (program-aided: the model writes Python, the sandbox runs it)")
    p.add_argument("--timeout", type=float, default=10.0, help="--pal: seconds the program may run (default 10)")


class _Printer:
    """Prints an agent's steps as their events come, dim where the stream is a terminal."""

    def __init__(self, out: TextIO):
        self.out = out
        self.on = out.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"

    def line(self, label: str, text: str, limit: int | None = MAX_SHOWN) -> None:
        if limit is not None and len(text) > limit:
            text = f"{text[:limit]} ... ({len(text)} characters)"
        body = f"{label}: {text}"
        self.out.write((f"\033[2m{body}\033[0m" if self.on else body) + "\n")
        self.out.flush()

    def __call__(self, event: Any) -> None:
        if event.kind != "step" or event.name == "pal":
            return
        step = event.data
        if step.get("thought"):
            self.line("Thought", step["thought"])
        if step.get("action") is not None:
            given = step.get("action_input")
            self.line("Action", f"{step['action']} {given if isinstance(given, str) else json.dumps(given)}")
        elif step.get("answer") is None and step.get("text"):
            self.line("Reply", step["text"])
        if step.get("observation") is not None:
            self.line("Observation", step["observation"])


def run_agent(args: argparse.Namespace) -> int:
    from ..apps.toolbox import builtin_tools

    question = sys.stdin.read() if args.question == "-" else args.question
    if not question.strip():
        raise ValueError("the question is empty: give the question to answer")
    tools = [] if args.pal else builtin_tools(args.tools)  # an unknown tool fails before the model loads
    llm = load_llm(args)
    printer = _Printer(sys.stderr)
    if args.pal:
        return _run_pal(llm, question, args, printer)
    from ..apps.agents import ReActAgent

    agent = ReActAgent(llm, tools, mode=args.mode, max_steps=args.max_steps, max_tokens=args.max_tokens,
                       max_new_tokens=args.max_new_tokens or 256, temperature=args.temperature, system=args.system,
                       callbacks=[printer], trace=args.trace, tool_choice=args.tool_choice)
    result = agent.run(question)
    if result.status == "answered":
        print(result.answer)
        return 0
    print(f"llmkit agent: no answer ({result.status}): {result.error}", file=sys.stderr)
    return 1


def _run_pal(llm: Any, question: str, args: argparse.Namespace, printer: _Printer) -> int:
    from ..apps.callbacks import JsonlTrace
    from ..apps.pal import pal

    trace = JsonlTrace(args.trace) if args.trace else None
    try:
        result = pal(llm, question, timeout=args.timeout, callbacks=[trace] if trace else None,
                     max_new_tokens=args.max_new_tokens or 384, temperature=args.temperature, system=args.system)
    finally:
        if trace:
            trace.close()
    if result.program:
        printer.line("Program", "\n" + result.program, limit=None)
    if result.output:
        printer.line("Output", result.output.rstrip("\n"))
    if result.status == "answered":
        print(result.answer)
        return 0
    print(f"llmkit agent: no answer ({result.status}): {result.error}", file=sys.stderr)
    return 1
