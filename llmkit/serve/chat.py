"""``POST /v1/chat/completions``: the conversation through the model's chat template, `n`
choices on the engine, streamed as chunks or answered whole."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response

from .errors import APIError
from .inputs import parse_body
from .responses import (DONE, Envelope, TokenText, chat_completion, chat_event_chunk, chat_logprob, chat_role_chunks,
                        chat_usage_chunk)
from .schemas import ChatCompletionRequest
from .server import ServedModel, Server

router = APIRouter()


def _prompt(served: ServedModel, messages: list[dict[str, str]]) -> list[int]:
    try:
        return served.llm.chat_prompt(messages)
    except Exception as e:  # a template that rejects the conversation (e.g. roles out of order)
        raise APIError(400, f"the chat template rejected the messages: {e}", param="messages") from None


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    server: Server = request.app.state.server
    req: ChatCompletionRequest = await parse_body(request, ChatCompletionRequest, server.max_body_bytes)
    served = server.generator(req.model)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    prompt = _prompt(served, messages)
    top = req.top_logprobs or 0
    if top and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    gen = server.generation(req, served, len(prompt), max_tokens, None, req.logprobs, top)
    make = server.constraint(served, req.response_format, gen)
    queue: asyncio.Queue = asyncio.Queue()
    reqs = server.submit(served, prompt, gen, req.n, queue, constraint=make)
    env = Envelope.new("chatcmpl", served.name)
    text = (lambda t: server.token_text(served, t)) if req.logprobs else None

    def account() -> None:
        server.account(request, served.name, len(prompt), sum(len(r.generated) for r in reqs),
                       "\n".join(f"{m['role']}: {m['content']}" for m in messages), "\n".join(r.text for r in reqs))

    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return server.stream(request, _chunks(server, request, served, reqs, queue, env, text, include_usage,
                                              len(prompt)), account)
    logprobs: list[list[dict]] = [[] for _ in reqs]
    async for i, event in server.events(request, served, reqs, queue):
        if text is not None and event.token_id is not None:
            logprobs[i].append(chat_logprob(text, event))
    if any(r.finish_reason is None for r in reqs):
        return Response(status_code=499)  # the client left; nobody reads this
    account()
    return chat_completion(env, reqs, logprobs if req.logprobs else None, len(prompt))


async def _chunks(server: Server, request: Request, served: ServedModel, reqs: list, queue: asyncio.Queue,
                  env: Envelope, text: TokenText | None, include_usage: bool, prompt_len: int) -> AsyncIterator[str]:
    for chunk in chat_role_chunks(env, len(reqs)):
        yield chunk
    async for i, event in server.events(request, served, reqs, queue):
        chunk = chat_event_chunk(env, i, event, text)
        if chunk is not None:
            yield chunk
    if include_usage:
        yield chat_usage_chunk(env, prompt_len, sum(len(r.generated) for r in reqs))
    yield DONE
