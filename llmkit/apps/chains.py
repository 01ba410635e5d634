"""A `Chain` of steps: each renders a prompt from what came before, asks a model, parses the reply
and hands the parsed value to the next step. A step whose parser refuses the reply is asked again
(with the refusal shown to the model) up to its `retries`; every attempt lands in the trace.

    chain = Chain([
        Step("facts", "List three facts about {{ topic }}, one per line.", parser=lines),
        Step("title", "Write a title for these facts: {{ facts | join('; ') }}", max_new_tokens=16),
    ], llm)
    result = chain.run(topic="octopuses")
    result.outputs["title"], result.status        # "...", "ok"

A step may also be a plain function of the state (`Step("count", fn=lambda s: len(s["facts"]))`).
A chain never raises for what goes wrong inside it (a missing template variable, a reply no
parser accepts, a model that is down): `run` returns status "failed" with the step and the error.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .callbacks import Callbacks, JsonlTrace, chat_call
from .prompts import Prompt

Parser = Callable[[str], Any]


class ParseError(ValueError):
    """A parser's refusal of a reply; its message is shown to the model when the step retries."""


@dataclass
class Step:
    """One step: `prompt` (a `Prompt` or a Jinja2 user template over the chain's state), the model
    (`llm`, else the chain's), a `parser` of the reply (raise to refuse it), how many `retries`
    after a refusal, generation settings, and the state key its output goes to (`output`, default
    its name). With `fn` instead of a prompt the step is a function of the state, no model."""

    name: str
    prompt: Prompt | str | None = None
    parser: Parser | None = None
    retries: int = 1
    output: str | None = None
    llm: Any = None
    fn: Callable[[dict[str, Any]], Any] | None = None
    max_new_tokens: int = 128
    temperature: float = 0.0
    system: str | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.fn is None):
            raise ValueError(f"step {self.name!r}: give a prompt (a model step) or fn (a function step), not "
                             f"{'both' if self.fn else 'neither'}")
        if isinstance(self.prompt, str):
            self.prompt = Prompt(self.prompt, system=self.system)
        if self.retries < 0:
            raise ValueError(f"step {self.name!r}: retries={self.retries} must be >= 0")
        self.output = self.output or self.name


@dataclass
class Attempt:
    step: str
    attempt: int
    reply: str | None
    error: str | None
    seconds: float


