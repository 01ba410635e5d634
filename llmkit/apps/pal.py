"""Program-aided language models (PAL, Gao et al., 2022): the model writes a Python program, the
sandbox runs it, and what it prints last is the answer — arithmetic done by Python, not by the model.

    result = pal(llm, "Olivia has $23 and buys five bagels at $3 each. How much is left?")
    result.status, result.answer    # "answered", "8"

The prompt (`pal_messages`) shows one or two solved questions as chat turns, each answer a
```python block that prints its result. The program is the first such block of the reply (or the
whole reply when it has none) and runs in the one sandbox (`llmkit.eval.sandbox.run_code`). The
status says how it went: "answered", "no_program" (nothing that looks like code), "syntax_error",
"error" (it raised; `error` holds the traceback's end), "timeout", "memory", "no_output" (it
printed nothing), "no_answer" (the `extract` rule found nothing in the output) or "model_error".

`pal_batch` asks many questions through `llmkit.apps.batching.complete_chats`: a local model
decodes them together in the inference engine, each assistant turn prefilled with the opening
fence (so that even a weak model starts with code) and stopped at the closing one; a server is
asked one question at a time, without the prefill (its reply is read as it comes).
"""

from __future__ import annotations

import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ..eval.harness import extract_answer
from ..eval.sandbox import run_code
from .batching import Reply, complete_chats, engine_capable
from .callbacks import Callbacks

log = logging.getLogger(__name__)

STATUSES = ("answered", "no_program", "syntax_error", "error", "timeout", "memory", "no_output", "no_answer",
            "model_error")
FENCE = "```python\n"
MAX_ERROR = 2_000  # characters of a failed program's stderr kept (its end: where the error is)

PAL_SYSTEM = ("Solve the question by writing a Python 3 program that computes the answer and prints it, on its "
              "own, as the last line. Reply with the program only, in one ```python block. The standard library "
              "is available; there is no network and no input().")

# (question, program): solved examples shown before the question
PAL_EXAMPLES: list[tuple[str, str]] = [
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "money_initial = 23\nbagels = 5\nbagel_cost = 3\nmoney_spent = bagels * bagel_cost\n"
     "answer = money_initial - money_spent\nprint(answer)"),
    ("How many days are there from 2024-01-15 to 2024-03-01?",
     "from datetime import date\n\nanswer = (date(2024, 3, 1) - date(2024, 1, 15)).days\nprint(answer)"),
]


@dataclass
class PALResult:
    """One question's outcome: the `answer` (None unless `status` is "answered"), the `program` run,
    what it printed (`output`), the model's reply as written (`text`), and `error` for any other
    status. Through `pal_batch` the tokens are the model call's (as the model counts them: 0 where it
    does not) and `seconds` its share of the batch's time plus the program's."""

    question: str
    answer: str | None
    program: str
    output: str
    status: str
    text: str = ""
    error: str | None = None
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "answered"


def _fenced(program: str) -> str:
    return f"{FENCE}{program.strip()}\n```"


