"""`llmkit serve` as functions: the settings its flags map to, and the server they build around a
loaded model.

    llm = llmkit.load_with_adapters("runs/base", ["sql=runs/sql/adapter"])
    server = build_server(llm, ServerSettings(name="base", adapters=["sql"], api_keys="keys.txt"))
    banner = server.summary()                             # what `llmkit serve` prints
    server.run()                                          # until Ctrl-C

    serve([ServedModel("quickstart", llm)], port=8000)    # models you built yourself
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from fastapi import FastAPI

from ..infer.llm import LocalLLM
from ..models.resolve import llmkit_home
from .app import create_app
from .auth import Gate, RequestLog, load_keys
from .inputs import MAX_BODY_BYTES
from .server import ServedModel, with_adapters


@dataclass
class ServerSettings:
    """How to serve a loaded model: `llmkit serve`'s flags, field for field."""

    name: str | None = None  # the requests' `model` field (default: the model's own name)
    adapters: Sequence[str] = ()  # adapters loaded on the model, each also served as NAME:ADAPTER
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 16  # requests decoded together in one step
    kv_cache_tokens: int | None = None  # default: max_batch x half the context, at least one context
    block_size: int = 16  # tokens per KV cache block
    max_queue: int = 256  # requests that may wait for a slot before the server answers 503
    max_body_bytes: int = MAX_BODY_BYTES
    api_keys: str | os.PathLike | None = None  # a keys file (see `llmkit.serve.auth`); None: no key needed
    rate_limit: int | None = None  # requests per minute, for keys without their own
    token_budget: int | None = None  # prompt + completion tokens per 24 hours, for keys without their own
    request_log: str | os.PathLike | None = None  # SQLite file (default $LLMKIT_HOME/requests.sqlite)
    log_requests: bool = True
    log_prompts: bool = False  # also the prompt and completion text, PII masked
    price_prompt: float = 0.0  # USD per million prompt tokens, for the log's cost column
    price_completion: float = 0.0
    log_level: str = "warning"  # uvicorn's

    def engine_options(self) -> dict[str, Any]:
        return {"max_batch": self.max_batch, "kv_cache_tokens": self.kv_cache_tokens, "block_size": self.block_size,
                "max_queue": self.max_queue}


@dataclass
class BuiltServer:
    """A server ready to listen: its app, the models it offers, the keys it knows and its log."""

    settings: ServerSettings
    app: FastAPI
    models: list[ServedModel]
    keys: int = 0
    request_log: RequestLog | None = None

    def summary(self) -> str:
        s, first = self.settings, self.models[0]
        weights = f", {first.quantization} weights" if first.quantization else ""
        return (f"serving {', '.join(m.name for m in self.models)} ({first.llm.model.num_parameters():,} parameters, "
                f"{first.llm.device}{weights}) at http://{s.host}:{s.port}/v1 — KV cache "
                f"{first.engine.pool.capacity_tokens} tokens, batch up to {s.max_batch}\n"
                f"API keys: {self.keys or 'none required'}; request log: "
                f"{self.request_log.path if self.request_log else 'off'}")

    def run(self) -> None:
        """Listen until interrupted."""
        _run(self.app, self.settings.host, self.settings.port, self.settings.log_level)


def build_server(llm: Any, settings: ServerSettings | None = None) -> BuiltServer:
    """The server `settings` describe around `llm`, a `LocalLLM` (with its adapters loaded)."""
    settings = settings or ServerSettings()
    if not isinstance(llm, LocalLLM):
        raise ValueError(f"{llm!r} is a remote server: llmkit serve needs a local model")
    name = settings.name or llm.name or "model"
    options = settings.engine_options()
    models = with_adapters(name, llm, list(settings.adapters), **options) if settings.adapters \
        else [ServedModel(name, llm, engine_options=options)]
    keys = load_keys(settings.api_keys) if settings.api_keys else []
    gate = Gate(keys, requests_per_minute=settings.rate_limit, tokens_per_day=settings.token_budget)
    request_log = None
    if settings.log_requests:
        request_log = RequestLog(settings.request_log or llmkit_home() / "requests.sqlite", settings.price_prompt,
                                 settings.price_completion, log_text=settings.log_prompts)
    app = create_app(models, settings.max_body_bytes, gate=gate, request_log=request_log)
    return BuiltServer(settings, app, models, len(keys), request_log)


def serve(models: ServedModel | list[ServedModel], host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info", **app_options: Any) -> None:
    """Serve `models` (a `ServedModel` or a list of them) until interrupted; `app_options` go to
    `create_app`."""
    _run(create_app(models, **app_options), host, port, log_level)


def _run(app: FastAPI, host: str, port: int, log_level: str) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
