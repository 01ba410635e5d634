"""Guards through guarded(): output guards see the caller's own conversation (the real PiiGuard
restores the user's data), tool calls and tool-call streams are checked and rebuilt, and a
guard's refusal is a decision that no retry or fallback gets round."""

from __future__ import annotations

import json

import pytest

from llmkit.apps.production import (AllAttemptsFailed, BudgetExceeded, Decision, GuardFailed, GuardRefused, classify,
                                    guarded)
from llmkit.apps.production.breaker import FALLBACK, RAISE, RETRY
from llmkit.apps.safety import PiiGuard
from llmkit.infer.remote import EndpointError, RequestRefused
from llmkit.infer.tool_calls import ChatReply, ToolCall
from llmkit.infer.tool_parse import ArgumentsDelta, CallStart, ContentDelta, Finish
from tests.apps.production.fakes import Counting

MINE = [{"role": "user", "content": "Please confirm my address me.myself@example.net"}]
SECRET = "HERON-5528"


class Confirms:
    """Replies with the last word it was sent (so a placeholder it got comes back)."""

    name = "confirms"

    def __init__(self) -> None:
        self.seen: list = []

    def chat(self, messages, gen=None, stream=False, timings=None, **kwargs):
        self.seen.append(messages)
        text = "Confirmed, I'll write to " + messages[-1]["content"].split()[-1]
        return iter([text[:10], text[10:]]) if stream else text


def test_output_guards_see_the_callers_conversation_so_pii_guard_restores_the_users_own_data():
    inner = Confirms()
    llm = guarded(inner, guards=[PiiGuard()], cache="exact")
    expected = "Confirmed, I'll write to me.myself@example.net"
    assert llm.chat(MINE, temperature=0) == expected
    assert inner.seen[-1][-1]["content"] == "Please confirm my address <EMAIL_1>"  # the model never saw it
    assert llm.chat(MINE, temperature=0) == expected and len(inner.seen) == 1  # a cache hit is restored too
    assert "".join(llm.chat(MINE, stream=True, temperature=0.5)) == expected  # and a stream
    assert MINE[0]["content"].endswith("me.myself@example.net")  # the caller's messages are untouched


class Redact:
    """Rewrites the secret wherever it appears; refuses a reply that asks to delete anything."""

    name = "redact"

    def check_output(self, messages, reply, documents=()):
        if "delete_everything" in reply:
            return Decision("refuse", text="I can't do that.", reason="a destructive tool call")
        if SECRET in reply:
            return Decision("rewrite", text=reply.replace(SECRET, "[redacted]"), reason="a secret")
        return Decision()


class BreaksJson:
    name = "breaks-json"

    def check_output(self, messages, reply, documents=()):
        return Decision("rewrite", text=reply.replace('"', "")) if SECRET in reply else Decision()


class Tools:
    """A model that calls a tool with the secret in its arguments and in its text."""

    name = "tools"

    def __init__(self, tool: str = "send_sms") -> None:
        self.tool = tool

    def chat(self, messages, gen=None, stream=False, timings=None, tools=None, **kwargs):
        args = json.dumps({"text": f"code {SECRET}"})
        if stream:
            return iter([ContentDelta(f"Sending {SECRET}"), CallStart(0, "c1", self.tool), ArgumentsDelta(0, args[:5]),
                         ArgumentsDelta(0, args[5:]), Finish("tool_calls")])
        return ChatReply(f"Sending {SECRET}", [ToolCall(self.tool, args, "c1")], "tool_calls")


TOOLS = [{"type": "function", "function": {"name": "send_sms", "description": "send a text",
                                           "parameters": {"type": "object", "properties": {}}}}]


def test_tool_calls_and_tool_call_streams_are_checked_and_rebuilt_by_output_guards():
    llm = guarded(Tools(), guards=[Redact()])
    reply = llm.chat(MINE, tools=TOOLS)
    assert reply.content == "Sending [redacted]"
    assert [(c.name, json.loads(c.arguments), c.id) for c in reply.tool_calls] == [
        ("send_sms", {"text": "code [redacted]"}, "c1")]
    events = list(llm.chat(MINE, tools=TOOLS, stream=True))
    assert events == [ContentDelta("Sending [redacted]"), CallStart(0, "c1", "send_sms"),
                      ArgumentsDelta(0, json.dumps({"text": "code [redacted]"})), Finish("tool_calls")]
    assert SECRET not in repr(events)
    with pytest.raises(GuardRefused, match=r"guard 'redact' on the output: a destructive tool call \(in the call of "
                                           r"tool 'delete_everything'\)"):
        guarded(Tools("delete_everything"), guards=[Redact()]).chat(MINE, tools=TOOLS)
    with pytest.raises(GuardRefused, match="in the call of tool 'delete_everything'"):
        list(guarded(Tools("delete_everything"), guards=[Redact()]).chat(MINE, tools=TOOLS, stream=True))
    with pytest.raises(GuardRefused, match="arguments that are not JSON"):  # never sent broken
        guarded(Tools(), guards=[BreaksJson()]).chat(MINE, tools=TOOLS)


class Refuses:
    name = "refuses"

    def check_input(self, messages, documents=()):
        return Decision("refuse", text="I can't help with that.", reason="harmful")


class Unguarded:
    name = "unguarded"
    calls = 0

    def chat(self, messages, gen=None, stream=False, timings=None, **kwargs):
        Unguarded.calls += 1
        return "UNGUARDED ANSWER"


def test_a_refusal_inside_a_nested_guarded_is_never_retried_nor_served_by_a_fallback():
    model = Counting()
    inner = guarded(model, guards=[Refuses()], retries=0)
    slept: list[float] = []
    outer = guarded(inner, fallbacks=[Unguarded()], retries=2, sleep=slept.append)
    with pytest.raises(GuardRefused, match="refused by guard 'refuses' on the input: harmful") as e:
        outer.chat([{"role": "user", "content": "something harmful"}])
    assert not isinstance(e.value, OSError)  # code catching I/O errors does not swallow a refusal
    assert Unguarded.calls == 0 and model.calls == [] and slept == []
    over = guarded(guarded(Counting(), budget={"call_tokens": 5}), fallbacks=[Unguarded()])
    with pytest.raises(BudgetExceeded):
        over.chat([{"role": "user", "content": "a long question"}])
    assert Unguarded.calls == 0
    assert [classify(x) for x in (GuardRefused("g", "input", "r"), GuardFailed("g", "output", "r"),
                                  BudgetExceeded("call tokens", 0, 9, 5), RequestRefused("400"), ValueError("x"))] == \
        [RAISE] * 5
    assert [classify(x) for x in (ConnectionResetError("reset"), EndpointError("503", status=503),
                                  EndpointError("x", kind="connection"))] == [RETRY] * 3
    assert [classify(x) for x in (TimeoutError("slow"), FileNotFoundError("weights.safetensors"),
                                  AllAttemptsFailed("inner chain failed", []), EndpointError("401", status=401))] == \
        [FALLBACK] * 4
