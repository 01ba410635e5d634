"""Many chat requests at once through any `LLM`: a local model runs them through the inference
engine's continuous batching; any other model (a remote server) answers them one by one, the
server doing its own batching. Every request is seen by the callbacks as a ``model`` event (or an
``error`` event when it failed).

    replies = complete_chats(llm, [messages_a, messages_b], max_new_tokens=64, temperature=0)

`prefill` starts the assistant's turn with fixed text (PAL's opening ```python fence, so a weak
model begins with code). Only a local model can be prefilled: a server renders the chat itself
and OpenAI's API has no way to begin the reply, so there the conversation is asked without it and
`Reply.prefill` is empty — a caller whose stop strings assume the prefill (PAL stops at the
closing fence) checks `engine_capable(llm)` first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from .callbacks import Callbacks, model_name

Messages = list[dict[str, Any]]
# the engine holds at most this many waiting requests; larger batches are fed in pieces
ENGINE_QUEUE = 128


ERRORS = ("raise", "return")


@dataclass
class Reply:
    """One conversation's reply: the generated `text` (without the prefill), token counts where the
    model gives them, and `error` ("Type: message") when the request failed and errors="return"."""

    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    seconds: float  # this request's share of its batch's wall time (its own time when unbatched)
    prefill: str = ""  # the text the reply was prefilled with (empty where it could not be)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def engine_capable(llm: Any) -> bool:
    """Whether `llm` is a local decoder the inference engine can batch."""
    return (hasattr(llm, "chat_prompt") and hasattr(llm, "model") and not getattr(llm, "seq2seq", False)
            and getattr(getattr(llm, "model", None), "virtual_tokens", None) is None)


def complete_chats(llm: Any, conversations: Sequence[Messages], gens: Sequence[dict[str, Any]] | None = None,
                   batch_size: int = 16, callbacks: Callbacks | Sequence[Callbacks] | None = None,
                   progress: bool = False, desc: str = "generate", prefill: str | None = None, errors: str = "raise",
                   **gen: Any) -> list[Reply]:
    """The assistant's reply to each conversation. `gen` holds settings shared by all
    (max_new_tokens, temperature, stop, ...); `gens`, if given, one dict per conversation on top
    (e.g. a seed each). `batch_size` is the engine's running batch. `callbacks` is one `Callbacks`
    for all, or one per conversation (an agent's questions are separate runs). `prefill` begins
    each assistant turn on a local model (see the module docstring). `errors="raise"` lets the
    first failing request raise; "return" gives it a `Reply` with `error` set and answers the rest
    (a prompt too long for the context fails its own question, not the batch)."""
    if errors not in ERRORS:
        raise ValueError(f"errors={errors!r} must be one of {', '.join(ERRORS)}")
    if gens is not None and len(gens) != len(conversations):
        raise ValueError(f"{len(gens)} settings for {len(conversations)} conversations: give one per conversation")
    if isinstance(callbacks, Callbacks) or callbacks is None:
        each = [callbacks or Callbacks()] * len(conversations)
    else:
        each = list(callbacks)
        if len(each) != len(conversations):
            raise ValueError(f"{len(each)} callbacks for {len(conversations)} conversations: give one Callbacks, "
                             "or one per conversation")
    settings = [{**gen, **(gens[i] if gens else {})} for i in range(len(conversations))]
    if not conversations:
        return []
    from tqdm.auto import tqdm

    bar = tqdm(total=len(conversations), desc=desc, unit="req", disable=not progress, leave=False)
    replies: list[Reply] = []  # filled as requests finish, so that a raise still reports those before it
    try:
        if engine_capable(llm):
            _engine(llm, conversations, settings, batch_size, bar, prefill or "", errors, replies)
        else:  # a server: it renders the chat itself and cannot be prefilled
            for messages, kw in zip(conversations, settings):
                replies.append(_one(llm, messages, kw, errors))
                bar.update(1)
    except Exception as e:  # errors="raise": the calls made before it are events too, and so is the failure
        _emit(llm, conversations, settings, replies, each)
        if len(replies) < len(conversations):
            each[len(replies)].emit("error", model_name(llm), where="model", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        bar.close()
    _emit(llm, conversations, settings, replies, each)
    return replies


def _emit(llm: Any, conversations: Sequence[Messages], settings: list[dict[str, Any]], replies: list[Reply],
          each: list[Callbacks]) -> None:
    """A ``model`` event for each reply (an ``error`` event for each that failed)."""
    name = model_name(llm)
    for messages, kw, r, cb in zip(conversations, settings, replies, each):
        if r.error is not None:
            cb.emit("error", name, where="model", error=r.error, seconds=round(r.seconds, 4))
            continue
        cb.emit("model", name, messages=list(messages), text=r.text, prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens, finish_reason=r.finish_reason, seconds=r.seconds,
                **({"prefill": r.prefill} if r.prefill else {}),
                **{k: v for k, v in kw.items() if k in ("temperature", "max_new_tokens", "seed")})


def _failed(e: Exception, seconds: float = 0.0) -> Reply:
    return Reply("", None, None, None, seconds, error=f"{type(e).__name__}: {e}")


def _engine(llm: Any, conversations: Sequence[Messages], settings: list[dict[str, Any]], batch_size: int,
            bar: Any, prefill: str, errors: str, replies: list[Reply]) -> list[Reply]:
    """Run the conversations through the inference engine, `ENGINE_QUEUE` at a time, appending
    each piece's replies to `replies` as the piece finishes."""
    from ..infer.engine import Engine, completion
    from ..infer.sampling import GenerationConfig

    # no bigger than the work: the engine's KV cache is sized by its batch
    engine = Engine(llm, max_batch=max(1, min(batch_size, len(conversations))), max_queue=ENGINE_QUEUE)
    extra = llm.tokenize(prefill, add_special_tokens=False) if prefill else []
    for i in range(0, len(conversations), ENGINE_QUEUE):
        start = time.perf_counter()
        reqs: list[Any] = []
        for messages, kw in zip(conversations[i:i + ENGINE_QUEUE], settings[i:i + ENGINE_QUEUE]):
            try:  # each request on its own: one that cannot run (too long) fails alone
                gen = llm.generation(None, **kw) if hasattr(llm, "generation") else GenerationConfig(**kw)
                reqs.append(engine.submit(list(llm.chat_prompt(list(messages))) + extra, gen))
            except Exception as e:
                if errors == "raise":
                    raise
                reqs.append(e)
        try:
            while not all(r.done.is_set() for r in reqs if not isinstance(r, Exception)):
                engine.step()
        except Exception as e:  # the engine itself failed: every request still running fails with it
            if errors == "raise":
                raise
            reqs = [r if isinstance(r, Exception) or r.done.is_set() else e for r in reqs]
        share = (time.perf_counter() - start) / max(1, len(reqs))
        for r in reqs:
            if isinstance(r, Exception):
                replies.append(_failed(r, share))
                continue
            c = completion(r)
            replies.append(Reply(c.text, c.prompt_tokens, len(c.token_ids), c.finish_reason, share, prefill))
        bar.update(len(reqs))
    return replies


def _one(llm: Any, messages: Messages, kw: dict[str, Any], errors: str) -> Reply:
    from ..infer.generate import Timings

    timings = Timings()
    start = time.perf_counter()
    try:
        text = "".join(llm.chat(list(messages), stream=True, timings=timings, **kw))
    except Exception as e:
        if errors == "raise":
            raise
        return _failed(e, time.perf_counter() - start)
    return Reply(text, timings.prompt_tokens or None, timings.generated_tokens or None, timings.finish_reason,
                 time.perf_counter() - start)
