"""The models of a `guarded` chain: each `Endpoint` (a model, its circuit breaker, its name), how
a model joins the chain (`take_over`), and the cache a `cache=` argument names (`make_cache`)."""

from __future__ import annotations

import copy
import inspect
from typing import Any, Callable

from ...infer.remote import RemoteLLM
from .breaker import CircuitBreaker
from .cache import ExactCache, SemanticCache


class Endpoint:
    """One model of the chain: the model, its circuit breaker, and the name errors give it."""

    def __init__(self, llm: Any, breaker: CircuitBreaker):
        self.llm, self.breaker = llm, breaker
        self.counts: bool | None = None  # whether its tokenize works (None: not tried yet)
        if isinstance(llm, RemoteLLM):
            self.name = llm.base_url + (f" (model {llm._model})" if llm._model else "")
        else:
            self.name = str(getattr(llm, "name", None) or type(llm).__name__)
        try:
            self.generate_takes_timings = "timings" in inspect.signature(llm.generate).parameters
        except (TypeError, ValueError, AttributeError):  # no generate (a chat-only model), or no signature
            self.generate_takes_timings = False

    @property
    def model(self) -> str:
        """The model's name for the log (a RemoteLLM's, once it has asked the server)."""
        if isinstance(self.llm, RemoteLLM):
            return self.llm._model or self.llm.base_url
        return self.name


def take_over(llm: Any, timeout: float | None) -> Any:
    """The model as the chain uses it: a name is loaded; a RemoteLLM is copied with retries=0
    (this wrapper retries) and the wrapper's timeout."""
    if isinstance(llm, str):
        from ...infer.llm import load

        llm = load(llm)
    if isinstance(llm, RemoteLLM):
        llm = copy.copy(llm)
        llm.retries = 0
        if timeout is not None:
            llm.timeout = timeout
    elif not callable(getattr(llm, "chat", None)):
        raise TypeError(f"{llm!r} is not an LLM (no chat method): pass an LLM, a model name or an http(s)://…/v1 URL")
    return llm


def make_cache(cache: Any, embedder: Any, threshold: float, ttl: float | None, clock: Callable[[], float]):
    if cache is None or cache is False:
        return None
    if isinstance(cache, ExactCache):
        return cache
    if cache == "exact":
        return ExactCache(ttl=ttl, clock=clock)
    if cache == "semantic":
        if embedder is None:
            from ..rag.embedding import default_embedder

            embedder = default_embedder()
        return SemanticCache(embedder, threshold, ttl=3600.0 if ttl is None else ttl, clock=clock)
    raise ValueError(f"cache={cache!r}: use None, 'exact', 'semantic' (with embedder=, default all-minilm-l6-v2) "
                     "or an ExactCache / SemanticCache")
