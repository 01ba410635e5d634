"""Stand-ins for the agent and PAL tests: a scripted LLM that answers with canned replies (control
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


class TemplateTokenizer:
    """A chat template in one line: each message as ROLE: content, then 'ASSISTANT:'."""

    chat_templates = {"default": "(stand-in)"}

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False, **kwargs: Any) -> str:
        text = "".join(f"{m['role'].upper()}: {m['content']}\n" for m in messages)
        return text + ("ASSISTANT: " if add_generation_prompt else "")


class BatchLLM(ScriptedLLM):
    """A scripted local model: it has a tokenizer, so PAL batches its prompts into one `generate`."""

    def __init__(self, outputs: list[str]):
        super().__init__([])
        self.tokenizer = TemplateTokenizer()
        self.outputs = outputs
        self.generated: list[tuple[list[str], dict]] = []

    def generate(self, prompt: Any, **kwargs: Any) -> Any:
        self.generated.append((list(prompt), kwargs))
        return list(self.outputs)


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
