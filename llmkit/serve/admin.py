"""The endpoints about the server rather than a generation: ``GET /health``, ``GET /metrics``
(Prometheus), ``GET /v1/models[/NAME]``, and vLLM's ``/tokenize`` and ``/detokenize`` (at the
root and under /v1) so that remote clients tokenise as the model does."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from ..infer.tool_calls import has_tool_turns
from .chat import _prompt as chat_prompt
from .errors import APIError
from .inputs import check_token_ids, parse_body
from .responses import model_card
from .schemas import ChatCompletionRequest, DetokenizeRequest, TokenizeRequest
from .server import Server

router = APIRouter()


def _server(request: Request) -> Server:
    return request.app.state.server


@router.get("/health")
async def health(request: Request):
    return {"status": "ok", "models": {name: s.engine.stats() for name, s in _server(request).models.items()}}


@router.get("/metrics")
async def metrics(request: Request):
    return PlainTextResponse(_server(request).metrics.render(), media_type="text/plain; version=0.0.4")


@router.get("/v1/models")
async def list_models(request: Request):
    server = _server(request)
    return {"object": "list", "data": [model_card(s, server.embedding_model(s.name)) for s in server.models.values()]}


@router.get("/v1/models/{name}")
async def get_model(name: str, request: Request):
    server = _server(request)
    return model_card(server.model(name), server.embedding_model(name))


@router.post("/tokenize")
@router.post("/v1/tokenize")
async def tokenize(request: Request):
    """vLLM's /tokenize: the ids of a `prompt`, or of `messages` rendered with the chat template
    exactly as /v1/chat/completions renders them (so a client counts a conversation's prompt tokens
    before sending it: `RemoteLLM.chat_tokens`)."""
    server = _server(request)
    req: TokenizeRequest = await parse_body(request, TokenizeRequest, server.max_body_bytes)
    served = server.model(req.model)
    if req.prompt is not None and req.messages is not None:
        raise APIError(400, "give prompt (a text) or messages (a conversation), not both", param="messages",
                       code="invalid_value")
    if req.prompt is None and req.messages is None:
        raise APIError(400, "missing required field 'prompt': give a text as prompt, or a conversation as messages",
                       param="prompt", code="missing_field")
    if req.prompt is not None:
        ids = served.llm.tokenize(req.prompt, add_special_tokens=req.add_special_tokens is not False)
    else:
        ids = _chat_ids(served, req)
    return {"tokens": ids, "count": len(ids), "max_model_len": served.llm.config.context_window}


def _chat_ids(served, req: TokenizeRequest) -> list[int]:
    """The prompt ids of `req.messages`: through chat completions' own path when ready for the
    assistant's turn, else the template without the generation prompt."""
    messages = [m.as_dict() for m in req.messages]
    if req.add_generation_prompt and not req.add_special_tokens:
        chat = ChatCompletionRequest(model=req.model, messages=req.messages)
        return chat_prompt(served, chat, messages)[0]
    if has_tool_turns(messages) or served.llm.config.is_seq2seq:
        raise APIError(400, "add_generation_prompt false and add_special_tokens true are for a decoder's plain "
                            "conversation; this one has tool turns or an encoder-decoder reads it: leave both at "
                            "their defaults", param="add_generation_prompt")
    try:
        text = served.llm.tokenizer.apply_chat_template(messages, add_generation_prompt=req.add_generation_prompt)
    except Exception as e:  # a template that rejects the conversation (e.g. roles out of order)
        raise APIError(400, f"the chat template rejected the messages: {e}", param="messages") from None
    return served.llm.tokenize(text, add_special_tokens=bool(req.add_special_tokens))


@router.post("/detokenize")
@router.post("/v1/detokenize")
async def detokenize(request: Request):
    server = _server(request)
    req: DetokenizeRequest = await parse_body(request, DetokenizeRequest, server.max_body_bytes)
    served = server.model(req.model)
    check_token_ids(served.llm, req.tokens, "tokens")
    return {"prompt": served.llm.detokenize(req.tokens)}
