"""`guarded(llm, ...)`: an `LLM` that wraps any `LLM` with what production needs, and is itself an
`LLM` (the same `generate`, `chat`, `stream`), so everything in the project can sit behind it.

    llm = guarded(llmkit.load("http://gpu-box:8000/v1"), retries=3, fallbacks=["http://backup:8000/v1"],
                  cache="semantic", budget={"session_tokens": 200_000, "call_tokens": 4_000},
                  price_prompt=0.5, price_completion=1.5, log="calls.sqlite", timeout=30)
    llm.chat([{"role": "user", "content": "What is 2+2?"}], temperature=0)

A call goes: input guards → cache (temperature 0 only) → budget admission (the worst case is
reserved) → the chain of models (each behind its circuit breaker, each request retried as
`breaker.classify` says, with exponential backoff and jitter or the server's ``Retry-After``) →
charge, cache → output guards (which see the conversation as the caller gave it, before any input
rewrite; tool calls included) → log row. Every call, failed or not, writes one row to the call
log, with the tokens and cost it spent. Only the first model's answers are cached (a fallback's
answer is not served later as the first model's); a cache or a log that fails is logged and
skipped, never the call's failure.

Who retries: this wrapper, alone. A `RemoteLLM` in the chain is copied with ``retries=0`` (and
this wrapper's `timeout`), and raises `EndpointError`s that carry the status and ``Retry-After``;
the wait is `llmkit.infer.retry.retry_delay`, the one backoff rule both use. `timeout` applies to
models that have one (RemoteLLM); a local model is not timed out.

Streams: a request is retried, or handed to the next model, only until its first token; after
that a broken stream raises `StreamInterrupted` (what was yielded stands, nothing is repeated or
spliced). With output guards a stream is produced whole and checked before it is yielded, so it
can be retried as a plain call can.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ...infer.generate import Timings
from ...infer.retry import retry_delay
from ...infer.sampling import GenerationConfig
from ...tokenizer.chat import estimate_chat_tokens
from .breaker import FALLBACK, RAISE, RETRY, CircuitBreaker, classify
from .budget import Budget, Reservation
from .cache import DEFAULT_THRESHOLD, CacheEntry, context_key
from .calllog import CallLog, CallRecord, open_call_log
from .chain import Endpoint, make_cache, take_over
from .errors import AllAttemptsFailed, GuardFailed, GuardRefused, StreamInterrupted
from .guards import (check_guards, check_reply, check_stream, has_output_guards, run_input_guards, run_output_guards,
                     text_of, tools_stream)

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]
ENDPOINTS = {"chat": "/v1/chat/completions", "generate": "/v1/completions"}  # the API path a call maps to


class Guarded:
    """An `LLM` over a chain of models (`llm`, then `fallbacks`) with retries, circuit breakers,
    caches, budgets, guards and a call log; see the module doc and `guarded`."""

    def __init__(self, llm: Any, retries: int = 2, fallbacks: Sequence[Any] = (), cache: Any = None,
                 budget: Budget | dict | int | None = None, guards: Sequence[Any] = (), timeout: float | None = None,
                 backoff: float = 0.5, max_wait: float = 30.0, jitter: float = 0.2, embedder: Any = None,
                 threshold: float = DEFAULT_THRESHOLD, cache_ttl: float | None = None,
                 log: str | CallLog | None = None, log_text: bool = False, scrub: bool = True,
                 session: str | None = None, price_prompt: float = 0.0, price_completion: float = 0.0,
                 breaker_failures: int = 5, breaker_cooldown: float = 30.0, on_refusal: str = "raise",
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 rand: Callable[[], float] = random.random):
        if retries < 0:
            raise ValueError(f"retries={retries}: must be 0 or more (extra tries per model)")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout={timeout}: give seconds > 0, or None for each model's own")
        if backoff < 0 or max_wait < 0 or not 0 <= jitter <= 1:
            raise ValueError(f"backoff={backoff}, max_wait={max_wait}, jitter={jitter}: backoff and max_wait are "
                             "seconds >= 0, jitter a fraction in [0, 1]")
        if on_refusal not in ("raise", "reply"):
            raise ValueError(f"on_refusal={on_refusal!r}: 'raise' (GuardRefused) or 'reply' (the guard's text, "
                             "when it offers one, is the answer)")
        self.on_refusal = on_refusal
        self.endpoints = [Endpoint(take_over(m, timeout), CircuitBreaker(breaker_failures, breaker_cooldown, clock))
                          for m in [llm, *fallbacks]]
        self.retries, self.backoff, self.max_wait, self.jitter = retries, backoff, max_wait, jitter
        self.sleep, self.rand = sleep, rand
        self.cache = make_cache(cache, embedder, threshold, cache_ttl, clock)
        self.budget = Budget.of(budget, price_prompt=price_prompt, price_completion=price_completion)
        self.guards = check_guards(guards)
        self.log = open_call_log(log, log_text, scrub)
        self.session = session

    # ------------------------------------------------------------------ the LLM protocol
    @property
    def primary(self) -> Any:
        """The first model of the chain (scoring, tokens, embeddings and settings are its)."""
        return self.endpoints[0].llm

    @property
    def name(self) -> str:
        """The first model's name (as far as known without asking its server)."""
        return self.endpoints[0].model

    def __getattr__(self, attr: str) -> Any:  # context_window, generation_defaults, chat_tokens, ...
        if attr.startswith("_") or "endpoints" not in self.__dict__:
            raise AttributeError(attr)
        return getattr(self.primary, attr)

    def __repr__(self) -> str:
        return f"Guarded({', '.join(e.name for e in self.endpoints)})"

    def settings(self, gen: GenerationConfig | None = None, **kwargs: Any) -> GenerationConfig:
        """The call's generation settings, as the first model resolves them (its own defaults for
        a call that names none); every model of the chain gets the same."""
        resolve = getattr(self.primary, "generation", None)
        return resolve(gen, **kwargs) if callable(resolve) else GenerationConfig.from_kwargs(gen, **kwargs)

    def generate(self, prompt: str | list[str], gen: GenerationConfig | None = None, **kwargs: Any) -> str | list[str]:
        """The completion of `prompt` (or of each prompt of a list, one guarded call each)."""
        if not isinstance(prompt, str):
            return [self.generate(p, gen, **kwargs) for p in prompt]
        settings = self.settings(gen, **kwargs)

        def invoke(ep: Endpoint, messages: Messages, timings: Timings) -> str:
            extra = {"timings": timings} if ep.generate_takes_timings else {}
            return ep.llm.generate(messages[-1]["content"], settings, **extra)

        return self._call("generate", [{"role": "user", "content": prompt}], settings, invoke)

    def stream(self, prompt: str, gen: GenerationConfig | None = None, timings: Timings | None = None,
               **kwargs: Any) -> Iterator[str]:
        """Text deltas of the completion of `prompt` (see the module doc on retries)."""
        settings = self.settings(gen, **kwargs)
        return self._stream("generate", [{"role": "user", "content": prompt}], settings,
                            lambda ep, m, t: ep.llm.stream(m[-1]["content"], settings, timings=t), timings)

    def chat(self, messages: Messages, gen: GenerationConfig | None = None, stream: bool = False,
             timings: Timings | None = None, tools: Sequence[Any] | None = None, tool_choice: Any = None,
             parallel_tool_calls: bool = True, **kwargs: Any) -> Any:
        """The reply to `messages`, as `LLM.chat` (text, a stream of deltas, or with `tools` a
        `ChatReply` / its events)."""
        settings = self.settings(gen, **kwargs)
        extra: dict[str, Any] = {}
        if tools is not None or tool_choice is not None:
            extra = {"tools": tools, "tool_choice": tool_choice, "parallel_tool_calls": parallel_tool_calls}

        def invoke(ep: Endpoint, m: Messages, t: Timings) -> Any:
            return ep.llm.chat(m, settings, stream=stream, timings=t, **extra)

        if stream:
            return self._stream("chat", list(messages), settings, invoke, timings, tools=bool(extra))
        return self._call("chat", list(messages), settings, invoke, tools=bool(extra))

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> Any:
        """Scoring, tokens and embeddings go to the first model as they are (no retries, cache or log)."""
        return self.primary.loglikelihood(requests)

    def loglikelihood_rolling(self, texts: Sequence[str]) -> Any:
        """As `loglikelihood`: the first model's."""
        return self.primary.loglikelihood_rolling(texts)

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The first model's tokens."""
        return self.primary.tokenize(text, add_special_tokens)

    def detokenize(self, ids: Sequence[int]) -> str:
        """The first model's text of `ids`."""
        return self.primary.detokenize(ids)

    def embed(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        """The first model's embeddings."""
        return self.primary.embed(texts, **kwargs)

    def stats(self) -> dict[str, Any]:
        """Cache hits and saved tokens, the budget's totals, and each breaker's state."""
        return {"cache": self.cache.stats.as_dict() if self.cache is not None else None,
                "budget": self.budget.summary(),
                "breakers": {e.name: e.breaker.state for e in self.endpoints}}

    # ------------------------------------------------------------------ one call
    def _cache_slot(self, kind: str, messages: Messages, settings: GenerationConfig,
                    tools: bool) -> tuple[str, str] | None:
        """(context, query) of a cacheable call (temperature 0, no tools), else None. The context
        names the first model only: only its answers are cached."""
        if self.cache is None or tools or settings.temperature != 0:
            return None
        last = messages[-1] if messages else {}
        ask = last.get("role") == "user" and isinstance(last.get("content"), str)
        earlier, query = (messages[:-1], last["content"]) if ask else (messages, "")
        context = context_key(kind=kind, model=self.endpoints[0].name, settings=dataclasses.asdict(settings),
                              earlier=earlier)
        return context, query

    def _cache_get(self, slot: tuple[str, str]) -> Any:
        try:
            return self.cache.get(*slot)
        except Exception as e:  # noqa: BLE001 — a cache is an optimisation: its failure is a miss, said loudly
            log.warning("the cache lookup failed (%s: %s); asking the model", type(e).__name__, e)
            return None

    def _cache_put(self, slot: tuple[str, str] | None, ep: Endpoint, entry: CacheEntry) -> None:
        if slot is None or ep is not self.endpoints[0]:  # a fallback's answer is never served as the first's
            return
        try:
            self.cache.put(*slot, entry)
        except Exception as e:  # noqa: BLE001 — the call succeeded; not caching it must not fail it
            log.warning("could not cache the answer (%s: %s); the call goes on", type(e).__name__, e)

    def _count(self, ep: Endpoint, kind: str, messages: Messages | None, text: str = "") -> tuple[int, bool]:
        """(tokens, exact) of a prompt (`messages`) or of a reply's `text`: the model's own count (a
        local tokenizer; a server's ``/tokenize``, once it has been seen to work), else an upper
        bound of one token per UTF-8 byte (`estimate_chat_tokens` for chat prompts)."""
        llm = ep.llm
        if ep.counts is not False and (hasattr(llm, "tokenizer") or callable(getattr(llm, "tokenize", None))):
            try:
                if messages is None:
                    return (len(llm.tokenize(text, add_special_tokens=False)) if text else 0), True
                if kind == "chat":
                    n = llm.chat_tokens(messages)
                    return n, bool(getattr(llm, "chat_tokens_exact", True))
                return len(llm.tokenize(messages[-1]["content"])), True
            except (NotImplementedError, AttributeError, TypeError) as e:  # it cannot: do not ask again
                ep.counts = False
                log.info("%s cannot count tokens (%s): token counts are upper-bound estimates", ep.name, e)
            except Exception as e:  # noqa: BLE001 — a server down now: estimate this time, the call will say
                log.info("%s could not count tokens (%s: %s): estimating", ep.name, type(e).__name__, e)
        if messages is None:
            return len(text.encode("utf-8")), False
        if kind == "chat":
            return estimate_chat_tokens(messages), False
        return len(str(messages[-1]["content"]).encode("utf-8")) + 1, False

    def _usage(self, ep: Endpoint, kind: str, messages: Messages, text: str, timings: Timings) -> tuple[int, int]:
        """(prompt, completion) tokens: the server's count, else the model's own, else estimates."""
        if timings.prompt_tokens or timings.generated_tokens:
            return timings.prompt_tokens, timings.generated_tokens
        return self._count(ep, kind, messages)[0], self._count(ep, kind, None, text)[0]

    def _attempts(self, invoke: Callable[[Endpoint, Timings], Any]) -> tuple[Any, Endpoint, Timings]:
        """`invoke` on each model of the chain in turn, retried as `classify` says, until one succeeds;
        `AllAttemptsFailed` naming every model and what happened when none does."""
        failures: list[tuple[str, str]] = []
        for ep in self.endpoints:
            if not ep.breaker.allow():
                failures.append((ep.name, f"skipped: circuit open after {ep.breaker.consecutive} failures in a row "
                                          f"(a trial call in {ep.breaker.retry_in():.1f} s)"))
                continue
            attempt = 0
            while True:
                attempt += 1
                timings = Timings()
                try:
                    out = invoke(ep, timings)
                    ep.breaker.success()
                    return out, ep, timings
                except Exception as e:
                    what = classify(e)
                    if what == RAISE:  # the caller's input, or a guard's or budget's decision: no other model
                        ep.breaker.success()
                        raise
                    ep.breaker.failure()
                    retry_after = getattr(e, "retry_after", None)
                    if what == RETRY and attempt <= self.retries and ep.breaker.state == "closed" and \
                            (retry_after is None or retry_after <= self.max_wait):
                        delay = retry_delay(attempt, self.backoff, self.max_wait, retry_after, self.jitter, self.rand)
                        log.info("%s: %s; attempt %d of %d in %.2f s", ep.name, e, attempt + 1, self.retries + 1,
                                 delay)
                        self.sleep(delay)
                        continue
                    why = ("" if what != RETRY or attempt > self.retries else
                           f" (asked to wait {retry_after:g} s, over max_wait={self.max_wait:g})"
                           if retry_after is not None and retry_after > self.max_wait else " (circuit opened)")
                    failures.append((ep.name, f"{attempt} attempt{'s' * (attempt > 1)}{why}, last: {e}"))
                    log.warning("%s failed%s: %s", ep.name, "; trying the next model" if what == FALLBACK else "", e)
                    break
                except BaseException:  # interrupted (KeyboardInterrupt): a half-open trial must still end
                    ep.breaker.abandon()
                    raise
        listing = "; ".join(f"[{i}] {name}: {what}" for i, (name, what) in enumerate(failures, 1))
        raise AllAttemptsFailed(f"every model failed ({len(self.endpoints)} in the chain): {listing}. Check that the "
                                "servers are up and speak the OpenAI API, or add fallbacks=", failures)

    def _write(self, kind: str, messages: Messages, started: float, model: str | None, status: int,
               tokens: tuple[int, int] = (0, 0), cost: float = 0.0, completion: str | None = None,
               cache_hit: str | None = None, error: BaseException | None = None) -> None:
        if self.log is None:
            return
        prompt = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in messages) if kind == "chat" \
            else str(messages[-1]["content"])
        status = status if error is None else int(getattr(error, "status", None) or 0)
        try:
            self.log.write(CallRecord(time.time(), self.session, model, ENDPOINTS[kind], status,
                                      tokens[0], tokens[1], time.perf_counter() - started, cost, prompt, completion,
                                      cache_hit, f"{type(error).__name__}: {error}" if error is not None else None))
        except Exception:  # noqa: BLE001 — a broken log must not break the call; it says so loudly
            log.exception("could not write the call log row to %s", getattr(self.log, "path", self.log))

    def _prepare(self, kind: str, messages: Messages, settings: GenerationConfig,
                 tools: bool) -> tuple[Messages, Any, Any, Reservation | None]:
        """Input guards, then a cache hit (entry, how) or the budget's reservation:
        (messages to send, cache slot, hit, reservation)."""
        sent = run_input_guards(self.guards, messages)
        slot = self._cache_slot(kind, sent, settings, tools)
        hit = self._cache_get(slot) if slot is not None else None
        if hit is not None:
            return sent, slot, hit, None
        prompt, exact = self._count(self.endpoints[0], kind, sent) if self.budget.limited else (0, True)
        return sent, slot, None, self.budget.admit(prompt, settings.max_new_tokens, estimated=not exact)

    def _instead(self, error: BaseException, tools: bool) -> str | None:
        """The text a refusing guard offers, when `on_refusal` is "reply" (never for a crashed guard)."""
        if self.on_refusal == "reply" and isinstance(error, GuardRefused) and not isinstance(error, GuardFailed) \
                and not tools:
            return error.text
        return None

    def _call(self, kind: str, messages: Messages, settings: GenerationConfig, invoke: Callable,
              tools: bool = False) -> Any:
        started, model, how, tokens, cost = time.perf_counter(), None, None, (0, 0), 0.0
        original = [dict(m) for m in messages]  # as the caller gave it: what output guards see
        sent, reservation = original, None
        try:
            sent, slot, hit, reservation = self._prepare(kind, original, settings, tools)
            if hit is not None:
                entry, how = hit
                model = entry.model
                reply = run_output_guards(self.guards, original, entry.text)
                self._write(kind, sent, started, model, 200, completion=reply, cache_hit=how)
                return reply
            reply, ep, timings = self._attempts(lambda e, t: invoke(e, sent, t))
            model = ep.model
            text = reply if isinstance(reply, str) else (getattr(reply, "content", None) or "")
            tokens = self._usage(ep, kind, sent, text, timings)
            cost = self.budget.charge(*tokens, reservation)
            self._cache_put(slot, ep, CacheEntry(text, tokens[0], tokens[1], model))  # checked again on every hit
            checked = check_reply(self.guards, original, reply)
            shown = checked if isinstance(checked, str) else getattr(checked, "content", None)
            self._write(kind, sent, started, model, 200, tokens, cost, shown)
            return checked
        except Exception as e:
            instead = self._instead(e, tools)
            self._write(kind, sent, started, model, 0, tokens, cost, completion=instead, cache_hit=how, error=e)
            if instead is None:
                raise
            return instead
        finally:
            if reservation is not None:
                reservation.release()  # nothing spent (failed), or settled by charge already

    def _stream(self, kind: str, messages: Messages, settings: GenerationConfig, invoke: Callable,
                timings: Timings | None, tools: bool = False) -> Iterator[Any]:
        """Guards, cache and budget are checked now (a refusal raises here); the request goes out
        when the first delta is asked for."""
        started = time.perf_counter()
        original = [dict(m) for m in messages]
        try:
            sent, slot, hit, reservation = self._prepare(kind, original, settings, tools)
        except Exception as e:
            instead = self._instead(e, tools)
            self._write(kind, original, started, None, 0, completion=instead, error=e)
            if instead is None:
                raise
            return iter([instead])
        return self._deltas(kind, original, sent, slot, hit, reservation, invoke,
                            timings if timings is not None else Timings(), started)

    def _deltas(self, kind: str, original: Messages, sent: Messages, slot: Any, hit: Any,
                reservation: Reservation | None, invoke: Callable, timings: Timings, started: float) -> Iterator[Any]:
        try:
            if hit is not None:
                yield from self._hit_deltas(kind, original, sent, hit, started)
                return
            yield from self._model_deltas(kind, original, sent, slot, reservation, invoke, timings, started)
        finally:
            if reservation is not None:
                reservation.release()

    def _hit_deltas(self, kind: str, original: Messages, sent: Messages, hit: Any, started: float) -> Iterator[str]:
        entry, how = hit
        try:
            reply = run_output_guards(self.guards, original, entry.text)
        except Exception as e:
            reply = self._instead(e, False)
            self._write(kind, sent, started, entry.model, 0, completion=reply, cache_hit=how, error=e)
            if reply is None:
                raise
        else:
            self._write(kind, sent, started, entry.model, 200, completion=reply, cache_hit=how)
        if reply:
            yield reply

    def _model_deltas(self, kind: str, original: Messages, sent: Messages, slot: Any,
                      reservation: Reservation | None, invoke: Callable, timings: Timings,
                      started: float) -> Iterator[Any]:
        buffered = has_output_guards(self.guards)
        parts: list[Any] = []  # what reached the caller
        head: list[Any] = []
        made = ""  # what the model made (buffered: before the output guards)
        ep: Endpoint | None = None
        error: BaseException | None = None
        done = False

        def first(e: Endpoint, t: Timings) -> tuple[Iterator[Any], list[Any]]:
            it = iter(invoke(e, sent, t))
            if buffered:  # the whole reply, inside the retry scope: nothing has reached the caller yet
                return it, list(it)
            return it, [x for x in [next(it, _END)] if x is not _END]

        try:
            (it, head), ep, used = self._attempts(first)
            if buffered:
                made = text_of(head)
                try:
                    out = check_stream(self.guards, original, head)
                except GuardRefused as e:
                    instead = self._instead(e, tools_stream(head))
                    if instead is None:
                        raise
                    error, out = e, [instead]
                for p in out:
                    parts.append(p)
                    yield p
            else:
                for p in head:
                    parts.append(p)
                    yield p
                try:
                    for p in it:
                        parts.append(p)
                        yield p
                except Exception as e:
                    if classify(e) == RAISE:
                        raise
                    ep.breaker.failure()
                    got = text_of(parts)
                    raise StreamInterrupted(
                        f"the stream from {ep.name} broke off after {len(got)} characters ({len(parts)} deltas): {e}. "
                        "What was yielded stands but the answer is incomplete; it is not retried, so nothing is "
                        "repeated or spliced: ask again", ep.name, got) from e
            done = True
        except BaseException as e:
            error = e if isinstance(e, Exception) else None
            raise
        finally:
            if ep is not None and not done:
                getattr(it, "close", lambda: None)()  # left early or broke: stop the generation
            if ep is not None:
                timings.prompt_tokens, timings.generated_tokens = used.prompt_tokens, used.generated_tokens
                timings.prefill_s, timings.decode_s, timings.finish_reason = used.prefill_s, used.decode_s, \
                    used.finish_reason
                if not done and error is None:
                    timings.generated_tokens = 0  # left early: counted from the text below
                made = made if buffered else text_of(parts)
                tokens = self._usage(ep, kind, sent, made, timings)
                cost = self.budget.charge(*tokens, reservation)
                if done and not tools_stream(head):  # output guards check it again on a hit
                    self._cache_put(slot, ep, CacheEntry(made, tokens[0], tokens[1], ep.model))
                self._write(kind, sent, started, ep.model, 200, tokens, cost, text_of(parts), error=error)
            else:
                self._write(kind, sent, started, None, 0, error=error)


_END = object()


def guarded(llm: Any, retries: int = 2, fallbacks: Sequence[Any] = (), cache: Any = None,
            budget: Budget | dict | int | None = None, guards: Sequence[Any] = (), **options: Any) -> Guarded:
    """`llm` (an `LLM`, a model name or an ``http(s)://…/v1`` URL) behind retries, a fallback chain,
    circuit breakers, a cache ("exact" or "semantic"), budgets, guards and a call log: an `LLM`
    itself. Options (see `Guarded`): timeout, backoff, max_wait, jitter, embedder, threshold,
    cache_ttl, log (a .jsonl or .sqlite path), log_text, scrub, session, price_prompt,
    price_completion (per million tokens), breaker_failures, breaker_cooldown, and clock / sleep /
    rand for tests."""
    return Guarded(llm, retries=retries, fallbacks=fallbacks, cache=cache, budget=budget, guards=guards, **options)
