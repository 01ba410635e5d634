"""``POST /v1/chat/completions``: the conversation through the model's chat template, `n`
choices on the engine, streamed as chunks or answered whole. With `tools` the answer is generated
under the calls' grammar and read back into ``tool_calls`` (streamed as deltas of their arguments),
as `llmkit.infer.tool_calls` describes."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..infer.tool_calls import ToolCallError, tool_prompt
from ..infer.tool_parse import ContentDelta, ToolCallParser, openai_delta, parse_tool_calls
from ..infer.engine import Event
from .errors import APIError
from .guarding import Checked, mark_guarded, no_guarded_logprobs, replay
from .inputs import parse_body
from .responses import (DONE, Envelope, TokenText, chat_completion, chat_delta_chunk, chat_event_chunk, chat_logprob,
                        chat_role_chunks, chat_usage_chunk, finish_reason)
from .schemas import ChatCompletionRequest
from .server import ServedModel, Server

router = APIRouter()


def _prompt(served: ServedModel, req: ChatCompletionRequest, messages: list[dict]) -> tuple[list[int], dict | None]:
    """The prompt ids, and with tools the grammar of the calls (as a response_format)."""
    try:
        if not req.uses_tools():
            return served.llm.chat_prompt(messages), None
        if served.llm.config.is_seq2seq:
            raise APIError(400, f"{served.name} is an encoder-decoder: tool calling needs a decoder with a chat "
                                "template", param="tools")
        if req.response_format is not None and req.response_format.type != "text":
            raise APIError(400, "response_format cannot be combined with tools: the tool calls' grammar shapes the "
                                "answer", param="response_format")
        if req.logprobs:
            raise APIError(400, "logprobs are not supported with tools by llmkit serve", param="logprobs")
        tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
        choice = req.tool_choice.model_dump() if hasattr(req.tool_choice, "model_dump") else req.tool_choice
        return tool_prompt(served.llm.tokenizer, messages, tools, choice, req.parallel_tool_calls)
    except ToolCallError as e:
        raise APIError(400, str(e), param=e.param) from None
    except APIError:
        raise
    except Exception as e:  # a template that rejects the conversation (e.g. roles out of order)
        raise APIError(400, f"the chat template rejected the messages: {e}", param="messages") from None


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    server: Server = request.app.state.server
    req: ChatCompletionRequest = await parse_body(request, ChatCompletionRequest, server.max_body_bytes)
    served = server.generator(req.model)
    messages = asked = [m.as_dict() for m in req.messages]
    guards = server.guards
    if guards is not None:
        no_guarded_logprobs(guards, req.logprobs)
        messages, decision = await guards.check_input(asked)
        if decision.action == "refuse":
            return _refused(server, request, served, req, asked, guards.refused(decision, req.n))
    prompt, grammar = _prompt(served, req, messages)
    top = req.top_logprobs or 0
    if top and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    gen = server.generation(req, served, len(prompt), max_tokens, None, req.logprobs, top)
    # compiled off the event loop: a large grammar must not stall every other request
    make = await asyncio.to_thread(server.constraint, served, grammar or req.response_format, gen)
    tools = req.uses_tools()
    queue: asyncio.Queue = asyncio.Queue()
    reqs = server.submit(served, prompt, gen, req.n, queue, constraint=make)
    env = Envelope.new("chatcmpl", served.name)
    text = (lambda t: server.token_text(served, t)) if req.logprobs else None
    sent: list = reqs  # what the client gets: the engine's requests, or their replies as the guards left them

    def account() -> None:
        server.account(request, served.name, len(prompt), sum(len(r.generated) for r in reqs),
                       _conversation(messages), "\n".join(r.text for r in sent))

    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    if req.stream and guards is None:
        return server.stream(request, _chunks(server.events(request, served, reqs, queue), env, len(reqs), text,
                                              include_usage, len(prompt), reqs, tools), account)
    logprobs: list[list[dict]] = [[] for _ in reqs]
    async for i, event in server.events(request, served, reqs, queue):
        if text is not None and event.token_id is not None:
            logprobs[i].append(chat_logprob(text, event))
    if any(r.finish_reason is None for r in reqs):
        return Response(status_code=499)  # the client left; nobody reads this
    if guards is not None:
        # each reply is checked whole before any of it is sent; a guarded stream is then sent as it stands
        sent = await guards.check_outputs(asked, reqs, on_error=lambda: server.account(
            request, served.name, len(prompt), sum(len(r.generated) for r in reqs), _conversation(messages), None,
            status=500))
        if req.stream:
            return server.stream(request, _chunks(replay(sent), env, len(reqs), None, include_usage, len(prompt),
                                                  reqs, tools), account)
    account()
    replies = [parse_tool_calls(r.text, finish_reason(r.finish_reason)) for r in sent] if tools else None
    return mark_guarded(chat_completion(env, sent, logprobs if req.logprobs else None, len(prompt), replies), sent)


def _conversation(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _refused(server: Server, request: Request, served: ServedModel, req: ChatCompletionRequest, asked: list[dict],
             checked: list[Checked]):
    """The answer to a request an input guard refused: the guard's text as each choice, no tokens."""
    env = Envelope.new("chatcmpl", served.name)
    account = lambda: server.account(request, served.name, 0, 0, _conversation(asked), checked[0].text)  # noqa: E731
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return server.stream(request, _chunks(replay(checked), env, len(checked), None, include_usage, 0, checked,
                                              False), account)
    account()
    return mark_guarded(chat_completion(env, checked, None, 0), checked)


async def _chunks(events: AsyncIterator[tuple[int, Event]], env: Envelope, n: int, text: TokenText | None,
                  include_usage: bool, prompt_len: int, reqs: list, tools: bool) -> AsyncIterator[str]:
    """The chunks of a chat stream from its (choice, event) pairs; `reqs` count the usage at the end."""
    for chunk in chat_role_chunks(env, n, content=None if tools else ""):
        yield chunk
    parsers = [ToolCallParser() for _ in range(n)] if tools else None
    async for i, event in events:
        if parsers is None:
            chunk = chat_event_chunk(env, i, event, text)
            if chunk is not None:
                yield chunk
            continue
        # with tools the text goes through the call parser: content and call deltas come out
        found = parsers[i].feed(event.text or "")
        if event.finish_reason is not None:
            found += parsers[i].close()
        for e in found:
            if not (isinstance(e, ContentDelta) and not e.text):
                yield chat_delta_chunk(env, i, openai_delta(e))
        if event.finish_reason is not None:
            yield chat_delta_chunk(env, i, {}, parsers[i].reply(finish_reason(event.finish_reason)).finish_reason)
    if include_usage:
        yield chat_usage_chunk(env, prompt_len, sum(len(r.generated) for r in reqs))
    yield DONE
