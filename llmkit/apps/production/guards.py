"""The hook for guards (the guards themselves are `llmkit.apps.safety`'s): objects that check a
call's input and its reply, run by `llmkit.apps.safety.GuardSet`.

A guard (`llmkit.apps.safety.Guard`) has a ``name`` and either or both of::

    check_input(messages, documents=()) -> Decision        # before the call: allow, refuse, or rewrite
    check_output(messages, reply, documents=()) -> Decision   # after it: allow, refuse, or rewrite the reply

An output guard is given the conversation as the caller gave it (before any input rewrite), as
the safety guards expect: `PiiGuard` puts the user's own data back in place of its placeholders.
Guards run in order, each on what the one before let through, each inside `FailClosed`. A refusal
raises `GuardRefused` (or, with ``on_refusal="reply"``, its text becomes the reply). A guard that
raises, or answers something that is not a `Decision`, fails closed: `GuardFailed` (the failure
is logged), so a broken guard never lets an unchecked call or reply through.

Replies with tool calls are checked whole: the text, and each call as ``name + "\\n" +
arguments``. A refusal refuses the call; a rewrite of a call must keep its name and leave
arguments that still parse as JSON (a redacted secret inside a string does), else the call is
refused. With output guards a stream is produced whole and checked before any of it is yielded;
a rewritten stream is rebuilt from the checked reply.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any, Sequence

from ...infer.tool_calls import ChatReply, ToolCall
from ...infer.tool_parse import ArgumentsDelta, CallStart, ContentDelta, Finish, reply_from_events
from ..safety.guard import Decision, Guard, GuardSet  # noqa: F401  (the one Decision and Guard, one chaining loop)
from .errors import GuardFailed, GuardRefused

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]


def guard_name(guard: Any) -> str:
    """A guard's name for messages: its `name`, else its class name."""
    return str(getattr(guard, "name", None) or type(guard).__name__)


def check_guards(guards: Sequence[Any]) -> list[Any]:
    """`guards` as a list, each with a check_input or check_output method, else a TypeError naming it."""
    out = list(guards or [])
    for g in out:
        if not callable(getattr(g, "check_input", None)) and not callable(getattr(g, "check_output", None)):
            raise TypeError(f"guard {guard_name(g)!r} has neither check_input(messages) nor "
                            "check_output(messages, reply): give it at least one")
    return out


class _Named:
    """A guard whose decisions carry its name (`GuardSet` returns the refusing decision, and the
    error must say whose it was). A guard written without the `documents` argument is called
    without it."""

    def __init__(self, guard: Any):
        self.guard, self.name = guard, guard_name(guard)

    def check_input(self, messages: Messages, documents: Sequence[str] = ()) -> Any:
        return self._named(self.guard.check_input(messages, *((documents,) if documents else ())))

    def check_output(self, messages: Messages, reply: str, documents: Sequence[str] = ()) -> Any:
        return self._named(self.guard.check_output(messages, reply, *((documents,) if documents else ())))

    def _named(self, decision: Any) -> Any:
        return replace(decision, guard=decision.guard or self.name) if isinstance(decision, Decision) else decision


def _set(guards: Sequence[Any], stage: str) -> GuardSet:
    return GuardSet([_Named(g) for g in guards if callable(getattr(g, f"check_{stage}", None))])


def _refuse(decision: Decision, stage: str, where: str = "") -> None:
    name = decision.guard or "?"
    if decision.category == "guard_error":
        raise GuardFailed(name, stage, f"{decision.reason}{where} (fail closed: fix the guard or remove it)")
    raise GuardRefused(name, stage, f"{decision.reason or 'no reason given'}{where}", decision.text)


def run_input_guards(guards: Sequence[Any], messages: Messages) -> Messages:
    """The messages after every input guard (a guard may rewrite them), or `GuardRefused`."""
    guard_set = _set(guards, "input")
    if not len(guard_set):
        return messages
    decision = guard_set.check_input(messages)
    if decision.refused:
        _refuse(decision, "input")
    return [dict(m) for m in decision.messages] if decision.messages is not None else messages


def run_output_guards(guards: Sequence[Any], messages: Messages, reply: str, where: str = "") -> str:
    """The reply after every output guard (a guard may rewrite it), or `GuardRefused`. `messages`
    is the conversation as the caller gave it."""
    guard_set = _set(guards, "output")
    if not len(guard_set):
        return reply
    decision = guard_set.check_output(messages, reply)
    if decision.refused:
        _refuse(decision, "output", where)
    return decision.text if decision.text is not None else reply


def has_output_guards(guards: Sequence[Any]) -> bool:
    """Whether any guard checks replies (then streams are produced whole before they are yielded)."""
    return any(callable(getattr(g, "check_output", None)) for g in guards)


def check_call(guards: Sequence[Any], messages: Messages, call: ToolCall) -> ToolCall:
    """A tool call after the output guards, which see it as ``name + "\\n" + arguments``; refused
    (`GuardRefused`) when a guard refuses it, or rewrites it into another name or arguments that
    no longer parse as JSON."""
    where = f" (in the call of tool {call.name!r})"
    text = f"{call.name}\n{call.arguments}"
    checked = run_output_guards(guards, messages, text, where)
    if checked == text:
        return call
    name, _, arguments = checked.partition("\n")
    if name != call.name:
        raise GuardRefused("output guards", "output", f"a guard rewrote the tool name {call.name!r}{where}: "
                                                      "a call cannot be redacted that way, so it is refused")
    try:
        json.loads(arguments)
    except json.JSONDecodeError:
        raise GuardRefused("output guards", "output", f"a guard's rewrite left arguments that are not JSON{where}: "
                                                      "the call is refused rather than sent broken") from None
    return replace(call, arguments=arguments)


def check_reply(guards: Sequence[Any], messages: Messages, reply: Any) -> Any:
    """A reply (text, or a `ChatReply` with tool calls) after the output guards."""
    if isinstance(reply, str):
        return run_output_guards(guards, messages, reply)
    if isinstance(reply, ChatReply):
        content = run_output_guards(guards, messages, reply.content) if reply.content else reply.content
        return ChatReply(content, [check_call(guards, messages, c) for c in reply.tool_calls], reply.finish_reason)
    text = getattr(reply, "content", None)
    if isinstance(text, str) and text:
        return replace(reply, content=run_output_guards(guards, messages, text))
    return reply


def text_of(parts: Sequence[Any]) -> str:
    """The text of stream items: text deltas, or the `ContentDelta`s of a tool-call stream."""
    return "".join(p if isinstance(p, str) else p.text for p in parts if isinstance(p, (str, ContentDelta)))


def tools_stream(parts: Sequence[Any]) -> bool:
    """Whether stream items are tool-call events rather than text."""
    return any(not isinstance(p, str) for p in parts)


def check_stream(guards: Sequence[Any], messages: Messages, parts: list[Any]) -> list[Any]:
    """The items of a whole stream after the output guards: as they came when no guard changed
    anything, else rebuilt from the checked reply (one text delta, or the checked reply's events)."""
    if not tools_stream(parts):
        text = text_of(parts)
        checked = run_output_guards(guards, messages, text)
        return parts if checked == text else [checked]
    reply = reply_from_events(parts)
    checked = check_reply(guards, messages, reply)
    if checked == reply:
        return parts
    events: list[Any] = [ContentDelta(checked.content)] if checked.content else []
    for i, call in enumerate(checked.tool_calls):
        events += [CallStart(i, call.id, call.name), ArgumentsDelta(i, call.arguments)]
    return events + [Finish(checked.finish_reason)]
