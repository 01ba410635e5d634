"""The ReAct text format: how a trajectory is written for a chat model, and read back.

A trajectory is a conversation, so that the model's own turns are exactly what a fine-tuning set
would train on (the assistant turns), and the observations are what the world answered (user turns):

    system     the tools (name, description, JSON Schema of the arguments), the format, one example
    user       Question: How many days are there from 2024-01-15 to 2024-03-01?
    assistant  Thought: I should count the days with days_between.
               Action: days_between
               Action Input: {"start": "2024-01-15", "end": "2024-03-01"}
    user       Observation: 46
    assistant  Thought: I now know the final answer
               Final Answer: 46 days

`react_transcript(question, steps, answer, tools=...)` renders a trajectory; the agent builds each
prompt with it (the transcript of the steps so far), so the text it is prompted with and the text a
dataset is made of cannot drift apart. `parse_react` reads an assistant turn back;
``parse_react(render_step(step))`` gives the step's fields again. Native function calling has its
own rendering, `native_transcript` (OpenAI ``tool_calls`` and ``tool`` messages).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

from .tools import Tool

STOP = ("Observation:",)  # the agent writes the observation; the model must stop before it
FINAL_THOUGHT = "I now know the final answer"

INSTRUCTIONS = "Answer the question. You may call tools to help you; each call's result is shown to you."

FORMAT = """Use exactly this format:

Thought: what you should do next
Action: the tool to call, one of: {names}
Action Input: the tool's arguments as a JSON object
Observation: the tool's result (it is written for you: stop after the Action Input line)
... (Thought, Action, Action Input and Observation may repeat)
Thought: {final_thought}
Final Answer: the answer to the question"""

FORMAT_REMINDER = ("error: your reply did not follow the format. End it with either an action:\n"
                   "Action: <one of: {names}>\nAction Input: <the arguments as a JSON object>\n"
                   "or the answer:\nFinal Answer: <the answer>")


@dataclass
class Step:
    """One step of an agent: what the model thought, the tool it called with which arguments, and
    what came back. The last step of an answered run carries the `answer` (and no action). A reply
    that did not parse is a step with no action whose observation says what the format is.
    `text` is the model's reply as it wrote it (None for a step made by code, rendered canonically)."""

    thought: str = ""
    action: str | None = None
    action_input: dict[str, Any] | str | None = None
    observation: str | None = None
    answer: str | None = None
    tokens: int = 0  # prompt and completion tokens this step used
    text: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"thought": self.thought, "action": self.action, "action_input": self.action_input,
                "observation": self.observation, "answer": self.answer, "tokens": self.tokens, "text": self.text}


@dataclass
class ParsedReply:
    """An assistant turn read back: a thought and either an action (its name and the raw text of its
    input) or a final answer; `error` says what is missing when it is neither."""

    thought: str = ""
    action: str | None = None
    action_input: str | None = None
    answer: str | None = None
    error: str | None = None


# ----------------------------------------------------------------------------- worked examples
# (question, the step, the final answer) per tool: the example shown is the first one whose tool the
# agent has, so a weak model copies a call it can actually make
EXAMPLES: dict[str, tuple[str, Step, str]] = {
    "calculator": ("What is 17 * 23 + 4?", Step("I should compute 17 * 23 + 4 with the calculator.", "calculator",
                                                {"expression": "17 * 23 + 4"}, "395"), "395"),
    "days_between": ("How many days are there from 2024-01-15 to 2024-03-01?",
                     Step("I should count the days with days_between.", "days_between",
                          {"start": "2024-01-15", "end": "2024-03-01"}, "46"), "46 days"),
    "python": ("What is the sum of the squares of the numbers from 1 to 10?",
               Step("I should compute it with a short Python program.", "python",
                    {"code": "print(sum(i * i for i in range(1, 11)))"}, "385"), "385"),
    "stdlib_docs": ("Which standard-library function shuffles a list in place?",
                    Step("I should search the standard library's documentation.", "stdlib_docs",
                         {"query": "shuffle a list in place"},
                         "1. random.shuffle (function)\nshuffle(x) Shuffle list x in place, and return None."),
                    "random.shuffle"),
    "now": ("What is the date today in Tokyo?", Step("I should ask for the current time in Tokyo.", "now",
                                                     {"timezone": "Asia/Tokyo"},
                                                     "Saturday, 2024-11-23T14:05:09+09:00 (Asia/Tokyo)"),
            "Saturday, 2024-11-23"),
}


