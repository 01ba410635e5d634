"""Callbacks that see every model and tool call an application makes (for tracing, logging, cost).

Agents, chains, memory and prompting strategies take ``callbacks=``: a list of callables, each
called with one `Event` per model call, tool call and step. `JsonlTrace` writes them to a file,
one JSON object per line, flushed as they come (a crash keeps what happened before it).

    trace = JsonlTrace("runs/agent/trace.jsonl")
    ReActAgent(llm, tools, callbacks=[trace]).run("What is 17 * 23?")

Events: ``model`` (messages or prompt in, text or tool calls out, tokens, seconds), ``tool`` (name,
arguments, observation, seconds, ok), ``step`` (an agent's or chain's step, its fields) and
``error`` (what failed and why). Every event carries the run's id and a wall-clock time.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

log = logging.getLogger(__name__)

EVENT_KINDS = ("model", "tool", "step", "error")


@dataclass
class Event:
    kind: str  # one of EVENT_KINDS
    name: str  # the model's name, the tool's name, or the step's label
    data: dict[str, Any] = field(default_factory=dict)
    run: str = ""  # the id of the agent or chain run the event belongs to
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Callback = Callable[[Event], None]


class Callbacks:
    """The callbacks of one run: `emit` hands each event to every callback. A callback that raises
    is logged and skipped, never breaking the run it observes."""

    def __init__(self, callbacks: Iterable[Callback] | "Callbacks" | None = None, run: str | None = None):
        if isinstance(callbacks, Callbacks):
            callbacks = callbacks.callbacks
        self.callbacks: list[Callback] = list(callbacks or [])
        for cb in self.callbacks:
            if not callable(cb):
                raise TypeError(f"callbacks must be callables taking an Event, got {type(cb).__name__}")
        self.run = run or uuid.uuid4().hex[:12]

    def emit(self, kind: str, name: str, **data: Any) -> Event:
        if kind not in EVENT_KINDS:
            raise ValueError(f"event kind {kind!r} is not one of {', '.join(EVENT_KINDS)}")
        event = Event(kind, name, data, self.run)
        for cb in self.callbacks:
            try:
                cb(event)
            except Exception:  # an observer must not break what it observes
                log.exception("callback %r failed on a %s event", cb, kind)
        return event


class JsonlTrace:
    """A callback that appends each event as one JSON line to `path` (created with its folders;
    flushed after every line, so a crashed run keeps its trace). Thread-safe."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")

    def __call__(self, event: Event) -> None:
        line = json.dumps(event.to_json(), ensure_ascii=False, default=str)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "JsonlTrace":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_trace(path: str | os.PathLike) -> list[Event]:
    """The events of a JSONL trace, in order."""
    from ..data.jsonl import BadRow, iter_jsonl

    events = []
    for row in iter_jsonl(Path(path)):
        if isinstance(row, BadRow):
            raise ValueError(f"{path}: {row}")
        events.append(Event(**row[1]))
    return events


class Recorder:
    """A callback that keeps the events in memory (`events`), for tests and notebooks."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]


def model_name(llm: Any) -> str:
    """The model's name for events; its class name where it has none, or where asking fails (a
    server's name comes from its /models list, and an event about a server that is down must not raise)."""
    try:
        return str(getattr(llm, "name", None) or type(llm).__name__)
    except Exception:
        return type(llm).__name__


def chat_call(llm: Any, messages: Sequence[dict[str, Any]], callbacks: Callbacks, **kwargs: Any) -> Any:
    """`llm.chat(messages, **kwargs)` (not streamed) with a ``model`` event: the messages, the reply
    (text, or a ChatReply's content and tool calls) and seconds (batched calls through
    `complete_chats` also report their token counts). An exception is reported as an ``error``
    event and raised again."""
    start = time.perf_counter()
    try:
        reply = llm.chat(list(messages), **kwargs)
    except Exception as e:
        callbacks.emit("error", model_name(llm), where="model", error=f"{type(e).__name__}: {e}",
                       seconds=round(time.perf_counter() - start, 4))
        raise
    seconds = round(time.perf_counter() - start, 4)
    if isinstance(reply, str):
        out: dict[str, Any] = {"text": reply}
    else:
        out = {"text": getattr(reply, "content", None) or "",
               "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in getattr(reply, "tool_calls", [])],
               "finish_reason": getattr(reply, "finish_reason", None)}
    callbacks.emit("model", model_name(llm), messages=list(messages), **out, seconds=seconds,
                   **{k: v for k, v in kwargs.items() if k in ("temperature", "max_new_tokens", "seed")})
    return reply


def tool_call(tool: Any, arguments: str | dict[str, Any], callbacks: Callbacks) -> tuple[str, bool]:
    """Run `tool` (an `llmkit.apps.Tool`) on `arguments` with a ``tool`` event; (observation, ok).
    A failing tool gives its error as the observation (ok False), as `Tool.run` does."""
    start = time.perf_counter()
    observation = tool.run(arguments)
    from .tools import failed

    ok = not failed(observation)
    callbacks.emit("tool", tool.name, arguments=arguments, observation=observation, ok=ok,
                   seconds=round(time.perf_counter() - start, 4))
    return observation, ok
