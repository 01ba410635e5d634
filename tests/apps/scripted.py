"""Stand-ins for the agent and PAL tests: scripted LLMs that answer with canned replies (control
flow only: no model runs), and the real SmolLM2 loaded once per test session."""

from __future__ import annotations

import copy
import functools
from typing import Any


class ScriptedLLM:
    """An `LLM` whose `chat` returns `replies` in order (a reply that is an exception is raised) and
    records each call's messages and options; `tokenize` counts one token a word."""

    name = "scripted"

    def __init__(self, replies: list[Any]):
        self.replies = list(replies)
        self.calls: list[tuple[list[dict], dict]] = []

    def chat(self, messages: list[dict], **kwargs: Any) -> Any:
        self.calls.append((copy.deepcopy(messages), kwargs))
        if not self.replies:
            raise AssertionError("the script has no more replies")
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def generate(self, prompt: Any, **kwargs: Any) -> Any:
        raise AssertionError("the scripted model only chats")

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(range(len(text.split())))


class QuestionLLM(ScriptedLLM):
    """A scripted model with a script per question (the text after "Question: " in the first user
    turn), so that questions asked in any interleaving get their own replies in order."""

    def __init__(self, scripts: dict[str, list[Any]]):
        super().__init__([])
        self.scripts = {q: list(replies) for q, replies in scripts.items()}

    def chat(self, messages: list[dict], **kwargs: Any) -> Any:
        question = next(m["content"] for m in messages if m["role"] == "user").removeprefix("Question: ")
        self.replies = self.scripts[question]
        return super().chat(messages, **kwargs)


@functools.lru_cache(maxsize=None)
def smol_llm(path: str):
    """SmolLM2 loaded once for every test module that asks (loading takes seconds)."""
    import llmkit

    return llmkit.load(path)


def closed_port() -> int:
    """A TCP port on loopback that nobody listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
