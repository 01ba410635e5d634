"""The OpenAI-compatible HTTP API over the continuous-batching engine.

    app = create_app([ServedModel("quickstart", llm)])      # uvicorn.run(app) — or `llmkit serve`
    app = create_app([chat, minilm], embedder=minilm.name)  # minilm answers every /v1/embeddings

Endpoints, one router per group: ``POST /v1/chat/completions`` (chat), ``POST /v1/completions``
(completions), ``POST /v1/embeddings`` (embeddings), ``GET /v1/models``, ``GET /health``,
``GET /metrics``, ``/tokenize``, ``/detokenize`` (admin) and the chat page at ``/`` (pages).
Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with a 4xx status
for anything a client can cause — bad JSON, text that is not valid Unicode, unknown or unsupported
fields, out-of-range values, an unknown model, a prompt longer than the context — and the server
goes on serving.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response

from . import admin, chat, completions, embeddings, pages
from .auth import Gate, Limited, RequestLog
from .errors import APIError, install_error_handlers
from .inputs import MAX_BODY_BYTES
from .server import ServedModel, Server

log = logging.getLogger(__name__)

# the paths that need an API key (when the server has keys); the page, /health and /metrics do not
_GUARDED_ROOT = ("/tokenize", "/detokenize")


def create_app(models: list[ServedModel] | ServedModel, max_body_bytes: int = MAX_BODY_BYTES,
               start_engines: bool = True, gate: Gate | None = None, request_log: RequestLog | None = None,
               embedder: str | None = None, embed_precision: str = "auto", guards: Any = None) -> FastAPI:
    """The FastAPI app; its engines start with the app (and stop with it). `gate` holds the API
    keys and their limits (none: anyone may call, unlimited); `request_log` records every request;
    `embedder` names the served model that answers /v1/embeddings whatever model a request names,
    computing at `embed_precision` (`LocalLLM.embed`'s precision); `guards` (a guard set such as
    `llmkit.apps.safety.GuardSet.named("default")`) checks every chat and completions request and
    reply (see `llmkit.serve.guarding`)."""
    server = Server([models] if isinstance(models, ServedModel) else list(models), max_body_bytes, gate, request_log,
                    embedder, guards)
    server.embed_precision = embed_precision

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_engines:
            server.start()
        yield
        server.shutdown()

    app = FastAPI(title="llmkit", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    app.middleware("http")(guard)
    install_error_handlers(app)
    for group in (pages, admin, chat, completions, embeddings):
        app.include_router(group.router)
    return app


def _refusal(server: Server, request: Request) -> Response | None:
    """The 401 or 429 for a caller without a valid key or over its limits; None to let it in."""
    key = server.gate.identify(request.headers.get("authorization"))
    if key is None:
        return APIError(401, "a valid API key is needed: send 'Authorization: Bearer KEY'",
                        type="authentication_error", code="invalid_api_key").response()
    request.state.key = key
    try:
        server.gate.admit(key)
    except Limited as e:
        return APIError(429, f"{e}; retry in {e.retry_after} s", type="rate_limit_error", code="rate_limit_exceeded",
                        headers={"Retry-After": str(e.retry_after)}).response()
    return None


async def guard(request: Request, call_next: Callable) -> Response:
    """Every request: keys and limits, no traceback ever reaches the client, metrics, and a log
    row for whatever the route did not account for itself."""
    server: Server = request.app.state.server
    path = request.url.path
    request.state.started = time.perf_counter()
    request.state.key = None
    response = _refusal(server, request) if path.startswith("/v1/") or path in _GUARDED_ROOT else None
    if response is None:
        try:
            response = await call_next(request)
        except Exception:  # never a bare traceback to the client
            log.exception("unhandled error on %s", path)
            response = APIError(500, "internal server error", type="server_error").response()
    server.metrics.inc("llmkit_requests_total", endpoint=path, status=str(response.status_code))
    if path.startswith("/v1/") and not getattr(request.state, "accounted", False) \
            and not getattr(request.state, "streaming", False):  # a stream accounts when it ends
        server.account(request, None, status=response.status_code)
    return response


__all__ = ["APIError", "ServedModel", "Server", "create_app"]
