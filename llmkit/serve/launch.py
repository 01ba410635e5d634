"""`llmkit serve` as functions: the settings its flags map to, and the server they build around a
loaded model.

    llm = llmkit.load_with_adapters("runs/base", ["sql=runs/sql/adapter"])
    server = build_server(llm, ServerSettings(name="base", adapters=["sql"], api_keys="keys.txt"))
    server.listen()                                       # binds the port: a taken one raises ListenError
    banner = server.summary()                             # what `llmkit serve` prints: the API's and chat page's URLs
    server.run()                                          # until Ctrl-C

    serve([ServedModel("quickstart", llm)], port=8000)    # models you built yourself

    build_server(llm, ServerSettings(embedder="all-minilm-l6-v2"))  # a second model answers /v1/embeddings
    build_server(llm, ServerSettings(guards=llmkit.apps.safety.GuardSet.named("default")))  # guards on every call
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from typing import Any, Sequence

from fastapi import FastAPI

from ..infer.llm import LocalLLM, load
from ..models.catalog import stored_quantization
from ..models.resolve import llmkit_home
from .app import create_app
from .auth import Gate, RequestLog, load_keys
from .inputs import MAX_BODY_BYTES
from .server import ServedModel, with_adapters


@dataclass
class ServerSettings:
    """How to serve a loaded model: `llmkit serve`'s flags, field for field."""

    name: str | None = None  # the requests' `model` field (default: the model's own name, as `llmkit chat` shows it)
    adapters: Sequence[str] = ()  # adapters loaded on the model, each also served as NAME:ADAPTER
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 16  # requests decoded together in one step
    kv_cache_tokens: int | None = None  # default: max_batch x half the context, at least one context
    block_size: int = 16  # tokens per KV cache block
    prefix_cache: bool = True  # share the KV blocks of a prompt prefix seen before (see llmkit.infer.blocks)
    prefill: str = "chunked"  # "chunked": prompts in chunks, shortest first, beside the decodes; "serial": each whole
    prefill_chunk: int = 2048  # prompt tokens per engine step when chunked
    draft: Any = None  # speculative decoding: "prompt-lookup", or a draft model sharing the tokenizer
    speculate: int = 4  # draft tokens per request per step
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
    model: str | os.PathLike | None = None  # what --model named: /v1/models reports its file's quantisation
    # a second model (any name the resolver takes) that answers every /v1/embeddings request, served
    # under its own name beside the model (see llmkit.serve.embeddings)
    embedder: str | os.PathLike | None = None
    embed_precision: str = "auto"  # /v1/embeddings' compute precision: auto (bf16 where fast) | fp32 | bf16
    # a guard set (e.g. llmkit.apps.safety.GuardSet.named("default")) run on every chat and completions
    # request and reply; `llmkit serve guards=NAME` builds it (see llmkit.serve.guarding)
    guards: Any = None

    def engine_options(self) -> dict[str, Any]:
        return {"max_batch": self.max_batch, "kv_cache_tokens": self.kv_cache_tokens, "block_size": self.block_size,
                "max_queue": self.max_queue, "prefix_cache": self.prefix_cache, "prefill": self.prefill,
                "prefill_chunk": self.prefill_chunk, "speculative": self.draft, "speculative_k": self.speculate}


class ListenError(ValueError):
    """The server cannot listen where its settings say: the port is taken, needs root, or the host
    is not an address of this machine. The message is one line that names the fix."""


