"""OpenAI's response bodies and stream chunks, built from engine events and finished requests:
ids, usage, finish reasons, log-probs in the chat and the legacy completions shapes, model cards,
and server-sent events."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from ..infer.engine import Event

TokenText = Callable[[int], str]  # a token id as its log-probs entry names it
DONE = "data: [DONE]\n\n"


@dataclass(frozen=True)
class Envelope:
    """What every body and chunk of one response repeats: its id, creation time and model."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, prefix: str, model: str) -> Envelope:
        return cls(f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time()), model)

    def body(self, object: str, **fields: Any) -> dict[str, Any]:
        return {"id": self.id, "object": object, "created": self.created, "model": self.model, **fields}


def sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(reason: str | None) -> str | None:
    # the engine's "cancelled" and "error" are no OpenAI reasons: the text simply stopped there
    return {"cancelled": "stop", "error": "stop"}.get(reason, reason) if reason else None


def model_card(served: Any, embedder: Any = None) -> dict[str, Any]:
    """A `ServedModel` in /v1/models; max_model_len as vLLM gives it, start_token_id (what an
    empty context starts from), quantization, generation_defaults (the model's own sampling
    settings, which fill what a request leaves out), embedding_dim (the length of the vectors
    /v1/embeddings answers for it: those of `embedder`, the served model that embeds for it, if
    not itself), generates (false for an encoder, which only embeds) and encoder_decoder (true for
    T5: prompts are sources, and there is no echo scoring) are ours."""
    return {"id": served.name, "object": "model", "created": served.created, "owned_by": "llmkit",
            "max_model_len": served.llm.config.context_window, "start_token_id": served.llm.start_token_id,
            "quantization": served.quantization,
            "generation_defaults": dict(getattr(served.llm, "generation_defaults", {})),
            "embedding_dim": (embedder or served).llm.embedding_dim, "generates": served.llm.generates,
            "encoder_decoder": served.llm.config.is_seq2seq}


# ----------------------------------------------------------------------------- chat
def chat_logprob(text: TokenText, event: Event) -> dict[str, Any]:
    """One entry of a chat choice's ``logprobs.content``: the token, its log-prob, its bytes, and
    its alternatives in the same form."""
    def entry(token: int, logprob: float) -> dict[str, Any]:
        t = text(token)
        return {"token": t, "logprob": logprob, "bytes": list(t.encode("utf-8"))}

    return {**entry(event.token_id, event.logprob),
            "top_logprobs": [entry(t, lp) for t, lp in (event.top_logprobs or {}).items()]}


def chat_role_chunks(env: Envelope, n: int, content: str | None = "") -> list[str]:
    """The chunks that open a chat stream: each choice speaks as the assistant (with tools its
    content starts as null, as a reply of calls only stays)."""
    return [sse(env.body("chat.completion.chunk", choices=[
        {"index": i, "delta": {"role": "assistant", "content": content}, "logprobs": None, "finish_reason": None}]))
        for i in range(n)]


def chat_event_chunk(env: Envelope, index: int, event: Event, text: TokenText | None) -> str | None:
    """The chunk of one engine event (None when it carries nothing); `text` when log-probs are asked."""
    choice: dict[str, Any] = {"index": index, "delta": {}, "logprobs": None,
                              "finish_reason": finish_reason(event.finish_reason)}
    if event.text:
        choice["delta"]["content"] = event.text
    if text is not None and event.token_id is not None:
        choice["logprobs"] = {"content": [chat_logprob(text, event)]}
    if not (choice["delta"] or choice["logprobs"] or choice["finish_reason"]):
        return None
    return sse(env.body("chat.completion.chunk", choices=[choice]))


def chat_delta_chunk(env: Envelope, index: int, delta: dict[str, Any], finish: str | None = None) -> str:
    """A chunk of a reply read through the tool-call parser: a content or tool-call delta, or the end."""
    return sse(env.body("chat.completion.chunk", choices=[
        {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]))


def chat_usage_chunk(env: Envelope, prompt: int, completion: int) -> str:
    return sse(env.body("chat.completion.chunk", choices=[], usage=usage(prompt, completion)))


def chat_completion(env: Envelope, reqs: list, logprobs: list[list[dict]] | None, prompt: int,
                    replies: list | None = None) -> dict[str, Any]:
    """The whole chat reply of finished engine requests (one per choice); `replies` (`ChatReply`s)
    when tools were offered, whose calls become ``tool_calls``."""
    choices = [{"index": i, "message": {"role": "assistant", "content": r.text},
                "logprobs": {"content": logprobs[i]} if logprobs is not None else None,
                "finish_reason": finish_reason(r.finish_reason)} for i, r in enumerate(reqs)]
    for choice, reply in zip(choices, replies or []):
        choice["message"], choice["finish_reason"] = reply.message(), reply.finish_reason
    return env.body("chat.completion", choices=choices, usage=usage(prompt, sum(len(r.generated) for r in reqs)))


# ----------------------------------------------------------------------------- completions
def completion_logprobs(text: TokenText, ids: list[int], values: list[float | None],
                        tops: list[dict[int, float] | None] | None) -> dict[str, Any]:
    """The legacy completions ``logprobs``: parallel lists of tokens, their log-probs, their
    alternatives (None when not asked for) and where each token starts in the choice's text."""
    tokens = [text(t) for t in ids]
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": tokens, "token_logprobs": values,
            "top_logprobs": None if tops is None else [None if d is None else {text(t): v for t, v in d.items()}
                                                       for d in tops],
            "text_offset": offsets}


def completion_event_chunk(env: Envelope, index: int, event: Event, text: TokenText | None,
                           with_tops: bool) -> str | None:
    """The chunk of one engine event (None when it carries nothing); `text` when log-probs are asked."""
    choice: dict[str, Any] = {"index": index, "text": event.text, "logprobs": None,
                              "finish_reason": finish_reason(event.finish_reason)}
    if text is not None and event.token_id is not None:
        choice["logprobs"] = completion_logprobs(text, [event.token_id], [event.logprob],
                                                 [event.top_logprobs or {}] if with_tops else None)
    if not (event.text or choice["logprobs"] or choice["finish_reason"]):
        return None
    return sse(env.body("text_completion", choices=[choice]))


def text_completion(env: Envelope, choices: list[dict], prompt: int, completion: int) -> dict[str, Any]:
    return env.body("text_completion", choices=choices, usage=usage(prompt, completion))