def pal_messages(question: str, program: str | None = None, system: str | None = None,
                 examples: Sequence[tuple[str, str]] = tuple(PAL_EXAMPLES)) -> list[dict[str, Any]]:
    """The chat messages PAL asks `question` with (a system message, `examples` as user/assistant
    turns, the question); with `program`, the answer turn too, as a fine-tuning example."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system or PAL_SYSTEM}]
    for q, code in examples:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": _fenced(code)}]
    messages.append({"role": "user", "content": question})
    if program is not None:
        messages.append({"role": "assistant", "content": _fenced(program)})
    return messages


_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S | re.I)


def extract_program(text: str) -> str:
    """The program in a reply: the first ```python (or bare ```) block, closed or not; else the
    whole reply less any stray fence markers."""
    m = _BLOCK.search(text)
    code = m.group(1) if m else text.replace("```", "")
    return code.strip("\n").rstrip()


def run_program(question: str, program: str, timeout: float = 10.0, memory_mb: int = 512,
                extract: str = "last_line", text: str = "") -> PALResult:
    """Run `program` in the sandbox and read the answer off its output: its last non-empty line
    (`extract="last_line"`), or any rule of `llmkit.eval.harness.extract_answer` ("last_number",
    "regex:..."). A program that does not compile is not run."""
    start = time.perf_counter()

    def done(status: str, output: str = "", answer: str | None = None, error: str | None = None) -> PALResult:
        return PALResult(question, answer, program, output, status, text, error, round(time.perf_counter() - start, 4))

    if not program.strip():
        return done("no_program", error="the reply holds no program")
    try:
        compile(program, "<pal>", "exec")
    except (SyntaxError, ValueError) as e:  # ValueError: a NUL byte in the source
        where = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
        return done("syntax_error", error=f"the program does not compile{where}: {getattr(e, 'msg', e)}")
    result = run_code(program, timeout=timeout, memory_mb=memory_mb)
    output, stderr = result.stdout, result.stderr.strip()[-MAX_ERROR:]
    if result.status == "timeout":
        return done("timeout", output, error=f"the program was stopped at the time limit (timeout={timeout:g} s)")
    if result.status == "memory":
        return done("memory", output, error=f"the program ran out of memory (memory_mb={memory_mb})")
    if result.status != "passed":
        return done("error", output, error=f"the program failed (exit status {result.returncode})"
                                           + (f":\n{stderr}" if stderr else ""))
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        return done("no_output", output, error="the program printed nothing: the answer must be printed")
    answer = lines[-1] if extract == "last_line" else extract_answer(output, extract)
    if answer is None:
        return done("no_answer", output, error=f"extract={extract!r} found no answer in the output")
    return done("answered", output, answer)


def pal(llm: Any, question: str, timeout: float = 10.0, callbacks: Iterable[Callable] | Callbacks | None = None,
        max_new_tokens: int = 384, temperature: float = 0.0, memory_mb: int = 512, extract: str = "last_line",
        system: str | None = None) -> PALResult:
    """Answer `question` with a program the model writes and the sandbox runs (see the module
    docstring); never raises for what the model or the program does (see `PALResult.status`)."""
    return pal_batch(llm, [question], timeout=timeout, callbacks=callbacks, max_new_tokens=max_new_tokens,
                     temperature=temperature, memory_mb=memory_mb, extract=extract, system=system)[0]


def pal_batch(llm: Any, questions: Sequence[str], timeout: float = 10.0,
              callbacks: Iterable[Callable] | Callbacks | None = None, max_new_tokens: int = 384,
              temperature: float = 0.0, memory_mb: int = 512, extract: str = "last_line", system: str | None = None,
              workers: int = 4, batch_size: int = 16, progress: bool = False) -> list[PALResult]:
    """`pal` for many questions, in order: the programs are written through `complete_chats`
    (see the module docstring; `batch_size` requests decode together), then run in the sandbox,
    `workers` at a time. A question whose model call fails is "model_error"; the others go on.
    Events: a ``model`` event per question, a ``tool`` event ("sandbox") and a ``step`` event
    ("pal") per question."""
    cb = Callbacks(callbacks)
    start = time.perf_counter()
    texts, replies = _generate(llm, list(questions), cb, max_new_tokens, temperature, system, batch_size, progress)
    programs = [extract_program(t) for t in texts]
    errors = [r.error for r in replies]

    def run_one(i: int) -> PALResult:
        if errors[i] is not None:
            return PALResult(questions[i], None, "", "", "model_error", error=f"the model failed: {errors[i]}")
        result = run_program(questions[i], programs[i], timeout, memory_mb, extract, texts[i])
        cb.emit("tool", "sandbox", arguments={"program": programs[i]}, observation=result.output,
                ok=result.status == "answered", status=result.status, seconds=result.seconds)
        return result

    def counted(result: PALResult, reply: Reply) -> PALResult:
        result.prompt_tokens, result.completion_tokens = reply.prompt_tokens or 0, reply.completion_tokens or 0
        result.seconds = round(result.seconds + reply.seconds, 4)
        return result

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(questions)))) as pool:
        results = [counted(r, reply) for r, reply in zip(pool.map(run_one, range(len(questions))), replies)]
    failed = [e for e in errors if e is not None]
    if failed:
        log.warning("PAL: the model failed on %d of %d question(s): %s", len(failed), len(questions), failed[0])
    for i, result in enumerate(results):
        cb.emit("step", "pal", index=i, question=result.question, program=result.program, output=result.output,
                answer=result.answer, status=result.status, error=result.error)
    log.info("PAL: %d question(s) in %.1f s", len(questions), time.perf_counter() - start)
    return results


def _generate(llm: Any, questions: list[str], cb: Callbacks, max_new_tokens: int, temperature: float,
              system: str | None, batch_size: int, progress: bool) -> tuple[list[str], list[Reply]]:
    """Each question's text (the reply with the opening fence in front where it was prefilled, and
    the closing fence after it) and its `Reply` (tokens, seconds, error)."""
    prefilled = engine_capable(llm)
    # the closing fence ends a prefilled program; an unprefilled reply opens with a fence, so no stop there
    replies = complete_chats(llm, [pal_messages(q, system=system) for q in questions], batch_size=batch_size,
                             callbacks=cb, progress=progress, desc="pal", prefill=FENCE if prefilled else None,
                             errors="return", max_new_tokens=max_new_tokens, temperature=temperature,
                             **({"stop": ["```"]} if prefilled else {}))
    texts = [r.prefill + r.text.rstrip() + "\n```" if r.prefill else r.text for r in replies]
    return texts, replies
