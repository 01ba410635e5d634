"""The OpenAI-compatible HTTP API over the continuous-batching engine.

    app = create_app([ServedModel("quickstart", llm)])      # uvicorn.run(app) — or `llmkit serve`

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``,
``POST /v1/embeddings``, ``GET /health``, ``GET /metrics`` (Prometheus). Errors are OpenAI's
shape, ``{"error": {"message", "type", "param", "code"}}``, with a 4xx status for anything a
client can cause — bad JSON, unknown or unsupported fields, out-of-range values, an unknown
model, a prompt longer than the context — and the server goes on serving.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..infer.engine import Engine, Event, QueueFullError, RequestTooLargeError, prompt_logprobs
from ..infer.sampling import GenerationConfig, GenerationConfigError
from ..models.transformer import ContextLengthError
from ..quant.weight_only import quantization_config
from .auth import Gate, Limited, RequestLog
from .metrics import Metrics
from .schemas import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest, TokenizeRequest

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_STOP = 16
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|function-.*|[A-Z]\w*)$")


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, headers=self.headers,
                            content={"error": {"message": self.message, "type": self.type, "param": self.param,
                                               "code": self.code}})


@dataclass
class ServedModel:
    """A model the server offers under `name`: a `LocalLLM` and the engine that batches for it."""

    name: str
    llm: Any
    engine: Engine | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    engine_options: dict[str, Any] = field(default_factory=dict)
    adapter: str | None = None  # a LoRA / bottleneck adapter of the engine's model, chosen per request

    def __post_init__(self) -> None:
        if self.engine is None:
            self.engine = Engine(self.llm, **self.engine_options)
        qcfg = quantization_config(self.llm.model)
        self.quantization = qcfg["weights"] if qcfg else None  # llmkit's extension of the model card


# ------------------------------------------------------------------------ helpers
async def parse_body(request: Request, schema: type[BaseModel], max_bytes: int) -> Any:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise APIError(413, f"the request body has {declared} bytes; the limit is {max_bytes}")
    body = await request.body()
    if len(body) > max_bytes:
        raise APIError(413, f"the request body has {len(body)} bytes; the limit is {max_bytes}")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors()) from None


def validation_error(errors: list[dict]) -> APIError:
    first = errors[0]
    # drop "body" and the union-member tags pydantic adds ("prompt.str", "content.list[ContentPart]")
    loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body" and not _TYPE_TAG.match(str(x)))
    if first.get("type") == "extra_forbidden":
        return APIError(400, f"unsupported field {loc!r}: llmkit serve does not implement it", param=loc,
                        code="unsupported_field")
    if first.get("type") == "missing":
        return APIError(400, f"missing required field {loc!r}", param=loc, code="missing_field")
    return APIError(400, f"{loc}: {first.get('msg')} (got {first.get('input')!r})"[:500], param=loc,
                    code="invalid_value")


def token_inputs(llm, raw: Any, param: str) -> list[list[int]]:
    """Token ids of a `prompt` / `input` field: a string, a list of strings, a list of token ids,
    or a list of token-id lists; each non-empty and inside the vocabulary."""
    if isinstance(raw, str):
        out = [llm.tokenize(raw)]
    elif raw and all(isinstance(x, str) for x in raw):
        out = [llm.tokenize(x) for x in raw]
    elif raw and all(isinstance(x, int) for x in raw):
        out = [list(raw)]
    elif raw and all(isinstance(x, list) for x in raw):
        out = [list(x) for x in raw]
    else:
        raise APIError(400, f"{param} must be a string, a list of strings, a list of token ids or a list of "
                            "token-id lists, and not empty", param=param)
    vocab = llm.config.vocab_size
    for ids in out:
        if not ids:
            raise APIError(400, f"an entry of {param} is empty: give at least one token", param=param)
        bad = [t for t in ids if not isinstance(t, int) or t < 0 or t >= vocab]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary of {vocab}", param=param)
    return out


def _now() -> int:
    return int(time.time())


class Listener:
    """Engine events (from the engine thread) into an asyncio queue of the request's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, index: int, queue: asyncio.Queue):
        self.loop, self.index, self.queue = loop, index, queue

    def __call__(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (self.index, event))