def bind(host: str, port: int) -> socket.socket:
    """A socket listening on `host`:`port`, for `BuiltServer` (or uvicorn) to serve on. Binding
    first, before anything announces the server, turns a taken port into one `ListenError` line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # as uvicorn does: a restart may take over a port whose old connections are still closing
    # (TIME_WAIT); a port another server listens on is still refused
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # uvicorn's backlog; listening now holds the port until the app starts
    except OSError as e:
        sock.close()
        raise ListenError(_listen_problem(host, port, e)) from None
    return sock


def _listen_problem(host: str, port: int, error: OSError) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host or '0.0.0.0'}:{port}"
    if error.errno == errno.EADDRINUSE:
        return (f"{where} is already in use (another server listens there, perhaps an earlier `llmkit serve`): "
                f"stop it or choose another port, e.g. --port {_free_port(host, port)}")
    if error.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need root): choose another port, e.g. --port 8000"
    if error.errno == errno.EADDRNOTAVAIL or isinstance(error, socket.gaierror):
        return (f"--host {host} is not an address of this machine ({error.strerror}): use 127.0.0.1 (this machine "
                "only) or 0.0.0.0 (every network interface)")
    return f"cannot listen on {where}: {error.strerror or error}"


def _free_port(host: str, taken: int) -> int:
    """A port near `taken` that is free on `host` now, to suggest; the system's choice if none is."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in [p for p in range(taken + 1, taken + 21) if p < 65536] + [0]:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return probe.getsockname()[1]
    return taken + 1


_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # -> the loopback address a browser opens


def url_host(host: str) -> str:
    """`host` as a browser on this machine reaches it: a wildcard address ("every interface") is
    not one a browser may open, so it becomes loopback; IPv6 addresses go in brackets."""
    host = _WILDCARDS.get(host, host)
    return f"[{host}]" if ":" in host else host


@dataclass
class BuiltServer:
    """A server ready to listen: its app, the models it offers, the keys it knows and its log;
    `sock` once bound (`listen`, or `bind`'s socket passed to `build_server`)."""

    settings: ServerSettings
    app: FastAPI
    models: list[ServedModel]
    keys: int = 0
    request_log: RequestLog | None = None
    sock: socket.socket | None = None

    def listen(self) -> str:
        """Bind the settings' host and port now (a taken port raises `ListenError`) and return the
        server's URL; `run` then serves on this socket."""
        if self.sock is None:
            self.sock = bind(self.settings.host, self.settings.port)
        return self.url

    @property
    def url(self) -> str:
        """The server's root URL, where the chat page is; the API is under /v1. Port 0 (the system
        chooses) is known once bound."""
        port = self.sock.getsockname()[1] if self.sock is not None else self.settings.port
        return f"http://{url_host(self.settings.host)}:{port}"

    def summary(self) -> str:
        s, first = self.settings, self.models[0]
        weights = f", {first.quantization} weights" if first.quantization else ""
        wildcard = f" (listening on {s.host or '0.0.0.0'}: every network interface)" if s.host in _WILDCARDS else ""
        names = [m.name for m in self.models if m.name != self.embedder]
        cache = f" — KV cache {first.engine.pool.capacity_tokens} tokens, batch up to {s.max_batch}" \
            if first.llm.generates else ""
        lines = [f"serving {', '.join(names)} ({first.llm.model.num_parameters():,} parameters, "
                 f"{first.llm.device}{weights}) at {self.url}/v1{wildcard}{cache}"]
        embeds = next((m for m in self.models if m.name == self.embedder), None)
        if embeds is not None:
            lines.append(f"embeddings: {embeds.name} ({embeds.llm.model.num_parameters():,} parameters, "
                         f"{embeds.llm.embedding_spec.describe()}) for every model")
        if not first.llm.config.causal:
            lines.append(f"{first.name} is an encoder: it answers /v1/embeddings and refuses chat and completions")
        elif not first.llm.generates:
            lines.append(f"{first.name} is a classifier: it answers /v1/embeddings and refuses chat and completions")
        lines.append(f"API keys: {self.keys or 'none required'}; request log: "
                     f"{self.request_log.path if self.request_log else 'off'}")
        if s.guards is not None:
            lines.append(f"guards on every chat and completions request and reply: {getattr(s.guards, 'name', s.guards)}")
        if first.llm.generates:
            lines.append(f"chat in your browser: {self.url}/")
        return "\n".join(lines)

    @property
    def embedder(self) -> str | None:
        """The served name of the model that answers /v1/embeddings for every model, if one was loaded."""
        return self.app.state.server.embedder

    def run(self) -> None:
        """Listen until interrupted (binding first if `listen` was not called)."""
        self.listen()
        _run(self.app, self.sock, self.settings.log_level)


