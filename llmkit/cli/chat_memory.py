"""`llmkit chat --memory`: which `llmkit.apps.memory` class remembers the conversation."""

from __future__ import annotations

import argparse

from .commands import positive_int


MEMORY_HELP = ("how the conversation is remembered: buffer (everything that fits the context), window (the newest "
               "turns within --memory-tokens), summary (that window, and a running summary of older turns written "
               "by the model, in the system message); without it, the oldest turns are dropped when the context is "
               "full")


def add_memory_args(p: argparse.ArgumentParser) -> None:
    """`llmkit chat`'s --memory and --memory-tokens."""
    p.add_argument("--memory", choices=("buffer", "window", "summary"), default=None, help=MEMORY_HELP)
    p.add_argument("--memory-tokens", type=positive_int, default=None, metavar="N",
                   help="the prompt budget of --memory window or summary, system message and summary included "
                        "(default: half the context left after max_new_tokens)")


def make_memory(args: argparse.Namespace, llm, max_new_tokens: int):
    """The `Memory` that --memory names (None without it)."""
    kind, tokens = getattr(args, "memory", None), getattr(args, "memory_tokens", None)
    if kind is None:
        if tokens is not None:
            raise ValueError("--memory-tokens sets the budget of --memory window or summary: add --memory")
        return None
    from ..apps.memory import BufferMemory, SummaryMemory, WindowMemory

    if kind == "buffer":
        return BufferMemory()
    if tokens is None:
        try:
            tokens = max(64, (llm.context_window - max_new_tokens) // 2)
        except (NotImplementedError, ConnectionError):  # a server that does not say its window
            tokens = 1024
    return WindowMemory(tokens) if kind == "window" else SummaryMemory(llm, tokens)
