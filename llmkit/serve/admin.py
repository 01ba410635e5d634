"""The endpoints about the server rather than a generation: ``GET /health``, ``GET /metrics``
(Prometheus), ``GET /v1/models[/NAME]``, and vLLM's ``/tokenize`` and ``/detokenize`` (at the
root and under /v1) so that remote clients tokenise as the model does."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from .inputs import check_token_ids, parse_body
from .responses import model_card
from .schemas import DetokenizeRequest, TokenizeRequest
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
    server = _server(request)
    req: TokenizeRequest = await parse_body(request, TokenizeRequest, server.max_body_bytes)
    served = server.model(req.model)
    ids = served.llm.tokenize(req.prompt, add_special_tokens=req.add_special_tokens)
    return {"tokens": ids, "count": len(ids), "max_model_len": served.llm.config.context_window}


@router.post("/detokenize")
@router.post("/v1/detokenize")
async def detokenize(request: Request):
    server = _server(request)
    req: DetokenizeRequest = await parse_body(request, DetokenizeRequest, server.max_body_bytes)
    served = server.model(req.model)
    check_token_ids(served.llm, req.tokens, "tokens")
    return {"prompt": served.llm.detokenize(req.tokens)}
