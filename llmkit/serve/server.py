"""What the routes share: the served models and their engines, and the steps every generating
request takes — its sampling settings, its engine requests, their events, and its accounting
(token budget, request log, metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..infer.engine import Engine, Event, QueueFullError, RequestTooLargeError
from ..infer.llm import EncoderError
from ..infer.sampling import SAMPLING_OPTIONS, GenerationConfig, GenerationConfigError, layered_sampling
from ..models.transformer import ContextLengthError
from ..quant.weight_only import quantization_config
from .auth import Gate, RequestLog
from .errors import APIError
from .guarding import ServeGuards
from .inputs import MAX_BODY_BYTES
from .metrics import Metrics

log = logging.getLogger(__name__)

MAX_STOP = 16


@dataclass
class ServedModel:
    """A model the server offers under `name`: a `LocalLLM` and the engine that batches for it."""

    name: str
    llm: Any
    engine: Engine | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    engine_options: dict[str, Any] = field(default_factory=dict)
    adapter: str | None = None  # a LoRA / bottleneck adapter of the engine's model, chosen per request
    quantization: str | None = field(init=False, default=None)  # llmkit's extension of the model card

    def __post_init__(self) -> None:
        if self.engine is None:
            self.engine = Engine(self.llm, **self.engine_options)
        qcfg = quantization_config(self.llm.model)
        self.quantization = qcfg["weights"] if qcfg else None


def with_adapters(name: str, llm: Any, adapters: list[str], **engine_options: Any) -> list[ServedModel]:
    """The base model as `name` and each adapter already loaded on `llm.model` (see
    `llmkit.load_with_adapters`) as ``name:adapter``, all on one engine: a request's `model` field
    picks its adapter, and requests of different adapters share the batch (one forward pass per
    adapter per step)."""
    from ..peft import adapter as adapter_context, set_adapter

    set_adapter(llm.model, None)  # requests choose; the bare base is the default
    engine = Engine(llm, use_adapter=lambda a: adapter_context(llm.model, a), **engine_options)
    return [ServedModel(name, llm, engine)] + [ServedModel(f"{name}:{a}", llm, engine, adapter=a) for a in adapters]


class Listener:
    """Engine events (from the engine thread) into an asyncio queue of the request's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, index: int, queue: asyncio.Queue):
        self.loop, self.index, self.queue = loop, index, queue

    def __call__(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (self.index, event))


def _metrics(engines: list[Engine]) -> Metrics:
    m = Metrics()
    m.describe("llmkit_requests_total", "counter", "HTTP requests by endpoint and status")
    m.describe("llmkit_prompt_tokens_total", "counter", "prompt tokens processed")
    m.describe("llmkit_completion_tokens_total", "counter", "tokens generated")
    m.describe("llmkit_time_to_first_token_seconds", "histogram", "time from arrival to the first token")
    m.describe("llmkit_time_per_output_token_seconds", "histogram", "mean time between output tokens")
    m.describe("llmkit_request_latency_seconds", "histogram", "time from arrival to the last token")
    m.describe("llmkit_queue_depth", "gauge", "requests waiting for the engine")
    m.describe("llmkit_running_batch_size", "gauge", "requests in the running batch")
    m.describe("llmkit_kv_cache_free_blocks", "gauge", "KV cache blocks a request can take (never used, or cached "
               "and held by no request)")
    m.describe("llmkit_prefilling_requests", "gauge", "admitted requests whose prompts are still being prefilled")
    m.gauge("llmkit_prefilling_requests", lambda: sum(len(e.prefilling) for e in engines))
    m.gauge("llmkit_queue_depth", lambda: sum(e.queue_depth for e in engines))
    m.gauge("llmkit_running_batch_size", lambda: sum(e.batch_size for e in engines))
    m.gauge("llmkit_kv_cache_free_blocks", lambda: sum(e.pool.num_free for e in engines))
    m.describe("llmkit_prefix_cache_hit_rate", "gauge", "share of prompt tokens found in the prefix cache")
    m.gauge("llmkit_prefix_cache_hit_rate", lambda: sum(e.pool.hit_tokens for e in engines)
            / max(1, sum(e.pool.prompt_tokens for e in engines)))
    m.describe("llmkit_draft_acceptance_rate", "gauge", "share of speculative draft tokens the model accepted "
               "(0 without --draft)")
    drafting = [e.speculation for e in engines if e.speculation is not None]
    m.gauge("llmkit_draft_acceptance_rate", lambda: sum(d.accepted for d in drafting)
            / max(1, sum(d.proposed for d in drafting)))
    return m


