"""ReAct agents: a model thinks, calls a tool, reads what came back, and repeats until it answers.

    from llmkit.apps import ReActAgent, builtin_tools

    agent = ReActAgent(llm, builtin_tools("calculator,datetime"), trace="runs/agent/trace.jsonl")
    result = agent.run("How many days are there between 2024-02-03 and 2024-11-23?")
    result.status, result.answer    # "answered", "294 days"

Two ways to call tools, one loop:

- ``mode="text"`` (Yao et al., 2022): the model writes ``Thought:``, ``Action:``, ``Action Input:``
  and is stopped before ``Observation:``, which the agent writes (`llmkit.apps.react_format`);
  works with any chat model, local or remote.
- ``mode="native"``: the model's own function calling (``llm.chat(messages, tools=...)``): a reply
  with a tool call runs it and sends a ``tool`` message back; a reply with text and no call is the
  answer.

A run ends with a `status`: "answered", "step_limit" (`max_steps` steps without an answer),
"token_budget" (the next step could pass `max_tokens`, counted over every step's prompt and
completion with the model's tokenizer), "loop" (the same action with the same input, or the same
reply without an action, `loop_after` times in a row: at temperature 0 it would never end) or "model_error" (the model failed, e.g. its
server is down). `run` never raises for what the model or a tool does: a failing tool's error is
the next observation, and a reply that does not parse gets the format back as its observation.
Every step is a ``step`` event for `callbacks` (`llmkit.apps.callbacks`); ``trace=`` writes the
events to a JSONL file.

`run_all(questions)` answers many questions with the same rules; in text mode they advance in
lockstep, each round's prompts decoded together by a local model's inference engine
(`llmkit.apps.batching.complete_chats`). `run(q)` is `run_all([q])[0]`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from ..infer.tool_calls import call_text, tool_specs
from .batching import Reply, complete_chats
from .callbacks import Callbacks, JsonlTrace, chat_call, tool_call
from .react_format import (FORMAT_REMINDER, STOP, Step, action_arguments, find_tool, native_transcript,
                           parse_react, react_transcript)
from .tools import Tool

log = logging.getLogger(__name__)

STATUSES = ("answered", "step_limit", "token_budget", "loop", "model_error")
MESSAGE_OVERHEAD = 4  # tokens a chat template adds around each message's content (role markers)
NATIVE_REMINDER = "Call one of the tools, or answer the question in plain text."


@dataclass
class AgentResult:
    """How a run ended: the `answer` (None unless `status` is "answered"), the `steps` (the last one
    holds the answer when there is one), the tokens used (prompt and completion, every step; the
    completion's share in `completion_tokens`) and the seconds taken; `error` explains any status
    but "answered"."""

    question: str
    answer: str | None
    status: str
    steps: list[Step] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    error: str | None = None
    completion_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "answered"


class _Budget:
    """Counts tokens with the model's tokenizer (`llm.tokenize`) where it has one, else estimates
    4 characters a token; each distinct text is tokenised once (a remote tokenizer is an HTTP call)."""

    def __init__(self, llm: Any, limit: int | None):
        self.llm, self.limit, self.used = llm, limit, 0
        self._cache: dict[str, int] = {}
        self._exact = callable(getattr(llm, "tokenize", None))

    def text(self, text: str) -> int:
        if not text:
            return 0
        if text not in self._cache:
            n = None
            if self._exact:
                try:
                    n = len(self.llm.tokenize(text, add_special_tokens=False))
                except (NotImplementedError, AttributeError, TypeError, ValueError):  # no usable tokenizer: estimate
                    self._exact = False
            self._cache[text] = n if n is not None else max(1, len(text) // 4)
        return self._cache[text]

    def messages(self, messages: Sequence[dict[str, Any]], extra: str = "") -> int:
        counter = getattr(self.llm, "chat_tokens", None)
        if not extra and self._exact and callable(counter):  # the model's own count: the chat template included
            try:
                return int(counter(list(messages)))
            except (NotImplementedError, AttributeError, TypeError, ValueError):
                pass  # e.g. a server that refuses the request: count the contents below
        total = self.text(extra)
        for m in messages:
            total += MESSAGE_OVERHEAD + self.text(str(m.get("content") or ""))
            for call in m.get("tool_calls") or []:
                total += self.text(call_text(call["function"]["name"], call["function"]["arguments"]))
        return total

    def room(self, prompt: int) -> int | None:
        """How many new tokens the next step may make after a prompt of `prompt` tokens; None without a limit."""
        return None if self.limit is None else self.limit - self.used - prompt


class _Stop(Exception):
    """Ends a run early with a status and its explanation."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class _Ask:
    """One step's request: the prompt, its token count, and the new tokens it may make."""

    messages: list[dict[str, Any]]
    prompt: int
    max_new: int


@dataclass
class _Run:
    """One question's run in progress: its steps, its budget and callbacks, and how it ended
    (`status` None while it goes on)."""

    question: str
    callbacks: Callbacks
    budget: _Budget
    steps: list[Step] = field(default_factory=list)
    status: str | None = None
    answer: str | None = None
    error: str | None = None
    start: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0
    completion: int = 0  # of budget.used, the tokens the model generated

    def end(self, status: str, answer: str | None, error: str | None) -> None:
        self.status, self.answer, self.error = status, answer, error
        self.seconds = time.perf_counter() - self.start

    def fail(self, step: int, error: str) -> None:
        log.warning("the model failed at step %d: %s", step + 1, error)
        self.end("model_error", None, f"the model failed at step {step + 1}: {error}")

    def result(self, max_steps: int) -> AgentResult:
        if self.status is None:
            self.end("step_limit", None, f"no final answer after {max_steps} steps (max_steps={max_steps}): raise "
                                         "max_steps, or ask a simpler question")
        if self.status != "answered":
            log.info("agent run ended: %s: %s", self.status, self.error)
        return AgentResult(self.question, self.answer, self.status, self.steps, self.budget.used,
                           round(self.seconds, 4), self.error, self.completion)


class ReActAgent:
    """An agent that answers a question with `tools` (`llmkit.apps.Tool`s) over any `LLM`.

    `mode` is "text" (the ReAct format, any chat model) or "native" (the model's function calling).
    Each step generates at most `max_new_tokens` at `temperature`; a run takes at most `max_steps`
    steps and `max_tokens` tokens in all (None: no budget). `tool_choice` (native mode) is OpenAI's:
    "required" or a named function apply until the model has made its first call (it must call
    before it answers), then "auto". `system` replaces the instructions at the top of the system
    message (text mode) or is the system message (native). `callbacks` are callables taking an
    `Event`; `trace` a path to which each run appends its events as JSON lines."""

    def __init__(self, llm: Any, tools: Sequence[Tool], mode: str = "text", max_steps: int = 8,
                 max_tokens: int | None = 32_000, max_new_tokens: int = 256, temperature: float = 0.0,
                 system: str | None = None, callbacks: Iterable[Callable] | Callbacks | None = None,
                 trace: str | os.PathLike | None = None, tool_choice: Any = "auto", loop_after: int = 2):
        if mode not in ("text", "native"):
            raise ValueError(f"mode={mode!r} must be 'text' (the ReAct format) or 'native' (function calling)")
        for name, value, low in (("max_steps", max_steps, 1), ("max_new_tokens", max_new_tokens, 1),
                                 ("loop_after", loop_after, 2)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be an integer >= {low}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens} must be positive, or None for no token budget")
        self.tools = list(tools)
        if not all(isinstance(t, Tool) for t in self.tools):
            raise TypeError("tools must be llmkit.apps.Tool objects (Tool.from_function(f), or builtin_tools(...))")
        self.llm, self.mode, self.max_steps, self.max_tokens = llm, mode, max_steps, max_tokens
        self.max_new_tokens, self.temperature, self.system = max_new_tokens, temperature, system
        self.callbacks = Callbacks(callbacks)
        self.trace, self.tool_choice, self.loop_after = trace, tool_choice, loop_after
        # the tool descriptions a template adds to every native prompt, counted against the budget
        self._spec_text = "\n".join(json.dumps(s, ensure_ascii=False) for s in tool_specs(self.tools))

    # ------------------------------------------------------------------ public
    def messages(self, question: str, steps: Sequence[Step] = ()) -> list[dict[str, Any]]:
        """The prompt of the next step after `steps` (the transcript the model is given)."""
        if self.mode == "text":
            return react_transcript(question, steps, tools=self.tools, system=self.system)
        return native_transcript(question, steps, system=self.system)

    def run(self, question: str) -> AgentResult:
        """Answer `question`; never raises for what the model or the tools do (see `AgentResult`)."""
        return self.run_all([question])[0]

    def run_all(self, questions: Sequence[str], batch_size: int = 16, progress: bool = False) -> list[AgentResult]:
        """Answer every question, in order, each a separate run (its own run id in the events, its
        own limits) with exactly `run`'s rules. Text mode advances the questions in lockstep: each
        round, every unfinished question's next prompt goes into one `complete_chats` call, so a
        local model decodes them together through the inference engine (`batch_size` at a time)
        and a server is asked one by one. Native mode runs the questions one after the other:
        batching the tool-call grammar is not supported."""
        trace = JsonlTrace(self.trace) if self.trace is not None else None
        observers = self.callbacks.callbacks + ([trace] if trace else [])
        runs = [_Run(q, Callbacks(observers), _Budget(self.llm, self.max_tokens)) for q in questions]
        try:
            if self.mode == "text":
                self._lockstep(runs, batch_size, progress)
            else:
                for run in runs:
                    self._alone(run)
        finally:
            if trace:
                trace.close()
        return [run.result(self.max_steps) for run in runs]

    # ------------------------------------------------------------------ the loops
    def _lockstep(self, runs: list[_Run], batch_size: int, progress: bool) -> None:
        for index in range(self.max_steps):
            asks = []
            for run in (r for r in runs if r.status is None):
                ask = self._guard(run, lambda: self._prompt(run))
                if ask is not None:
                    asks.append((run, ask))
            if not asks:
                return
            replies = complete_chats(self.llm, [a.messages for _, a in asks],
                                     gens=[{"max_new_tokens": a.max_new} for _, a in asks], batch_size=batch_size,
                                     callbacks=[r.callbacks for r, _ in asks], progress=progress,
                                     desc=f"react step {index + 1}", errors="return", stop=list(STOP),
                                     temperature=self.temperature)
            for (run, ask), reply in zip(asks, replies):
                if reply.error is not None:  # as `run` would have seen it: the model call raised
                    run.fail(len(run.steps), reply.error)
                    continue
                self._guard(run, lambda: self._advance(run, self._text_reply(reply, ask, run)))

    def _alone(self, run: _Run) -> None:
        while run.status is None and len(run.steps) < self.max_steps:
            self._guard(run, lambda: self._advance(run, self._native_call(run, self._prompt(run))))

    def _guard(self, run: _Run, work: Callable[[], Any]) -> Any:
        """`work()` for one question; what ends its run (a `_Stop`, a model that failed) ends that
        question only, and None is returned."""
        try:
            return work()
        except _Stop as stop:
            run.end(stop.status, None, str(stop))
        except Exception as e:  # a model that fails (a server down, a prompt too long) ends the run, not the caller
            run.fail(len(run.steps), f"{type(e).__name__}: {e}")
            # the trace says why the run ended, also when it failed before any model call (counting the
            # prompt's tokens through a server that is down)
            run.callbacks.emit("error", f"react-{self.mode}", where="agent", error=run.error)
        return None

    # ------------------------------------------------------------------ one step
    def _prompt(self, run: _Run) -> _Ask:
        """The next step's prompt, its token count and how many new tokens it may make; raises
        `_Stop` when the token budget leaves no room for a useful reply."""
        budget, steps = run.budget, run.steps
        messages = self.messages(run.question, steps)
        prompt = budget.messages(messages, self._spec_text if self.mode == "native" else "")
        room = budget.room(prompt)
        if room is not None and room < min(self.max_new_tokens, 16):  # too little left for a useful reply
            raise _Stop("token_budget", f"the next step needs {prompt} prompt tokens and room to answer, but only "
                                        f"{self.max_tokens - budget.used} of max_tokens={self.max_tokens} are left "
                                        f"({budget.used} used in {len(steps)} steps): raise max_tokens")
        return _Ask(messages, prompt, self.max_new_tokens if room is None else min(self.max_new_tokens, room))

    def _text_reply(self, reply: Reply, ask: _Ask, run: _Run) -> Step:
        text = reply.text.strip()
        step = self._text_step(text)
        # the model's own counts where it gives them (the engine's, a server's usage): exact, as every other
        # strategy's tokens are; the estimate only for a model that does not count
        prompt = ask.prompt if reply.prompt_tokens is None else reply.prompt_tokens
        completion = run.budget.text(text) if reply.completion_tokens is None else reply.completion_tokens
        step.tokens = prompt + completion
        run.budget.used += step.tokens
        run.completion += completion
        return step

    def _native_call(self, run: _Run, ask: _Ask) -> Step:
        called = any(s.action is not None for s in run.steps)
        reply = chat_call(self.llm, ask.messages, run.callbacks, tools=self.tools, parallel_tool_calls=False,
                          tool_choice=self.tool_choice if not called else "auto", max_new_tokens=ask.max_new,
                          temperature=self.temperature)
        step, completion = self._native_step(reply, run.budget)
        step.tokens = ask.prompt + completion
        run.budget.used += step.tokens
        run.completion += completion
        return step

    def _advance(self, run: _Run, step: Step) -> None:
        """Take `step` into the run: stop a loop, run the tool, emit the step, note an answer."""
        run.steps.append(step)
        looping = self._loop(run.steps)
        if step.action is not None and step.observation is None and not looping:
            step.observation = self._run_tool(step, run.callbacks)
        run.callbacks.emit("step", f"react-{self.mode}", index=len(run.steps) - 1, **step.to_json())
        if looping:
            raise _Stop("loop", looping)
        if step.answer is not None:
            run.end("answered", step.answer, None)

    def _text_step(self, text: str) -> Step:
        parsed = parse_react(text)
        names = ", ".join(t.name for t in self.tools)
        if parsed.answer is not None:
            return Step(parsed.thought, answer=parsed.answer, text=text)
        if parsed.error is not None:
            return Step(parsed.thought, parsed.action, None, f"{FORMAT_REMINDER.format(names=names)}\n"
                        f"({parsed.error})", text=text)
        tool = find_tool(self.tools, parsed.action or "")
        if tool is None:
            return Step(parsed.thought, parsed.action, parsed.action_input, self._no_tool(parsed.action), text=text)
        return Step(parsed.thought, tool.name, action_arguments(tool, parsed.action_input or ""), text=text)

    def _native_step(self, reply: Any, budget: _Budget) -> tuple[Step, int]:
        if isinstance(reply, str):  # a model without tools support answered in text
            return Step(answer=reply.strip(), text=reply), budget.text(reply)
        content = (reply.content or "").strip()
        calls = list(reply.tool_calls or [])
        completion = budget.text(reply.content or "") + sum(budget.text(call_text(c.name, c.arguments)) for c in calls)
        if not calls:
            if content:
                return Step(answer=content, text=reply.content), completion
            return Step(text="", observation=NATIVE_REMINDER), completion
        if len(calls) > 1:  # one call a step, so a step is one (action, observation) pair
            log.warning("the model made %d tool calls in one reply; only the first (%s) is run",
                        len(calls), calls[0].name)
        call = calls[0]
        try:
            arguments: Any = json.loads(call.arguments)
        except json.JSONDecodeError:
            arguments = call.arguments
        return Step(content, call.name, arguments), completion

    def _run_tool(self, step: Step, callbacks: Callbacks) -> str:
        tool = find_tool(self.tools, step.action or "")
        if tool is None:
            return self._no_tool(step.action)
        step.action = tool.name
        observation, _ = tool_call(tool, step.action_input if step.action_input is not None else {}, callbacks)
        return observation

    def _no_tool(self, name: str | None) -> str:
        return f"error: there is no tool named {name!r}: the tools are {', '.join(t.name for t in self.tools)}"

    def _loop(self, steps: list[Step]) -> str | None:
        """Why to stop when the last `loop_after` steps made the same call (at temperature 0 the same
        prompt would follow forever; the repeated call is not run again); None otherwise."""
        recent = steps[-self.loop_after:]
        if len(recent) < self.loop_after or any(s.answer is not None for s in recent):
            return None
        if all(s.action is None for s in recent):  # the same reply that is no action, again and again
            if len({(s.text or "").strip() for s in recent}) > 1:
                return None
            return (f"the model wrote the same reply without an action {self.loop_after} times in a row; stopped "
                    "(it does not follow the format: a model tuned on agent traces does)")
        if any(s.action is None for s in recent):
            return None
        if len({(s.action, json.dumps(s.action_input, sort_keys=True)) for s in recent}) > 1:
            return None
        step = recent[-1]
        return (f"the model made the same call {self.loop_after} times in a row: {step.action}"
                f"({json.dumps(step.action_input, ensure_ascii=False)}); stopped (raise loop_after, or sample "
                "with a temperature above 0)")
