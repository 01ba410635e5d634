"""What the serving engine queues and streams: a `Request` (its prompt, settings, and the state the
engine fills in as it runs), the `Event`s a request emits, and the `Completion` it ends as."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..models.cache import EncoderMemory
from .blocks import Sequence as CacheSequence
from .generate import Completion, TextStream
from .sampling import GenerationConfig, Sampler


class QueueFullError(RuntimeError):
    """The engine's waiting queue is at its bound: try again later (HTTP 429/503)."""


class RequestTooLargeError(ValueError):
    """A request needs more cache than the whole pool holds."""


@dataclass
class Event:
    request_id: str
    text: str = ""
    token_id: int | None = None
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None
    finish_reason: str | None = None  # set on the request's last event
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Request:
    id: str
    prompt: list[int]
    gen: GenerationConfig
    on_event: Callable[[Event], None] | None = None
    adapter: str | None = None
    arrival: float = field(default_factory=time.perf_counter)
    # filled in by the engine
    generated: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    finish_reason: str | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    cache: CacheSequence = field(default_factory=CacheSequence)
    # an encoder-decoder's request: `prompt` is its source, encoded once into `memory`; the decoder
    # starts from `decoder_prompt` (the start token)
    decoder_prompt: list[int] | None = None
    memory: Any = field(default=None, repr=False)
    pending: int | None = None  # the sampled token not yet in the cache
    todo: list[int] = field(default_factory=list)  # the tokens being prefilled (prompt, or prompt + tokens so far)
    admitted_at_step: int = 0
    started: bool = False  # its first prefill chunk has run
    speculate: bool = False  # the engine drafts tokens for it (see `speculative.BatchDrafter`)
    draft_cache: Any = field(default=None, repr=False)  # the draft model's own KV cache
    draft_q: list[Any] = field(default_factory=list, repr=False)  # the draft's distributions at its proposals
    done: threading.Event = field(default_factory=threading.Event)
    # text and sampling machinery, set up by `Engine.submit`
    stream: TextStream | None = field(default=None, repr=False)
    sampler: Sampler | None = field(default=None, repr=False)

    @property
    def text(self) -> str:
        return self.stream.text if self.stream is not None else ""


def completion(req: Request) -> Completion:
    return Completion(text=req.text, token_ids=list(req.generated), finish_reason=req.finish_reason or "length",
                      prompt_tokens=len(req.prompt), logprobs=list(req.logprobs) if req.gen.logprobs else None,
                      top_logprobs=list(req.top_logprobs) if req.gen.top_logprobs else None)


class MemoryBatch:
    """The encoder outputs of a pass's rows as one `EncoderMemory` (None for a decoder-only model), kept and
    reused while the rows stay the same: an encoder-decoder's decoding steps stack them once, not per step."""

    def __init__(self):
        self.held: tuple[list[EncoderMemory], EncoderMemory] | None = None

    def of(self, rows: list[Request]) -> EncoderMemory | None:
        parts = [r.memory for r in rows]
        if parts[0] is None or len(parts) == 1:
            return parts[0]
        held = self.held
        if held is None or len(held[0]) != len(parts) or any(a is not b for a, b in zip(held[0], parts)):
            self.held = held = (parts, EncoderMemory.stack(parts))
        return held[1]

    def forget(self, memory: EncoderMemory | None) -> None:
        """Let the kept batch go with a finished request's memory."""
        if self.held is not None and any(m is memory for m in self.held[0]):
            self.held = None