class Server:
    """The served models, who may call (`gate`: anyone, unlimited, when None), the request log
    (None: no log) and the metrics; one per app, at ``app.state.server``. `embedder` names the
    model that answers /v1/embeddings for every model (see `embedding_model`); `guards` checks chat
    and completions requests and replies (see `llmkit.serve.guarding`)."""

    def __init__(self, models: list[ServedModel], max_body_bytes: int = MAX_BODY_BYTES, gate: Gate | None = None,
                 request_log: RequestLog | None = None, embedder: str | None = None, guards: Any = None):
        if not models:
            raise ValueError("give at least one model to serve")
        self.models = {m.name: m for m in models}
        if embedder is not None and embedder not in self.models:
            raise ValueError(f"embedder={embedder!r} is not among the served models {sorted(self.models)}")
        self.embedder = embedder
        self.embed_precision = "auto"  # LocalLLM.embed's precision for /v1/embeddings
        self.max_body_bytes = max_body_bytes
        self.gate = gate or Gate()
        self.log = request_log
        self.engines = list({id(s.engine): s.engine for s in models}.values())  # adapters share one
        self.metrics = _metrics(self.engines)
        self.guards = ServeGuards(guards, self.metrics) if guards is not None else None
        self._token_texts: dict[tuple[str, int], str] = {}

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

    def generator(self, name: str) -> ServedModel:
        """The model a chat or completions request names; an encoder is refused with a 400."""
        served = self.model(name)
        try:
            served.llm.require_generation()
        except EncoderError as e:
            raise APIError(400, f"{e} (POST /v1/embeddings with model {served.name!r})", param="model",
                           code="model_not_generative") from None
        return served

    def embedding_model(self, name: str) -> ServedModel:
        """The model that embeds for a request naming `name`: the `model` field picks among the
        served models, except that with an embedder loaded (``--embedder``) every served name
        embeds with it (the chat model's name too: the server has one way to embed, and the
        response's `model` field says which)."""
        served = self.model(name)
        return self.models[self.embedder] if self.embedder is not None else served

    # ------------------------------------------------------------------ generation
    def generation(self, req: Any, served: ServedModel, prompt_len: int, max_tokens: int | None,
                   default_max: int | None, logprobs: bool, top_logprobs: int, num_beams: int = 1) -> GenerationConfig:
        """The sampling settings of a chat or completions request, checked against the context (an
        encoder-decoder's: the prompt is its source, and the decoder's positions bound max_tokens)."""
        if req.logit_bias:
            raise APIError(400, "logit_bias is not supported by llmkit serve", param="logit_bias",
                           code="unsupported_field")
        ctx = served.llm.config.context_window
        if served.llm.config.is_seq2seq:
            if prompt_len > ctx:
                raise APIError(400, f"the source has {prompt_len} tokens but this model's encoder reads at most {ctx}: "
                                    "shorten the prompt", param="prompt", code="context_length_exceeded")
            prompt_len = 1  # the decoder starts from its start token
        own = getattr(served.llm, "generation_defaults", {})  # the model's settings fill what the request leaves out
        default_max = own.get("max_new_tokens") or default_max
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
            # each field left out takes the served model's own setting, then GenerationConfig's (OpenAI's)
            given = {k: getattr(req, k) for k in SAMPLING_OPTIONS} | {"num_beams": num_beams}
            sampling = layered_sampling(given, own)
            return GenerationConfig(
                max_new_tokens=max_tokens, **sampling, presence_penalty=req.presence_penalty,
                frequency_penalty=req.frequency_penalty, stop=stop, seed=req.seed if num_beams == 1 else None,
                logprobs=logprobs, top_logprobs=top_logprobs, ignore_eos=req.ignore_eos, num_beams=num_beams,
                length_penalty=getattr(req, "length_penalty", 1.0), early_stopping=getattr(req, "early_stopping", False))
        except GenerationConfigError as e:
            message = str(e)
            if num_beams > 1:  # the request's word for the beam width
                message = message.replace("num_beams", "best_of").replace("best_of=1", "best_of=1 (no beam search)")
            raise APIError(400, message, param=message.split("=")[0]) from None

    def constraint(self, served: ServedModel, response_format: Any, gen: GenerationConfig):
        """A factory of per-choice grammar constraints for `response_format` (the request's, or a
        dict such as the tool calls' structural tag; None for plain text), compiled once now so
        that a schema that cannot compile is a 400."""
        fmt = response_format if isinstance(response_format, dict) or response_format is None \
            else response_format.model_dump()
        if fmt is None or fmt["type"] == "text":
            return None
        from ..infer.constrained import ConstraintError, response_constraint
        from ..infer.sampling import stop_token_ids

        spec = fmt.get("json_schema")
        if fmt["type"] == "json_schema" and not (isinstance(spec, dict) and isinstance(spec.get("schema"), dict)):
            raise APIError(400, "response_format.json_schema.schema must be a JSON schema object",
                           param="response_format.json_schema")
        args = (fmt, served.llm.tokenizer, served.llm.config.vocab_size, stop_token_ids(gen, served.engine.eos))
        try:
            response_constraint(*args)
        except ConstraintError as e:
            raise APIError(400, str(e), param="response_format") from None
        return lambda: response_constraint(*args)

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
            self.cancel(served, reqs)
            raise APIError(503, f"the server is busy: {e}", type="server_busy", code="queue_full",
                           headers={"Retry-After": "1"}) from None
        except (ContextLengthError, RequestTooLargeError) as e:
            raise APIError(400, str(e), param="max_tokens", code="context_length_exceeded") from None
        except ValueError as e:
            raise APIError(400, str(e), param="prompt") from None
        return reqs

    async def beams(self, served: ServedModel, prompt: list[int], gen: GenerationConfig) -> list:
        """Beam search for one prompt (its `Completion`s, best first), run between two engine steps
        (under the served adapter) so that it never races a decoding step."""
        def search():
            with served.engine.use_adapter(served.adapter) if served.engine.use_adapter else contextlib.nullcontext():
                return served.llm.beams(prompt, gen)

        return await asyncio.wrap_future(served.engine.run_exclusive(search))

    def cancel(self, served: ServedModel, reqs: list) -> None:
        for r in reqs:
            served.engine.cancel(r.id)

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
            self.cancel(served, [r for r in reqs if r.finish_reason is None])

    # ------------------------------------------------------------------ accounting
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
        """The metrics of one finished engine request."""
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
