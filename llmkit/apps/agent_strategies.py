"""Agents as prompting strategies: ReAct with tools and PAL, measured by `prompt_eval` beside
zero-shot, few-shot and chain-of-thought on the same questions.

    from llmkit.apps.agent_strategies import PALStrategy, ReActStrategy

    answers = ReActStrategy(tools="calculator").answer_all(llm, ["What is 17 * 23?"])
    answers[0].answer, answers[0].status, answers[0].steps   # "391", "answered", ["calculator(...) -> 391", ...]

Both have a strategy's `name` and `answer_all` signature, and batch as the other strategies do: a
ReAct agent advances every question in lockstep (`ReActAgent.run_all`) and PAL writes every
program in one `complete_chats` call (`pal_batch`). The answer is the task's extractor applied to
the agent's final answer (PAL: the last line its program printed); the tokens count every step's
prompt and completion; `Answer.status` is how the run ended, so `prompt_eval` can count the
questions an agent failed to complete (a step limit, a loop, a program that did not run).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from ..eval.harness import extract_answer
from .agents import AgentResult, ReActAgent
from .callbacks import Callbacks
from .pal import PALResult, pal_batch, pal_messages
from .prompting import Answer, Messages, Strategy
from .react_format import react_transcript
from .tools import Tool

SUMMARY = 120  # characters of each trace line kept in a sample (results.json stays readable)


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= SUMMARY else text[:SUMMARY - 1] + "…"


def _tools(tools: str | Sequence[Tool] | None) -> list[Tool]:
    from .toolbox import builtin_tools

    if tools is None:
        return builtin_tools("calculator")
    return builtin_tools(tools) if isinstance(tools, str) else list(tools)


class ReActStrategy(Strategy):
    """A ReAct agent in the text format (`llmkit.apps.agents.ReActAgent`, mode "text") with `tools`
    (built-in names such as "calculator,datetime", or `Tool`s; default the calculator, for
    arithmetic). Each step generates at most `max_new_tokens`; a question takes at most
    `max_steps` steps and `max_tokens` tokens. `system` replaces the agent's instructions."""

    name = "react"

    def __init__(self, tools: str | Sequence[Tool] | None = None, extract: str = "last_number", max_steps: int = 5,
                 max_new_tokens: int = 128, max_tokens: int | None = 16_000, system: str | None = None):
        super().__init__(extract=extract, max_new_tokens=max_new_tokens)
        self.tools = _tools(tools)
        self.max_steps, self.max_tokens, self.system = max_steps, max_tokens, system

    def messages(self, question: str, qid: str = "") -> Messages:
        """The agent's first prompt."""
        return react_transcript(question, [], tools=self.tools, system=self.system)

    def agent(self, llm: Any, callbacks: Callbacks | None = None) -> ReActAgent:
        return ReActAgent(llm, self.tools, mode="text", max_steps=self.max_steps, max_tokens=self.max_tokens,
                          max_new_tokens=self.max_new_tokens, temperature=0.0, system=self.system,
                          callbacks=callbacks)

    def answer_all(self, llm: Any, questions: Sequence[str], ids: Sequence[str] | None = None, batch_size: int = 16,
                   callbacks: Callbacks | None = None, progress: bool = False) -> list[Answer]:
        results = self.agent(llm, callbacks).run_all(list(questions), batch_size=batch_size, progress=progress)
        return [self._answer(r) for r in results]

    def _answer(self, result: AgentResult) -> Answer:
        answer = extract_answer(result.answer, self.extract) if result.answer is not None else None
        last = result.steps[-1].text if result.steps and result.steps[-1].text is not None else ""
        return Answer(answer, result.answer if result.answer is not None else last,
                      result.tokens - result.completion_tokens, result.completion_tokens, result.seconds,
                      steps=react_summary(result), status=result.status)


def react_summary(result: AgentResult) -> list[str]:
    """One short line per step (the call and what came back, a reply that did not parse, the
    answer), and how the run ended when it did not answer."""
    lines = []
    for step in result.steps:
        if step.answer is not None:
            lines.append(_short(f"answer: {step.answer}"))
        elif step.action is None:
            lines.append(_short(f"no action: {step.text or ''}"))
        else:
            args = step.action_input if isinstance(step.action_input, str) else \
                json.dumps(step.action_input, ensure_ascii=False)
            lines.append(_short(f"{step.action}({args}) -> {step.observation}"))
    if result.status != "answered":
        lines.append(_short(f"{result.status}: {result.error}"))
    return lines


class PALStrategy(Strategy):
    """Program-aided answers (`llmkit.apps.pal`): the model writes a Python program (at most
    `max_new_tokens` tokens), the sandbox runs it (at most `timeout` seconds), and the task's
    extractor reads the answer off the last line it printed. `system` replaces PAL's instructions."""

    name = "pal"

    def __init__(self, extract: str = "last_number", max_new_tokens: int = 192, timeout: float = 10.0,
                 system: str | None = None):
        super().__init__(extract=extract, max_new_tokens=max_new_tokens)
        self.timeout, self.system = timeout, system

    def messages(self, question: str, qid: str = "") -> Messages:
        return pal_messages(question, system=self.system)

    def answer_all(self, llm: Any, questions: Sequence[str], ids: Sequence[str] | None = None, batch_size: int = 16,
                   callbacks: Callbacks | None = None, progress: bool = False) -> list[Answer]:
        results = pal_batch(llm, list(questions), timeout=self.timeout, callbacks=callbacks,
                            max_new_tokens=self.max_new_tokens, temperature=0.0, system=self.system,
                            batch_size=batch_size, progress=progress)
        return [self._answer(r) for r in results]

    def _answer(self, result: PALResult) -> Answer:
        answer = extract_answer(result.answer, self.extract) if result.answer is not None else None
        steps = [_short(f"program: {result.program}")] if result.program else []
        steps.append(_short(f"output: {result.output}") if result.ok else _short(f"{result.status}: {result.error}"))
        return Answer(answer, result.text, result.prompt_tokens, result.completion_tokens, result.seconds,
                      steps=steps, status=result.status)