def build_server(llm: Any, settings: ServerSettings | None = None, sock: socket.socket | None = None,
                 embedder: LocalLLM | None = None) -> BuiltServer:
    """The server `settings` describe around `llm`, a `LocalLLM` (with its adapters loaded); `sock`
    is the settings' host and port already bound (`bind`), as `llmkit serve` does before it loads
    the model. `embedder` is the model `settings.embedder` names, loaded already (default: loaded
    here, on `llm`'s device)."""
    settings = settings or ServerSettings()
    if not isinstance(llm, LocalLLM):
        where = getattr(llm, "base_url", None) or repr(llm)
        raise ValueError(f"--model {where} is a server, but llmkit serve needs a local model (HF directory, run "
                         "directory, .gguf file or cached name); talk to that server directly instead")
    name = settings.name or llm.name or "model"
    options = settings.engine_options()
    models = with_adapters(name, llm, list(settings.adapters), **options) if settings.adapters \
        else [ServedModel(name, llm, engine_options=options)]
    stored = stored_quantization(settings.model)  # a GGUF's Q4_1, which its dequantised weights no longer show
    for m in models:
        m.quantization = m.quantization or stored
    from ..infer.embedding import EMBED_PRECISIONS

    if settings.embed_precision not in EMBED_PRECISIONS:
        raise ValueError(f"embed_precision={settings.embed_precision!r} is not supported: use one of "
                         f"{', '.join(EMBED_PRECISIONS)}")
    if embedder is None and settings.embedder is not None:
        embedder = load(settings.embedder, device=llm.device)
    if embedder is not None:
        models.append(_embedding_model(embedder, settings, [m.name for m in models]))
    keys = load_keys(settings.api_keys) if settings.api_keys else []
    gate = Gate(keys, requests_per_minute=settings.rate_limit, tokens_per_day=settings.token_budget)
    request_log = None
    if settings.log_requests:
        request_log = RequestLog(settings.request_log or llmkit_home() / "requests.sqlite", settings.price_prompt,
                                 settings.price_completion, log_text=settings.log_prompts)
    app = create_app(models, settings.max_body_bytes, gate=gate, request_log=request_log,
                     embedder=models[-1].name if embedder is not None else None,
                     embed_precision=settings.embed_precision, guards=settings.guards)
    return BuiltServer(settings, app, models, len(keys), request_log, sock)


def _embedding_model(embedder: Any, settings: ServerSettings, taken: list[str]) -> ServedModel:
    """The embedder as a served model, under its own name; its engine only runs its embeddings
    between steps, so it gets the smallest cache (one context window)."""
    if not isinstance(embedder, LocalLLM):
        where = getattr(embedder, "base_url", None) or repr(embedder)
        raise ValueError(f"--embedder {where} is a server, but llmkit serve needs a local embedder (HF directory, "
                         "run directory or cached name)")
    name = embedder.name or "embedder"
    if name in taken:
        raise ValueError(f"--embedder {settings.embedder or name} is served as {name!r}, which the model already is: "
                         "give the model another name with --name")
    return ServedModel(name, embedder, engine_options={"max_batch": 1, "block_size": settings.block_size,
                                                       "max_queue": settings.max_queue})


def serve(models: ServedModel | list[ServedModel], host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info", **app_options: Any) -> None:
    """Serve `models` (a `ServedModel` or a list of them) until interrupted; `app_options` go to
    `create_app`. A taken port raises `ListenError`."""
    sock = bind(host, port)
    _run(create_app(models, **app_options), sock, log_level)


def _run(app: FastAPI, sock: socket.socket, log_level: str) -> None:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on; it is how a server stops
        pass
    finally:
        sock.close()
