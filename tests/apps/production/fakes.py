"""Tiny stand-ins for the production tests: an LLM whose every answer is new (so a cache hit shows),
and a bag-of-words embedder."""

from __future__ import annotations

import re
import zlib

import numpy as np


class Counting:
    """An LLM answering "answer N" on its N-th call; `calls` records what it was asked."""

    name = "counting"

    def __init__(self) -> None:
        self.calls: list = []

    def _answer(self, asked) -> str:
        self.calls.append(asked)
        return f"answer {len(self.calls)}"

    def generate(self, prompt, gen=None, **kwargs):
        return self._answer(prompt)

    def stream(self, prompt, gen=None, timings=None, **kwargs):
        head, _, tail = self._answer(prompt).partition(" ")
        yield from (head, " " + tail)

    def chat(self, messages, gen=None, stream=False, timings=None, **kwargs):
        text = self._answer(messages)
        return iter([text]) if stream else text


class WordsEmbedder:
    """Each word hashed into 64 dimensions: texts sharing words are close."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def embed(self, texts, **kwargs):
        self.texts.extend(texts)
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()):
                out[i, zlib.crc32(w.encode()) % 64] += 1
        return out
