"""Reading a model's tool calls back from its text, whole or as it streams: `ToolCallParser` and the
events it gives (`ContentDelta`, `CallStart`, `ArgumentsDelta`, `Finish`), which `LocalLLM.chat`,
`RemoteLLM.chat` and the server's stream share. The format is `llmkit.infer.tool_calls`'."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

from .tool_calls import CLOSE, OPEN, ChatReply, ToolCall

@dataclass
class ContentDelta:
    text: str


@dataclass
class CallStart:
    index: int
    id: str
    name: str


@dataclass
class ArgumentsDelta:
    index: int
    text: str


_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')
_TAIL = re.compile(r"\s*\}\s*" + re.escape(CLOSE))


class ToolCallParser:
    """Text in (as deltas, or whole), content and calls out: `feed` returns the events the new text
    completes (`ContentDelta`, `CallStart`, `ArgumentsDelta`), `close` those at the end; `reply`
    gathers everything into a `ChatReply`. Text that only might begin a call marker is held back
    until it is clear. A call cut off at the end keeps the arguments written so far; a marker cut
    off before the function's name is dropped."""

    def __init__(self) -> None:
        self.buffer, self.state = "", "text"
        self.calls: list[ToolCall] = []
        self.content: list[str] = []
        self._depth, self._in_string, self._escape, self._after_call = 0, False, False, False

    def feed(self, text: str) -> list[Any]:
        self.buffer += text
        events: list[Any] = []
        while True:
            before = (self.state, len(self.buffer))
            getattr(self, f"_{self.state}")(events)
            if (self.state, len(self.buffer)) == before:
                return events

    def close(self) -> list[Any]:
        events = self.feed("")
        if self.state == "text" and self.buffer.rstrip():  # trailing whitespace is dropped, as before a marker
            events.append(self._content(self.buffer.rstrip()))
        self.buffer = ""
        return [e for e in events if not (isinstance(e, ContentDelta) and not e.text)]

    def reply(self, finish_reason: str) -> ChatReply:
        """The reply so far; "tool_calls" is its reason only when it ended normally after whole
        calls (a stop string inside a call leaves "stop" and arguments that do not parse)."""
        whole = self.state == "text" and all(_parses(c.arguments) for c in self.calls)
        reason = "tool_calls" if self.calls and finish_reason == "stop" and whole else finish_reason
        return ChatReply(_content("".join(self.content), self.calls), self.calls, reason)

    # the states: text → head (after the marker) → arguments → tail (the call's end) → text
    def _content(self, text: str) -> ContentDelta:
        if self._after_call:  # the whitespace after a call is the format's, not content
            text = text.lstrip()
            self._after_call = not text
            if text and any(self.content):  # text on both sides of calls: one line break between
                text = "\n" + text
        self.content.append(text)
        return ContentDelta(text)

    def _text(self, events: list[Any]) -> None:
        at = self.buffer.find(OPEN)
        if at >= 0:  # the whitespace before a marker is the format's too (as Qwen's template writes it)
            events.append(self._content(self.buffer[:at].rstrip()))
            self.buffer, self.state = self.buffer[at + len(OPEN):], "head"
            return
        # held back: what may begin a marker, and the whitespace before it
        partial = next((n for n in range(min(len(OPEN) - 1, len(self.buffer)), 0, -1)
                        if OPEN.startswith(self.buffer[-n:])), 0)
        rest = self.buffer[:len(self.buffer) - partial]
        keep = partial + len(rest) - len(rest.rstrip())
        if len(self.buffer) > keep:
            events.append(self._content(self.buffer[:len(self.buffer) - keep]))
            self.buffer = self.buffer[len(self.buffer) - keep:]

    def _head(self, events: list[Any]) -> None:
        m = _HEAD.match(self.buffer)
        if m is None:
            return
        call = ToolCall(json.loads(m.group(1)), "")
        self.calls.append(call)
        events.append(CallStart(len(self.calls) - 1, call.id, call.name))
        self.buffer, self.state = self.buffer[m.end():], "arguments"
        self._depth, self._in_string, self._escape = 0, False, False

    def _arguments(self, events: list[Any]) -> None:
        if not self.calls[-1].arguments:
            self.buffer = self.buffer.lstrip()
        end = None
        for i, ch in enumerate(self.buffer):
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
            if self._depth == 0 and not self._in_string and ch in '}]"':
                end = i + 1
                break
        taken = self.buffer if end is None else self.buffer[:end]
        if taken:
            call = self.calls[-1]
            call.arguments += taken
            events.append(ArgumentsDelta(len(self.calls) - 1, taken))
        self.buffer = "" if end is None else self.buffer[end:]
        if end is not None:
            self.state = "tail"

    def _tail(self, events: list[Any]) -> None:
        m = _TAIL.match(self.buffer)
        if m is not None:
            self.buffer, self.state, self._after_call = self.buffer[m.end():], "text", True


def parse_tool_calls(text: str, finish_reason: str = "stop") -> ChatReply:
    """The content and calls of a whole generated answer."""
    parser = ToolCallParser()
    parser.feed(text)
    parser.close()
    return parser.reply(finish_reason)


def openai_delta(event: Any) -> dict[str, Any]:
    """A parser event as the ``delta`` of an OpenAI chat stream chunk."""
    if isinstance(event, ContentDelta):
        return {"content": event.text}
    if isinstance(event, CallStart):
        return {"tool_calls": [{"index": event.index, "id": event.id, "type": "function",
                                "function": {"name": event.name, "arguments": ""}}]}
    return {"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]}


@dataclass
class Finish:
    """The last event of a streamed reply with tools: why it ended (as `ChatReply.finish_reason`)."""

    reason: str


def tool_events(deltas: Iterable[str], timings: Any) -> Iterable[Any]:
    """Parser events of a stream of text deltas, then `Finish` (its reason from `timings`, which
    the stream fills in)."""
    parser = ToolCallParser()
    for delta in deltas:
        yield from (e for e in parser.feed(delta) if not (isinstance(e, ContentDelta) and not e.text))
    yield from parser.close()
    yield Finish(parser.reply(timings.finish_reason or "stop").finish_reason)


def reply_from_events(events: Iterable[Any]) -> ChatReply:
    """Gather streamed events back into the `ChatReply` a call without streaming returns."""
    content, calls, reason = [], [], "stop"
    for e in events:
        if isinstance(e, ContentDelta):
            content.append(e.text)
        elif isinstance(e, CallStart):
            calls.append(ToolCall(e.name, "", e.id))
        elif isinstance(e, ArgumentsDelta):
            calls[e.index].arguments += e.text
        elif isinstance(e, Finish):
            reason = e.reason
    return ChatReply(_content("".join(content), calls), calls, reason)


def _content(text: str, calls: list[ToolCall]) -> str | None:
    """A reply's content: its text as written, None when it only called tools (as OpenAI's)."""
    return None if calls and not text.strip() else text


def _parses(arguments: str) -> bool:
    try:
        json.loads(arguments)
        return True
    except json.JSONDecodeError:
        return False
