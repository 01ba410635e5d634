"""``POST /v1/completions``: raw prompts (text or token ids, one or many), `n` choices each, with
OpenAI's legacy log-probs; ``echo`` with ``max_tokens: 0`` scores a prompt without generating
(how lm-eval's `local-completions` asks for log-likelihoods)."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..infer.engine import Event
from ..infer.scoring import prompt_logprobs
from .errors import APIError
from .guarding import Checked, last_user, mark_guarded, no_guarded_logprobs, replay
from .inputs import parse_body, token_inputs
from .responses import (DONE, Envelope, TokenText, completion_event_chunk, completion_logprobs, finish_reason,
                        text_completion)
from .schemas import CompletionRequest
from .server import ServedModel, Server

router = APIRouter()
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions

Scores = tuple[list[float | None], list[dict[int, float] | None]]  # a prompt's log-probs and top log-probs


@router.post("/v1/completions")
async def completions(request: Request):
    server: Server = request.app.state.server
    req: CompletionRequest = await parse_body(request, CompletionRequest, server.max_body_bytes)
    served = server.generator(req.model)
    if req.suffix is not None:
        raise APIError(400, "suffix is not supported by llmkit serve", param="suffix", code="unsupported_field")
    if req.echo and served.llm.config.is_seq2seq:
        raise APIError(400, "echo continues the prompt's text, but an encoder-decoder's prompt is its source: "
                            "leave echo off", param="echo")
    prompts = token_inputs(served.llm, req.prompt, "prompt")
    guards = server.guards
    asked: list[str] = []
    refused: dict[int, list[Checked]] = {}
    if guards is not None:
        no_guarded_logprobs(guards, req.logprobs is not None or req.echo, "echo" if req.echo else "logprobs")
        if (req.best_of or 1) > 1:
            raise APIError(400, "best_of (beam search) is not available from a server with guards: leave best_of "
                                "at 1", param="best_of")
        asked = [served.llm.detokenize(p) for p in prompts]
        for i, prompt_text in enumerate(asked):  # each prompt is checked as a user's message
            messages, decision = await guards.check_input([{"role": "user", "content": prompt_text}])
            if decision.action == "refuse":
                refused[i] = guards.refused(decision, req.n)
            elif decision.action == "rewrite":
                prompts[i] = token_inputs(served.llm, last_user(messages), "prompt")[0]
    if req.use_beam_search and (req.best_of or 1) < 2:
        raise APIError(400, "use_beam_search needs best_of > 1, the beam width", param="best_of")
    if (req.best_of or 1) > 1:
        return await _beam_search(server, request, served, req, prompts)
    queue: asyncio.Queue = asyncio.Queue()
    groups = _submit(server, served, req, prompts, queue, skip=set(refused))
    flat = [r for g in groups for r in g]
    env = Envelope.new("cmpl", served.name)
    text = (lambda t: server.token_text(served, t)) if req.logprobs is not None else None
    # a prompt a guard refused never reached the model: it costs nothing
    charged = [p for i, p in enumerate(prompts) if i not in refused]
    prompt_text = "\n".join(served.llm.detokenize(p) for p in charged)
    prompt_tokens = sum(len(p) for p in charged)

    def account(sent: list, status: int = 200) -> None:
        server.account(request, served.name, prompt_tokens, sum(len(r.generated) for r in flat), prompt_text,
                       "\n".join(r.text for r in sent) if status == 200 else None, status=status)

    if req.stream and guards is None:
        return server.stream(request, _chunks(server.events(request, served, flat, queue), env, text,
                                              bool(req.logprobs)), lambda: account(flat))
    async for _ in server.events(request, served, flat, queue):
        pass
    if any(r.finish_reason is None for r in flat):
        return Response(status_code=499)  # the client left; nobody reads this
    if guards is not None:  # each reply checked whole, then sent (a guarded stream as it stands)
        sent: list = []
        for i, group in enumerate(groups):
            sent += refused.get(i) or await guards.check_outputs([{"role": "user", "content": asked[i]}], group,
                                                                 on_error=lambda: account(flat, 500))
        if req.stream:
            return server.stream(request, _chunks(replay(sent), env, None, False), lambda: account(sent))
        account(sent)
        completion_tokens = sum(len(r.generated) for r in flat)
        choices = [{"index": i, "text": c.text, "logprobs": None, "finish_reason": finish_reason(c.finish_reason)}
                   for i, c in enumerate(sent)]
        return mark_guarded(text_completion(env, choices, prompt_tokens, completion_tokens), sent, message=False)
    scores = await _prompt_scores(served, prompts, req.logprobs) if req.echo and text is not None \
        else [None] * len(prompts)
    choices: list[dict[str, Any]] = []
    for prompt, group, score in zip(prompts, groups, scores):
        for r in (group or [None]) if req.echo else group:
            choices.append(_choice(len(choices), served, req, text, prompt, r, score))
    completion_tokens = sum(len(r.generated) for r in flat)
    server.account(request, served.name, prompt_tokens, completion_tokens, prompt_text,
                   "\n".join(c["text"] for c in choices))
    return text_completion(env, choices, prompt_tokens, completion_tokens)


async def _beam_search(server: Server, request: Request, served: ServedModel, req: CompletionRequest,
                       prompts: list[list[int]]):
    """best_of > 1: beam search of width best_of per prompt, answering its n best beams (OpenAI's
    best_of returns the n best of best_of candidates; beam search finds them deterministically)."""
    if req.n > req.best_of:
        raise APIError(400, f"n={req.n} exceeds best_of={req.best_of}: best_of is how many candidates are "
                            "searched, n how many come back", param="n")
    if req.stream:
        raise APIError(400, "best_of cannot be streamed (the best beams are known only at the end)", param="stream")
    if req.echo or req.logprobs is not None:
        raise APIError(400, "best_of (beam search) answers text only: leave echo and logprobs off", param="best_of")
    if req.response_format is not None and req.response_format.type != "text":
        raise APIError(400, "best_of (beam search) does not constrain its output: leave response_format out, or "
                            "best_of at 1", param="response_format")
    choices: list[dict[str, Any]] = []
    completion_tokens = 0
    for p in prompts:
        gen = server.generation(req, served, len(p), req.max_tokens, DEFAULT_MAX_TOKENS, False, 0, req.best_of)
        found = await server.beams(served, p, gen)
        for c in found[:req.n]:
            choices.append({"index": len(choices), "text": c.text, "logprobs": None,
                            "finish_reason": finish_reason(c.finish_reason)})
            completion_tokens += len(c.token_ids)
    prompt_tokens = sum(len(p) for p in prompts)
    server.account(request, served.name, prompt_tokens, completion_tokens,
                   "\n".join(served.llm.detokenize(p) for p in prompts), "\n".join(c["text"] for c in choices))
    return text_completion(Envelope.new("cmpl", served.name), choices, prompt_tokens, completion_tokens)


def _submit(server: Server, served: ServedModel, req: CompletionRequest, prompts: list[list[int]],
            queue: asyncio.Queue, skip: set[int] = frozenset()) -> list[list]:
    """`n` engine requests per prompt, none for a prompt that is only scored (echo, no new tokens)
    or in `skip` (a guard refused it); if one prompt is refused by the engine, the requests of those
    before it are cancelled."""
    if req.stream and req.echo:
        raise APIError(400, "echo with stream is not supported", param="echo")
    # scoring only (echo, no new tokens) feeds all but the last prompt token
    score_only = req.echo and req.max_tokens == 0
    gens = [server.generation(req, served, len(p) - 1 if score_only else len(p), req.max_tokens,
                              DEFAULT_MAX_TOKENS, req.logprobs is not None, req.logprobs or 0) for p in prompts]
    groups: list[list] = []
    try:
        for i, (p, gen) in enumerate(zip(prompts, gens)):
            if (req.echo and not gen.max_new_tokens) or i in skip:
                groups.append([])
                continue
            groups.append(server.submit(served, p, gen, req.n, queue, sum(len(g) for g in groups),
                                        constraint=server.constraint(served, req.response_format, gen)))
    except APIError:
        server.cancel(served, [r for g in groups for r in g])
        raise
    return groups


async def _chunks(events: AsyncIterator[tuple[int, Event]], env: Envelope, text: TokenText | None,
                  with_tops: bool) -> AsyncIterator[str]:
    async for i, event in events:
        chunk = completion_event_chunk(env, i, event, text, with_tops)
        if chunk is not None:
            yield chunk
    yield DONE


async def _prompt_scores(served: ServedModel, prompts: list[list[int]], top: int | None) -> list[Scores]:
    """The log-probs of each prompt's own tokens (for echo), computed between engine steps."""
    return [await asyncio.wrap_future(served.engine.run_exclusive(
        lambda p=p: prompt_logprobs(served.llm.model, p, top))) for p in prompts]


def _choice(index: int, served: ServedModel, req: CompletionRequest, text: TokenText | None, prompt: list[int],
            r: Any, score: Scores | None) -> dict[str, Any]:
    """One choice: the generated text of engine request `r` (None: nothing generated), after the
    prompt when echoed, and when asked the log-probs of every token it shows."""
    body = r.text if r is not None else ""
    ids: list[int] = []
    values: list[float | None] = []
    tops: list[dict[int, float] | None] = []
    if req.echo:
        body = served.llm.detokenize(prompt) + body
        if score is not None:
            ids += prompt
            values += score[0]
            tops += score[1]
    if text is not None and r is not None:
        ids += r.generated
        values += r.logprobs
        tops += r.top_logprobs if req.logprobs else [None] * len(r.generated)
    logprobs = None
    if text is not None:
        logprobs = completion_logprobs(text, ids, values, tops if (req.logprobs or req.echo) else None)
    return {"index": index, "text": body, "logprobs": logprobs,
            "finish_reason": finish_reason(r.finish_reason) if r is not None else "length"}