@dataclass
class ChainResult:
    status: str  # "ok" | "failed"
    outputs: dict[str, Any]  # the state: the inputs and each finished step's output
    trace: list[Attempt] = field(default_factory=list)
    failed_step: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Chain:
    """Steps run in order over one state dict. `callbacks` see every model call and every step;
    `trace` (a path) writes them as JSON lines."""

    def __init__(self, steps: Sequence[Step], llm: Any = None, callbacks: Sequence[Callable] | Callbacks | None = None,
                 trace: str | None = None):
        if not steps:
            raise ValueError("a chain needs at least one step")
        names = [s.output for s in steps]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"steps write the same output {dup[0]!r}: give each step its own output name")
        for s in steps:
            if s.prompt is not None and s.llm is None and llm is None:
                raise ValueError(f"step {s.name!r} asks a model but neither it nor the chain has one (llm=)")
        self.steps, self.llm = list(steps), llm
        self._callbacks = callbacks
        self.trace_path = trace

    def run(self, **inputs: Any) -> ChainResult:
        extra = [JsonlTrace(self.trace_path)] if self.trace_path else []
        base = self._callbacks.callbacks if isinstance(self._callbacks, Callbacks) else list(self._callbacks or [])
        callbacks = Callbacks(base + extra)
        state: dict[str, Any] = dict(inputs)
        result = ChainResult("ok", state)
        try:
            for step in self.steps:
                value, error = self._run_step(step, state, callbacks, result.trace)
                if error is not None:
                    result.status, result.failed_step, result.error = "failed", step.name, error
                    callbacks.emit("error", step.name, where="chain", error=error)
                    break
                state[step.output] = value
        finally:
            for t in extra:
                t.close()
        return result

    def _run_step(self, step: Step, state: dict[str, Any], callbacks: Callbacks,
                  trace: list[Attempt]) -> tuple[Any, str | None]:
        if step.fn is not None:
            start = time.perf_counter()
            try:
                value = step.fn(state)
            except Exception as e:
                return None, _record(trace, callbacks, step, 1, None, f"{type(e).__name__}: {e}", start)
            _record(trace, callbacks, step, 1, None, None, start, value)
            return value, None
        try:
            messages = step.prompt.messages(**{k: v for k, v in state.items() if k in step.prompt.variables})
        except Exception as e:  # a missing variable: PromptError names it
            return None, _record(trace, callbacks, step, 1, None, str(e), time.perf_counter())
        llm = step.llm or self.llm
        error = None
        for attempt in range(1, step.retries + 2):
            start = time.perf_counter()
            try:
                reply = chat_call(llm, messages, callbacks, max_new_tokens=step.max_new_tokens,
                                  temperature=step.temperature)
            except Exception as e:  # a model that is down or refuses: the step fails, the caller does not crash
                return None, _record(trace, callbacks, step, attempt, None, f"model call failed: {e}", start)
            text = reply if isinstance(reply, str) else (getattr(reply, "content", None) or "")
            try:
                value = step.parser(text) if step.parser else text
            except Exception as e:
                error = f"{type(e).__name__}: {e}" if not isinstance(e, ParseError) else str(e)
                _record(trace, callbacks, step, attempt, text, error, start)
                # the refusal goes back to the model, so a retry at temperature 0 can differ
                messages = messages + [{"role": "assistant", "content": text},
                                       {"role": "user", "content": f"That reply could not be used: {error}. "
                                                                   "Answer again, in the form asked for."}]
                continue
            _record(trace, callbacks, step, attempt, text, None, start, value)
            return value, None
        return None, f"no usable reply after {step.retries + 1} attempts; last error: {error}"


def _record(trace: list[Attempt], callbacks: Callbacks, step: Step, attempt: int, reply: str | None,
            error: str | None, start: float, value: Any = None) -> str | None:
    seconds = round(time.perf_counter() - start, 4)
    trace.append(Attempt(step.name, attempt, reply, error, seconds))
    callbacks.emit("step", step.name, attempt=attempt, reply=reply, error=error, seconds=seconds,
                   output=None if error else _short(value))
    return error


def _short(value: Any, n: int = 500) -> Any:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= n else text[:n] + "…"


# ------------------------------------------------------------------------------------- parsers
def lines(text: str) -> list[str]:
    """The non-empty lines of a reply, list markers stripped; refuses an empty reply."""
    out = [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", ln).strip() for ln in text.splitlines()]
    out = [ln for ln in out if ln]
    if not out:
        raise ParseError("the reply is empty: write at least one line")
    return out


def number(text: str) -> float | int:
    """The last number in a reply (the harness's extractor), as int when whole."""
    from ..eval.harness import extract_answer

    found = extract_answer(text, "last_number")
    if found is None:
        raise ParseError("the reply holds no number: answer with a number")
    value = float(found)
    return int(value) if value.is_integer() and "." not in found else value


def json_value(schema: dict[str, Any] | None = None) -> Parser:
    """A parser taking the JSON value of a reply (whole, fenced, or the first that validates), checked
    against `schema` when given (the same reading as `generate_json`)."""
    from .json_text import json_candidates

    def parse(text: str) -> Any:
        validator = None
        if schema is not None:
            import jsonschema

            validator = jsonschema.Draft202012Validator(schema)
        last = "the reply holds no JSON value"
        for value in json_candidates(text):
            if validator is None:
                return value
            errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
            if not errors:
                return value
            last = f"the JSON does not match the schema: {errors[0].message}"
        raise ParseError(last)

    return parse