def _placeholder(schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    return {"integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}.get(kind, "...")


def worked_example(tools: Sequence[Tool]) -> str:
    """One solved question in the format, with a tool of `tools` (a known example, or one made from
    the first tool's schema)."""
    by_name = {t.name: t for t in tools}
    chosen = next((EXAMPLES[name] for name in EXAMPLES if name in by_name), None)
    if chosen is None and tools:
        tool = tools[0]
        args = {k: _placeholder(v) for k, v in tool.parameters.get("properties", {}).items()}
        chosen = (f"(a question that needs {tool.name})", Step(f"I should call {tool.name}.", tool.name, args,
                                                              "(its result)"), "(the answer)")
    if chosen is None:
        return ""
    question, step, answer = chosen
    return "\n".join([f"Question: {question}", render_step(step), f"Observation: {step.observation}",
                      render_step(Step(FINAL_THOUGHT, answer=answer))])


def react_system(tools: Sequence[Tool], system: str | None = None) -> str:
    """The system message of the text format: instructions (`system`, or `INSTRUCTIONS`), each tool
    with its description and JSON parameters, the format, and one worked example."""
    listed = "\n".join(f"{t.name}: {t.description}\n    parameters: {json.dumps(t.parameters, ensure_ascii=False)}"
                       for t in tools) or "(none: answer directly)"
    names = ", ".join(t.name for t in tools) or "(none)"
    parts = [system or INSTRUCTIONS, f"The tools:\n\n{listed}", FORMAT.format(names=names, final_thought=FINAL_THOUGHT)]
    example = worked_example(tools)
    if example:
        parts.append(f"Example:\n\n{example}")
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------- rendering
def input_text(action_input: Any) -> str:
    """An action's input as the format writes it: JSON for anything but a string."""
    return action_input if isinstance(action_input, str) else json.dumps(action_input, ensure_ascii=False)


def render_step(step: Step) -> str:
    """The assistant turn of `step` in canonical form (`parse_react` reads it back)."""
    lines = [f"Thought: {step.thought}"] if step.thought else []
    if step.answer is not None:
        lines.append(f"Final Answer: {step.answer}")
    elif step.action is not None:
        lines += [f"Action: {step.action}", f"Action Input: {input_text(step.action_input)}"]
    return "\n".join(lines)


def react_transcript(question: str, steps: Sequence[Step], answer: str | None = None, *,
                     tools: Sequence[Tool] = (), system: str | None = None) -> list[dict[str, Any]]:
    """The chat messages of a ReAct trajectory, exactly as the agent is prompted with them (see the
    module docstring): the system message (`react_system(tools, system)`), the question, then per
    step the model's turn (`step.text` as written, else `render_step`) and its observation. With
    `answer` (and no final step among `steps`) a final turn is added, so a trajectory made by code
    (steps without `text`) renders as a training example."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": react_system(tools, system)},
                                      {"role": "user", "content": f"Question: {question}"}]
    steps = list(steps)
    if answer is not None and not (steps and steps[-1].answer is not None):
        steps.append(Step(FINAL_THOUGHT, answer=answer))
    for step in steps:
        messages.append({"role": "assistant", "content": step.text if step.text is not None else render_step(step)})
        if step.observation is not None:
            messages.append({"role": "user", "content": f"Observation: {step.observation}"})
    return messages


def native_transcript(question: str, steps: Sequence[Step], answer: str | None = None, *,
                      system: str | None = None) -> list[dict[str, Any]]:
    """The chat messages of a trajectory with native function calling: each step is an assistant
    turn with one ``tool_calls`` entry (ids ``call_0``, ``call_1``, ... by step, so that the same
    steps always give the same prompt) and a ``tool`` message with the observation; a step without
    an action (an empty reply) is the model's text and a user turn saying what to do."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    for i, step in enumerate(steps):
        if step.answer is not None:
            messages.append({"role": "assistant", "content": step.answer})
        elif step.action is None:
            messages += [{"role": "assistant", "content": step.text or ""},
                         {"role": "user", "content": step.observation or ""}]
        else:
            call = {"id": f"call_{i}", "type": "function",
                    "function": {"name": step.action, "arguments": input_text(step.action_input)}}
            messages += [{"role": "assistant", "content": step.thought or None, "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": f"call_{i}", "content": step.observation or ""}]
    if answer is not None and not (steps and steps[-1].answer is not None):
        messages.append({"role": "assistant", "content": answer})
    return messages


# ----------------------------------------------------------------------------- parsing
_FINAL = re.compile(r"^[ \t]*\**Final[ \t]+Answer\**[ \t]*:[ \t]*", re.M | re.I)
_ACTION = re.compile(r"^[ \t]*\**Action\**[ \t]*:[ \t]*(.*?)[ \t]*$", re.M | re.I)
_INPUT = re.compile(r"^[ \t]*\**Action[ \t]*Input\**[ \t]*:[ \t]*", re.M | re.I)
_NEXT = re.compile(r"^[ \t]*(?:Thought|Action|Observation|Final[ \t]+Answer)[ \t]*:", re.M | re.I)
_THOUGHT = re.compile(r"^\s*\**Thought\**\s*:\s*", re.I)


def _thought(text: str) -> str:
    return _THOUGHT.sub("", text.strip(), count=1).strip()


def parse_react(text: str) -> ParsedReply:
    """Read one assistant turn of the text format: ``Final Answer:`` (the rest of the text) or
    ``Action:`` and ``Action Input:`` (up to the next ``Thought:``/``Action:``/``Observation:``
    line), whichever comes first, and the thought before it."""
    final, action = _FINAL.search(text), _ACTION.search(text)
    if final and (action is None or final.start() < action.start()):
        return ParsedReply(_thought(text[:final.start()]), answer=text[final.end():].strip())
    if action is None:
        return ParsedReply(_thought(text), error="no 'Action:' line and no 'Final Answer:' line")
    thought, name = _thought(text[:action.start()]), action.group(1).strip().strip("`*[]\"' ")
    found = _INPUT.search(text, action.end())
    if found is None:
        return ParsedReply(thought, name, error=f"'Action: {name}' has no 'Action Input:' line after it")
    rest = text[found.end():]
    after = _NEXT.search(rest)
    return ParsedReply(thought, name, (rest[:after.start()] if after else rest).strip())


def _single_parameter(tool: Tool) -> str | None:
    """The one parameter a bare string fills: the only property, or the only required one."""
    props = list(tool.parameters.get("properties", {}))
    required = list(tool.parameters.get("required", []))
    return props[0] if len(props) == 1 else required[0] if len(required) == 1 else None


def _unfence(text: str) -> str:
    text = text.strip()
    m = re.fullmatch(r"```[\w-]*\s*\n?(.*?)\n?```", text, re.S)
    return (m.group(1) if m else text.strip("`")).strip()


def _leading_object(text: str) -> dict[str, Any] | None:
    """The JSON object `text` starts with, chatter after it ignored; None if it starts with none."""
    if not text.startswith("{"):
        return None
    try:
        value = json.JSONDecoder().raw_decode(text)[0]
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def action_arguments(tool: Tool, raw: str) -> dict[str, Any] | str:
    """The arguments an ``Action Input`` gives `tool`: its JSON object (text after the object is
    ignored); or, for a tool with one parameter, a bare value (JSON or plain text, quotes taken off)
    as that parameter. Anything else is returned as the raw text, for the tool to reject by name."""
    text = _unfence(raw)
    single = _single_parameter(tool)
    try:
        value: Any = json.loads(text)
    except json.JSONDecodeError:
        value = _leading_object(text)
        if value is None:
            if single is None or not text:
                return text
            quoted = len(text) > 1 and text[0] == text[-1] and text[0] in "\"'"
            return {single: text[1:-1] if quoted else text}
    if isinstance(value, dict):
        return value
    return {single: value} if single else text


def find_tool(tools: Sequence[Tool], name: str) -> Tool | None:
    """The tool a model named: exactly, else case-insensitively with '-' read as '_' (and '()' dropped)."""
    key = name.strip().removesuffix("()").lower().replace("-", "_")
    return next((t for t in tools if t.name == name), None) or \
        next((t for t in tools if t.name.lower().replace("-", "_") == key), None)