class Server:
    def __init__(self, models: list[ServedModel], max_body_bytes: int = MAX_BODY_BYTES):
        if not models:
            raise ValueError("give at least one model to serve")
        self.models = {m.name: m for m in models}
        self.max_body_bytes = max_body_bytes
        self._token_texts: dict[tuple[str, int], str] = {}
        self.metrics = Metrics()
        m = self.metrics
        m.describe("llmkit_requests_total", "counter", "HTTP requests by endpoint and status")
        m.describe("llmkit_prompt_tokens_total", "counter", "prompt tokens processed")
        m.describe("llmkit_completion_tokens_total", "counter", "tokens generated")
        m.describe("llmkit_time_to_first_token_seconds", "histogram", "time from arrival to the first token")
        m.describe("llmkit_time_per_output_token_seconds", "histogram", "mean time between output tokens")
        m.describe("llmkit_request_latency_seconds", "histogram", "time from arrival to the last token")
        m.describe("llmkit_queue_depth", "gauge", "requests waiting for the engine")
        m.describe("llmkit_running_batch_size", "gauge", "requests in the running batch")
        m.describe("llmkit_kv_cache_free_blocks", "gauge", "free KV cache blocks")
        engines = list({id(s.engine): s.engine for s in self.models.values()}.values())  # adapters share one
        m.gauge("llmkit_queue_depth", lambda: sum(e.queue_depth for e in engines))
        m.gauge("llmkit_running_batch_size", lambda: sum(e.batch_size for e in engines))
        m.gauge("llmkit_kv_cache_free_blocks", lambda: sum(e.pool.num_free for e in engines))

        self.engines = engines

    def start(self) -> None:
        for engine in self.engines:
            engine.start()

    def shutdown(self) -> None:
        for engine in self.engines:
            engine.shutdown()

    def model(self, name: str) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise APIError(404, f"the model {name!r} does not exist: this server has {sorted(self.models)}",
                           param="model", code="model_not_found")
        return served

    # ------------------------------------------------------------- generation
    def generation(self, req: Any, served: ServedModel, prompt_len: int, max_tokens: int | None,
                   default_max: int | None, logprobs: bool, top_logprobs: int) -> GenerationConfig:
        if req.logit_bias:
            raise APIError(400, "logit_bias is not supported by llmkit serve", param="logit_bias",
                           code="unsupported_field")
        ctx = served.llm.config.context_window
        if max_tokens is None:
            max_tokens = min(default_max, ctx - prompt_len) if default_max else ctx - prompt_len
        if prompt_len + max_tokens > ctx:
            raise APIError(400, f"this model's maximum context length is {ctx} tokens; the prompt has {prompt_len} "
                                f"and max_tokens asks for {max_tokens} more: lower max_tokens or shorten the prompt",
                           param="max_tokens", code="context_length_exceeded")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > MAX_STOP:
            raise APIError(400, f"stop has {len(stop)} strings; at most {MAX_STOP} are allowed", param="stop")
        try:
            return GenerationConfig(
                max_new_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0, min_p=req.min_p or 0.0,
                repetition_penalty=req.repetition_penalty or 1.0, presence_penalty=req.presence_penalty,
                frequency_penalty=req.frequency_penalty, stop=stop, seed=req.seed, logprobs=logprobs,
                top_logprobs=top_logprobs, ignore_eos=req.ignore_eos)
        except GenerationConfigError as e:
            raise APIError(400, str(e), param=str(e).split("=")[0]) from None

    def constraint(self, served: ServedModel, response_format: Any, gen: GenerationConfig):
        """A factory of per-choice JSON constraints for `response_format` (None for plain text)."""
        if response_format is None or response_format.type == "text":
            return None
        schema = None
        if response_format.type == "json_schema":
            spec = response_format.json_schema or {}
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise APIError(400, "response_format.json_schema.schema must be a JSON schema object",
                               param="response_format.json_schema")
        from ..infer.constrained import ConstraintError, json_constraint

        tok, vocab = served.llm.tokenizer, served.llm.config.vocab_size
        stop = set(gen.stop_token_ids) | (set() if gen.ignore_eos else served.engine.eos)
        try:
            json_constraint(tok, vocab, schema, stop)  # fail now, with a 400, if it cannot compile
        except ConstraintError as e:
            raise APIError(400, str(e), param="response_format") from None
        return lambda: json_constraint(tok, vocab, schema, stop)

    def submit(self, served: ServedModel, prompt: list[int], gen: GenerationConfig, n: int,
               queue: asyncio.Queue, offset: int = 0, constraint: Callable[[], Any] | None = None) -> list:
        """`n` engine requests for one prompt; their events reach `queue` as (offset + i, event)."""
        loop = asyncio.get_running_loop()
        reqs = []
        try:
            for i in range(n):
                g = gen if gen.seed is None or i == 0 else gen.replace(seed=gen.seed + i)
                reqs.append(served.engine.submit(prompt, g, on_event=Listener(loop, offset + i, queue),
                                                 adapter=served.adapter,
                                                 constraint=constraint() if constraint else None))
        except QueueFullError as e:
            for r in reqs:
                served.engine.cancel(r.id)
            raise APIError(503, f"the server is busy: {e}", type="server_busy", code="queue_full",
                           headers={"Retry-After": "1"}) from None
        except (ContextLengthError, RequestTooLargeError) as e:
            raise APIError(400, str(e), param="max_tokens", code="context_length_exceeded") from None
        except ValueError as e:
            raise APIError(400, str(e), param="prompt") from None
        return reqs

    async def events(self, request: Request, served: ServedModel, reqs: list,
                     queue: asyncio.Queue) -> AsyncIterator[tuple[int, Event]]:
        """(choice index, event) until every request has finished; cancels them all if the client
        goes away or the consumer stops early."""
        open_ = len(reqs)
        try:
            while open_:
                try:
                    index, event = await asyncio.wait_for(queue.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        log.info("client went away; cancelling %s", [r.id for r in reqs])
                        return
                    continue
                if event.finish_reason is not None:
                    open_ -= 1
                    self.record(reqs[index])
                yield index, event
        finally:
            for r in reqs:
                if r.finish_reason is None:
                    served.engine.cancel(r.id)

    def account(self, request: Request, model: str | None, prompt_tokens: int = 0, completion_tokens: int = 0,
                prompt: str | None = None, completion: str | None = None, status: int = 200) -> None:
        """Charge the caller's token budget and write the request log row (once per request)."""
        request.state.accounted = True
        key = getattr(request.state, "key", None)
        if key is not None and (prompt_tokens or completion_tokens):
            self.gate.spend(key, prompt_tokens + completion_tokens)
        if self.log is not None:
            started = getattr(request.state, "started", time.perf_counter())
            self.log.write(key.name if key is not None else None, model, request.url.path, status, prompt_tokens,
                           completion_tokens, time.perf_counter() - started, prompt, completion)

    def stream(self, request: Request, pieces: AsyncIterator[str], account: Callable[[], None]) -> StreamingResponse:
        """An SSE response of `pieces` that accounts for the request (budget, log) when the stream
        ends, however it ends; the middleware leaves streamed requests to it."""
        async def accounted():
            # One piece of look-ahead: the request is accounted before its last piece (the
            # `[DONE]`) goes out, so a client that has read the whole stream finds it logged.
            held, done = None, False
            try:
                async for piece in pieces:
                    if held is not None:
                        yield held
                    held = piece
                done = True
                account()
                if held is not None:
                    yield held
            finally:
                if not done:
                    account()

        request.state.streaming = True
        return StreamingResponse(accounted(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def record(self, req) -> None:
        m = self.metrics
        m.inc("llmkit_prompt_tokens_total", len(req.prompt))
        m.inc("llmkit_completion_tokens_total", len(req.generated))
        if req.first_token_at is not None:
            m.observe("llmkit_time_to_first_token_seconds", req.first_token_at - req.arrival)
            if len(req.generated) > 1 and req.finished_at is not None:
                m.observe("llmkit_time_per_output_token_seconds",
                          (req.finished_at - req.first_token_at) / (len(req.generated) - 1))
        if req.finished_at is not None:
            m.observe("llmkit_request_latency_seconds", req.finished_at - req.arrival)

    def token_text(self, served: ServedModel, token: int) -> str:
        """A token as text for logprobs. Tokens holding part of a UTF-8 character have no text of
        their own: they are named by their vocabulary entry instead (as OpenAI writes "bytes:…"),
        so that top-logprob dicts keyed by text do not merge distinct tokens."""
        key = (served.name, token)
        text = self._token_texts.get(key)
        if text is None:
            tok = served.llm.tokenizer
            text = tok.decode([token], skip_special_tokens=False)
            if "\ufffd" in text:
                text = f"bytes:{tok.id_to_token(token)}"
            self._token_texts[key] = text
        return text


def _finish(reason: str | None) -> str | None:
    return {"cancelled": "stop", "error": "stop"}.get(reason, reason) if reason else None


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# --------------------------------------------------------------------------- app
def create_app(models: list[ServedModel] | ServedModel, max_body_bytes: int = MAX_BODY_BYTES,
               start_engines: bool = True, gate: Gate | None = None, request_log: RequestLog | None = None) -> FastAPI:
    """The FastAPI app; its engines start with the app (and stop with it). `gate` holds the API
    keys and their limits (none: anyone may call, unlimited); `request_log` records every request."""
    server = Server([models] if isinstance(models, ServedModel) else list(models), max_body_bytes)
    server.gate, server.log = gate or Gate(), request_log

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_engines:
            server.start()
        yield
        server.shutdown()

    app = FastAPI(title="llmkit", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable):
        path = request.url.path
        request.state.started = time.perf_counter()
        request.state.key = None
        response = None
        if path.startswith("/v1/") or path in ("/tokenize", "/detokenize"):
            key = server.gate.identify(request.headers.get("authorization"))
            if key is None:
                response = APIError(401, "a valid API key is needed: send 'Authorization: Bearer KEY'",
                                    type="authentication_error", code="invalid_api_key").response()
            else:
                request.state.key = key
                try:
                    server.gate.admit(key)
                except Limited as e:
                    response = APIError(429, f"{e}; retry in {e.retry_after} s", type="rate_limit_error",
                                        code="rate_limit_exceeded",
                                        headers={"Retry-After": str(e.retry_after)}).response()
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

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        return validation_error(list(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return APIError(exc.status_code, str(exc.detail), type="invalid_request_error").response()

    # ------------------------------------------------------------ the chat page
    page = (Path(__file__).parent / "static" / "chat.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return HTMLResponse(page)

    # ------------------------------------------------------------ listing
    @app.get("/health")
    async def health():
        return {"status": "ok", "models": {name: s.engine.stats() for name, s in server.models.items()}}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4")

    def card(s: ServedModel) -> dict[str, Any]:
        # max_model_len as vLLM gives it; start_token_id (what an empty context starts from) is ours
        return {"id": s.name, "object": "model", "created": s.created, "owned_by": "llmkit",
                "max_model_len": s.llm.config.context_window, "start_token_id": s.llm.start_token_id,
                "quantization": s.quantization}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [card(s) for s in server.models.values()]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str):
        return card(server.model(name))

    # vLLM's tokenizer endpoints (at the root and under /v1): remote clients tokenise as the model does
    @app.post("/tokenize")
    @app.post("/v1/tokenize")
    async def tokenize(request: Request):
        req: TokenizeRequest = await parse_body(request, TokenizeRequest, server.max_body_bytes)
        served = server.model(req.model)
        ids = served.llm.tokenize(req.prompt, add_special_tokens=req.add_special_tokens)
        return {"tokens": ids, "count": len(ids), "max_model_len": served.llm.config.context_window}

    @app.post("/detokenize")
    @app.post("/v1/detokenize")
    async def detokenize(request: Request):
        req: DetokenizeRequest = await parse_body(request, DetokenizeRequest, server.max_body_bytes)
        served = server.model(req.model)
        vocab = served.llm.config.vocab_size
        bad = [t for t in req.tokens if t < 0 or t >= vocab]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary of {vocab}", param="tokens")
        return {"prompt": served.llm.detokenize(req.tokens)}

    # ------------------------------------------------------------ chat
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req: ChatCompletionRequest = await parse_body(request, ChatCompletionRequest, server.max_body_bytes)
        served = server.model(req.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        try:
            prompt = served.llm.chat_prompt(messages)
        except Exception as e:  # a template that rejects the conversation (e.g. roles out of order)
            raise APIError(400, f"the chat template rejected the messages: {e}", param="messages") from None
        top = req.top_logprobs or 0
        if top and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        gen = server.generation(req, served, len(prompt), max_tokens, None, req.logprobs, top)
        make = server.constraint(served, req.response_format, gen)
        queue: asyncio.Queue = asyncio.Queue()
        reqs = server.submit(served, prompt, gen, req.n, queue, constraint=make)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", _now()
        chat_text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)

        def logprob_entry(event: Event) -> dict[str, Any]:
            text = server.token_text(served, event.token_id)
            return {"token": text, "logprob": event.logprob, "bytes": list(text.encode("utf-8")),
                    "top_logprobs": [{"token": server.token_text(served, t), "logprob": lp,
                                      "bytes": list(server.token_text(served, t).encode("utf-8"))}
                                     for t, lp in (event.top_logprobs or {}).items()]}

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            async def stream():
                base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": served.name}
                for i in range(req.n):
                    yield _sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                     "logprobs": None, "finish_reason": None}]})
                async for i, event in server.events(request, served, reqs, queue):
                    choice: dict[str, Any] = {"index": i, "delta": {}, "logprobs": None, "finish_reason": None}
                    if event.text:
                        choice["delta"]["content"] = event.text
                    if req.logprobs and event.token_id is not None:
                        choice["logprobs"] = {"content": [logprob_entry(event)]}
                    if event.finish_reason is not None:
                        choice["finish_reason"] = _finish(event.finish_reason)
                    if choice["delta"] or choice["logprobs"] or choice["finish_reason"]:
                        yield _sse({**base, "choices": [choice]})
                if include_usage:
                    yield _sse({**base, "choices": [], "usage": _usage(len(prompt), sum(len(r.generated) for r in reqs))})
                yield "data: [DONE]\n\n"

            return server.stream(request, stream(), lambda: server.account(
                request, served.name, len(prompt), sum(len(r.generated) for r in reqs), chat_text,
                "\n".join(r.text for r in reqs)))

        entries: list[list[dict]] = [[] for _ in reqs]
        async for i, event in server.events(request, served, reqs, queue):
            if req.logprobs and event.token_id is not None:
                entries[i].append(logprob_entry(event))
        if any(r.finish_reason is None for r in reqs):
            return Response(status_code=499)  # the client left; nobody reads this
        server.account(request, served.name, len(prompt), sum(len(r.generated) for r in reqs), chat_text,
                       "\n".join(r.text for r in reqs))
        choices = [{"index": i, "message": {"role": "assistant", "content": r.text},
                    "logprobs": {"content": entries[i]} if req.logprobs else None,
                    "finish_reason": _finish(r.finish_reason)} for i, r in enumerate(reqs)]
        return {"id": rid, "object": "chat.completion", "created": created, "model": served.name,
                "choices": choices, "usage": _usage(len(prompt), sum(len(r.generated) for r in reqs))}

    # ------------------------------------------------------------ completions
    @app.post("/v1/completions")
    async def completions(request: Request):
        req: CompletionRequest = await parse_body(request, CompletionRequest, server.max_body_bytes)
        served = server.model(req.model)
        for name, ok in (("suffix", req.suffix is None), ("best_of", req.best_of in (None, 1))):
            if not ok:
                raise APIError(400, f"{name} is not supported by llmkit serve", param=name, code="unsupported_field")
        llm = served.llm
        prompts = token_inputs(llm, req.prompt, "prompt")
        k = req.logprobs
        want_logprobs = k is not None
        if req.stream and req.echo:
            raise APIError(400, "echo with stream is not supported", param="echo")
        # scoring only (echo, no new tokens) feeds all but the last prompt token
        score_only = req.echo and req.max_tokens == 0
        gens = [server.generation(req, served, len(p) - 1 if score_only else len(p), req.max_tokens, 16,
                                  want_logprobs, k or 0) for p in prompts]
        queue: asyncio.Queue = asyncio.Queue()
        groups = []
        try:
            for p, gen in zip(prompts, gens):
                offset = sum(len(g) for g in groups)
                groups.append(server.submit(served, p, gen, req.n, queue, offset,
                                            constraint=server.constraint(served, req.response_format, gen))
                              if gen.max_new_tokens or not req.echo else [])
        except APIError:
            for g in groups:
                for r in g:
                    served.engine.cancel(r.id)
            raise
        flat = [r for g in groups for r in g]
        prompt_text = "\n".join(llm.detokenize(p) for p in prompts)
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", _now()

        if req.stream:
            async def stream():
                base = {"id": rid, "object": "text_completion", "created": created, "model": served.name}
                async for i, event in server.events(request, served, flat, queue):
                    choice: dict[str, Any] = {"index": i, "text": event.text, "logprobs": None,
                                              "finish_reason": _finish(event.finish_reason)}
                    if want_logprobs and event.token_id is not None:
                        choice["logprobs"] = {"tokens": [server.token_text(served, event.token_id)],
                                              "token_logprobs": [event.logprob],
                                              "top_logprobs": [{server.token_text(served, t): lp for t, lp in
                                                                (event.top_logprobs or {}).items()}] if k else None,
                                              "text_offset": [0]}
                    if event.text or choice["logprobs"] or choice["finish_reason"]:
                        yield _sse({**base, "choices": [choice]})
                yield "data: [DONE]\n\n"

            return server.stream(request, stream(), lambda: server.account(
                request, served.name, sum(len(p) for p in prompts), sum(len(r.generated) for r in flat),
                prompt_text, "\n".join(r.text for r in flat)))

        async for _ in server.events(request, served, flat, queue):
            pass
        if any(r.finish_reason is None for r in flat):
            return Response(status_code=499)
        echoed: list[tuple[list[float | None], list[dict | None]] | None] = [None] * len(prompts)
        if req.echo and want_logprobs:
            for j, p in enumerate(prompts):
                echoed[j] = await asyncio.wrap_future(served.engine.run_exclusive(
                    lambda p=p: prompt_logprobs(llm.model, p, k)))
        choices = []
        usage_prompt = usage_completion = 0
        for j, (p, g) in enumerate(zip(prompts, groups)):
            usage_prompt += len(p)
            for r in (g or [None]) if req.echo else g:
                tokens = list(r.generated) if r is not None else []
                text = r.text if r is not None else ""
                lp_tokens, lp_values, lp_tops = [], [], []
                if req.echo:
                    text = llm.detokenize(p) + text
                    if want_logprobs:
                        plp, ptop = echoed[j]
                        lp_tokens += [server.token_text(served, t) for t in p]
                        lp_values += plp
                        lp_tops += [None if d is None else {server.token_text(served, t): v for t, v in d.items()}
                                    for d in ptop]
                if want_logprobs and r is not None:
                    lp_tokens += [server.token_text(served, t) for t in tokens]
                    lp_values += list(r.logprobs)
                    lp_tops += ([{server.token_text(served, t): v for t, v in d.items()} for d in r.top_logprobs]
                                if k else [None] * len(tokens))
                logprobs = None
                if want_logprobs:
                    offsets, pos = [], 0
                    for t in lp_tokens:
                        offsets.append(pos)
                        pos += len(t)
                    logprobs = {"tokens": lp_tokens, "token_logprobs": lp_values,
                                "top_logprobs": lp_tops if (k or req.echo) else None, "text_offset": offsets}
                usage_completion += len(tokens)
                choices.append({"index": len(choices), "text": text, "logprobs": logprobs,
                                "finish_reason": _finish(r.finish_reason) if r is not None else "length"})
        server.account(request, served.name, usage_prompt, usage_completion, prompt_text,
                       "\n".join(c["text"] for c in choices))
        return {"id": rid, "object": "text_completion", "created": created, "model": served.name,
                "choices": choices, "usage": _usage(usage_prompt, usage_completion)}

    # ------------------------------------------------------------ embeddings
    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        req: EmbeddingRequest = await parse_body(request, EmbeddingRequest, server.max_body_bytes)
        served = server.model(req.model)
        llm = served.llm
        inputs = token_inputs(llm, req.input, "input")
        ctx = llm.config.context_window
        for x in inputs:
            if len(x) > ctx:
                raise APIError(400, f"an input has {len(x)} tokens; the model reads at most {ctx}", param="input",
                               code="context_length_exceeded")
        if req.dimensions is not None and req.dimensions != llm.config.dim:
            raise APIError(400, f"dimensions={req.dimensions}: this model's embeddings have {llm.config.dim}",
                           param="dimensions")
        from ..infer.engine import mean_pooled

        vectors = await asyncio.wrap_future(served.engine.run_exclusive(lambda: mean_pooled(llm.model, inputs)))
        data = []
        for i, v in enumerate(vectors):
            emb: Any = v
            if req.encoding_format == "base64":
                emb = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        n = sum(len(x) for x in inputs)
        server.account(request, served.name, n)
        return {"object": "list", "data": data, "model": served.name,
                "usage": {"prompt_tokens": n, "total_tokens": n}}

    return app


def with_adapters(name: str, llm: Any, adapters: list[str], **engine_options: Any) -> list[ServedModel]:
    """The base model as `name` and each adapter already loaded on `llm.model` (see
    `llmkit.load_with_adapters`) as ``name:adapter``, all on one engine: a request's `model` field
    picks its adapter, and requests of different adapters share the batch (one forward pass per
    adapter per step)."""
    from ..peft import adapter as adapter_context, set_adapter

    set_adapter(llm.model, None)  # requests choose; the bare base is the default
    engine = Engine(llm, use_adapter=lambda a: adapter_context(llm.model, a), **engine_options)
    return [ServedModel(name, llm, engine)] + [ServedModel(f"{name}:{a}", llm, engine, adapter=a) for a in adapters]


__all__ = ["APIError", "ServedModel", "Server", "create_app", "with_adapters"]
