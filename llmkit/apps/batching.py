"""Many chat requests at once through any `LLM`: a local model runs them through the inference
engine's continuous batching; any other model (a remote server) answers them one by one, the
server doing its own batching. Every request is seen by the callbacks as a ``model`` event.

    replies = complete_chats(llm, [messages_a, messages_b], max_new_tokens=64, temperature=0)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from .callbacks import Callbacks, model_name

Messages = list[dict[str, Any]]
# the engine holds at most this many waiting requests; larger batches are fed in pieces
ENGINE_QUEUE = 128


@dataclass
class Reply:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    seconds: float  # this request's share of its batch's wall time (its own time when unbatched)


def engine_capable(llm: Any) -> bool:
    """Whether `llm` is a local decoder the inference engine can batch."""
    return (hasattr(llm, "chat_prompt") and hasattr(llm, "model") and not getattr(llm, "seq2seq", False)
            and getattr(getattr(llm, "model", None), "virtual_tokens", None) is None)


def complete_chats(llm: Any, conversations: Sequence[Messages], gens: Sequence[dict[str, Any]] | None = None,
                   batch_size: int = 16, callbacks: Callbacks | None = None, progress: bool = False,
                   desc: str = "generate", **gen: Any) -> list[Reply]:
    """The assistant's reply to each conversation. `gen` holds settings shared by all
    (max_new_tokens, temperature, stop, ...); `gens`, if given, one dict per conversation on top
    (e.g. a seed each). `batch_size` is the engine's running batch."""
    callbacks = callbacks or Callbacks()
    settings = [{**gen, **(gens[i] if gens else {})} for i in range(len(conversations))]
    if gens is not None and len(gens) != len(conversations):
        raise ValueError(f"{len(gens)} settings for {len(conversations)} conversations: give one per conversation")
    from tqdm.auto import tqdm

    bar = tqdm(total=len(conversations), desc=desc, unit="req", disable=not progress, leave=False)
    replies: list[Reply] = []
    try:
        if engine_capable(llm):
            replies = _engine(llm, conversations, settings, batch_size, bar)
        else:
            for messages, kw in zip(conversations, settings):
                replies.append(_one(llm, messages, kw))
                bar.update(1)
    finally:
        bar.close()
    name = model_name(llm)
    for messages, kw, r in zip(conversations, settings, replies):
        callbacks.emit("model", name, messages=list(messages), text=r.text, prompt_tokens=r.prompt_tokens,
                       completion_tokens=r.completion_tokens, finish_reason=r.finish_reason, seconds=r.seconds,
                       **{k: v for k, v in kw.items() if k in ("temperature", "max_new_tokens", "seed")})
    return replies


def _engine(llm: Any, conversations: Sequence[Messages], settings: list[dict[str, Any]], batch_size: int,
            bar: Any) -> list[Reply]:
    from ..infer.engine import Engine
    from ..infer.sampling import GenerationConfig

    engine = Engine(llm, max_batch=batch_size, max_queue=ENGINE_QUEUE)
    prompts = [llm.chat_prompt(list(m)) for m in conversations]
    gens = [llm.generation(None, **kw) if hasattr(llm, "generation") else GenerationConfig(**kw) for kw in settings]
    replies: list[Reply] = []
    for i in range(0, len(prompts), ENGINE_QUEUE):
        start = time.perf_counter()
        done = engine.generate(prompts[i:i + ENGINE_QUEUE], gens[i:i + ENGINE_QUEUE])
        share = (time.perf_counter() - start) / max(1, len(done))
        replies += [Reply(c.text, c.prompt_tokens, len(c.token_ids), c.finish_reason, share) for c in done]
        bar.update(len(done))
    return replies


def _one(llm: Any, messages: Messages, kw: dict[str, Any]) -> Reply:
    from ..infer.generate import Timings

    timings = Timings()
    start = time.perf_counter()
    text = "".join(llm.chat(list(messages), stream=True, timings=timings, **kw))
    return Reply(text, timings.prompt_tokens or None, timings.generated_tokens or None, timings.finish_reason,
                 time.perf_counter() - start)
