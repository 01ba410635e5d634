"""The serving engine: continuous batching over a paged KV cache.

Requests wait in a bounded queue. At every step the engine (1) frees the blocks of cancelled
requests, (2) admits waiting requests while the batch has room and the pool has blocks, and
prefills prompts within a budget of `prefill_chunk` tokens — shortest remaining prompt first, a long
one in chunks over several steps, so that neither the running requests nor short prompts wait behind
it (``prefill="serial"``: each admitted prompt whole, in arrival order, the engine's first behaviour)
— sampling a request's first token when its prompt is in, and (3) runs one decoding pass for the whole
running batch (the C++ step of `models.decode_step` where it serves the model), each row with its own
sampling settings, stop conditions and token budget.
A row leaves the batch the step it finishes, and its blocks go back to the pool.
When the pool runs dry mid-flight the newest request (decoding or still prefilling) is preempted: its
blocks are freed (the full ones stay findable in the prefix cache) and it waits at the head of the queue
to be recomputed from its prompt and the tokens it already has.

    engine = Engine(llm, max_batch=16)
    [c.text for c in engine.generate(["def main():", "import os"], max_new_tokens=20)]

    engine.start()                      # a background thread runs the steps (the server does this)
    req = engine.submit(ids, gen, on_event=print)
    engine.cancel(req.id)

Events (`Event`) carry a text delta and the token behind it, and, on the last one, the finish
reason ("stop", "length" or "cancelled") and token counts.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Sequence

import torch

from .blocks import BlockPool, CacheExhaustedError, PagedStep, Sequence as CacheSequence, padded_passes
from ..models.decode_step import DecodeStep
from .generate import Completion, TextStream, decoder_start, encode_sources, fit_prompts
from .requests import (Event, MemoryBatch, QueueFullError, Request, RequestTooLargeError,  # noqa: F401 (re-exported)
                       completion)
from .sampling import GenerationConfig, Sampler
from .speculative import BatchDrafter, SpeculativeError, can_speculate, load_draft

log = logging.getLogger(__name__)


class Engine:
    """Continuous batching for one `LocalLLM` (its model and tokenizer)."""

    def __init__(self, llm, max_batch: int = 16, kv_cache_tokens: int | None = None, block_size: int = 16,
                 max_queue: int = 256, use_adapter: Callable[[str | None], Any] | None = None,
                 prefix_cache: bool = True, prefill: str = "chunked", prefill_chunk: int = 2048,
                 speculative: Any = None, speculative_k: int = 4):
        """`use_adapter(name)` returns a context manager under which the model runs with adapter
        `name` (None: the bare base); given one, requests may name an adapter, and each step runs
        one forward pass per adapter among the running requests. `prefix_cache` shares the KV blocks
        of a prompt prefix seen before (see `llmkit.infer.blocks`); an encoder-decoder never does,
        since its decoder's keys depend on each request's source. `prefill` is "chunked" (at most
        `prefill_chunk` prompt tokens per step, shortest remaining first) or "serial" (every admitted
        prompt whole, in arrival order). `speculative` ("prompt-lookup", a draft `LocalLLM` sharing the
        tokenizer, or a model to load as one) drafts `speculative_k` tokens per step for every request that
        can take them (`can_speculate`), checked by the target in the batch's pass: the output is the same."""
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch} must be at least 1")
        if prefill not in ("chunked", "serial"):
            raise ValueError(f"prefill={prefill!r}: use 'chunked' or 'serial'")
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk={prefill_chunk} must be at least 1")
        self.prefill, self.prefill_chunk = prefill, prefill_chunk
        if speculative is not None and llm.model.config.is_seq2seq:
            raise SpeculativeError("speculative decoding is for decoder-only models: serve an encoder-decoder "
                                   "without a draft")
        if speculative_k < 1:
            raise SpeculativeError(f"speculative_k={speculative_k}: propose at least one token per step")
        self.speculation = BatchDrafter(load_draft(speculative, llm), speculative_k) if speculative is not None else None
        self.llm, self.model, self.tokenizer = llm, llm.model, llm.tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.use_adapter = use_adapter
        cfg = self.model.config
        if self.model.virtual_tokens is not None:
            raise ValueError("the engine serves LoRA adapters and plain models; prefix / prompt tuning "
                             "adapters are not supported: generate with the LLM instead")
        tokens = kv_cache_tokens or max_batch * min(cfg.context_window, 2048) // 2
        tokens = max(tokens, cfg.context_window)  # one request of the full window always fits
        # dynamic NTK rope rescales every position by the longest one in the pass, so a key depends on the
        # pass that computed it: such a model shares no cached blocks and takes each prompt whole
        dynamic = (cfg.rope_scaling or {}).get("rope_type", (cfg.rope_scaling or {}).get("type")) == "dynamic"
        if dynamic and prefill == "chunked":
            log.info("dynamic rope scaling: prompts are prefilled whole and the prefix cache is off")
            self.prefill = "serial"
        self.pool = BlockPool(cfg, -(-tokens // block_size) + 1, block_size, device=self.model.device,
                              dtype=self.model.dtype, prefix_cache=prefix_cache and not cfg.is_seq2seq and not dynamic)
        self._fast: DecodeStep | None | bool = False  # the C++ decoding step over the pool; False: not planned yet
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.prefilling: list[Request] = []  # admitted, their prompts partly in the cache
        self._cancelled: set[str] = set()
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.eos = llm.eos_token_ids()
        self._memories = MemoryBatch()  # an encoder-decoder's batched encoder outputs
        # counters for /metrics and tests
        self.steps = 0
        self.batch_sizes: list[int] = []  # running batch size of each decoding step (last 10000)
        self.tokens_out = 0
        self.tokens_in = 0
        self.preemptions = 0

    # ---------------------------------------------------------------- requests
    def submit(self, prompt: Sequence[int], gen: GenerationConfig | None = None,
               on_event: Callable[[Event], None] | None = None, request_id: str | None = None,
               adapter: str | None = None, constraint: Any = None) -> Request:
        """Queue a request (token ids). `constraint` (e.g. a `JSONConstraint`) overrides what
        `gen.response_format` asks for. Raises `ContextLengthError`, `RequestTooLargeError`,
        `ConstraintError` or `QueueFullError` at once rather than failing later."""
        gen = gen or GenerationConfig()
        if adapter is not None and self.use_adapter is None:
            raise ValueError(f"adapter {adapter!r} asked for, but this engine serves no adapters")
        cfg = self.model.config
        if gen.num_beams > 1:
            raise ValueError(f"num_beams={gen.num_beams}: the engine streams one output per request; run beam search "
                             "with LocalLLM.beams (the server runs it between engine steps)")
        ids = fit_prompts([prompt], gen, cfg.context_window, cfg.vocab_size, cfg.is_seq2seq)[0]
        start = [decoder_start(self.model, self.tokenizer.padding_id)] if cfg.is_seq2seq else None
        need = len(start or ids) + gen.max_new_tokens
        if need > self.pool.capacity_tokens:
            first = "the decoder's start token 1" if start else f"prompt {len(ids)}"
            raise RequestTooLargeError(f"the request needs {need} cache tokens ({first} + max_tokens "
                                       f"{gen.max_new_tokens}) but the engine's KV cache holds "
                                       f"{self.pool.capacity_tokens}: lower max_tokens")
        req = Request(id=request_id or f"req-{next(self._ids)}", prompt=ids, gen=gen, on_event=on_event,
                      adapter=adapter, decoder_prompt=start)
        req.stream = TextStream(self.tokenizer.stream_decoder(), gen.stop)
        req.sampler = Sampler(gen, self.model.config.vocab_size, self.model.device, 1, self.eos, self.tokenizer,
                              [constraint] if constraint is not None else None)
        req.sampler.add_prompt(torch.tensor([start or ids], device=self.model.device))
        req.speculate = self.speculation is not None and constraint is None and can_speculate(gen)
        with self._lock:
            if len(self.waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self.waiting)} requests are waiting (the bound is {self.max_queue}): "
                                     "retry later")
            self.waiting.append(req)
            self._lock.notify_all()
        return req

    def cancel(self, request_id: str) -> None:
        """Stop a request (e.g. its client went away); its blocks are freed at the next step."""
        with self._lock:
            self._cancelled.add(request_id)
            self._lock.notify_all()

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def batch_size(self) -> int:
        return len(self.running)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.prefilling or self._cancelled or self._calls)

    def run_exclusive(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` between two engine steps (in the engine's thread when it runs one), so that
        other work on the model (embeddings, prompt scoring) never races a decoding step."""
        future: Future = Future()
        if self._thread is None:
            try:
                future.set_result(fn())
            except Exception as e:
                future.set_exception(e)
            return future
        with self._lock:
            self._calls.append((fn, future))
            self._lock.notify_all()
        return future

    # -------------------------------------------------------------------- steps
    def step(self) -> None:
        """One engine iteration: cancellations, admissions (prefill), one decoding step."""
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            for req in [r for r in self.waiting if r.id in cancelled]:
                self.waiting.remove(req)
                self._finish(req, "cancelled")
        for req in [r for r in self.running + self.prefilling if r.id in cancelled]:
            self._finish(req, "cancelled")
        while self._calls:
            fn, future = self._calls.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    with torch.inference_mode():
                        future.set_result(fn())
                except Exception as e:
                    future.set_exception(e)
        if not (self.running or self.prefilling):
            self._fast = False  # idle: the model may have changed since (an adapter, quantisation), plan again
        with torch.inference_mode():
            self._admit()
            if self.running:
                self._decode()
        self.steps += 1

    def _admit(self) -> None:
        """Move waiting requests into the batch while it has room and the pool has blocks for their
        whole prompt (all or nothing, so a prefill never runs dry halfway), then prefill."""
        while len(self.running) + len(self.prefilling) < self.max_batch:
            with self._lock:
                if not self.waiting:
                    break
                req = self.waiting[0]
                if req.gen.max_new_tokens == 0:
                    self.waiting.popleft()
                    self._finish(req, "length")
                    continue
                # the prompt (and, after a preemption, the tokens so far) plus one more token
                first = req.decoder_prompt or req.prompt
                req.todo = first + req.generated[:-1] if req.generated else first
                found = self.pool.share_prefix(req.cache, req.todo, req.adapter or "")
                try:
                    self.pool.reserve(req.cache, len(req.todo) + 1)
                except CacheExhaustedError:
                    self.pool.release(req.cache)
                    break  # wait for blocks to come back
                self.waiting.popleft()
                if not req.generated:  # a prompt served for the first time (not a preempted one's recomputation)
                    self.pool.count_lookup(len(req.todo), found)
            req.admitted_at_step, req.started = self.steps, False
            self.prefilling.append(req)  # before anything can raise, so a failure finishes it (see _loop)
            if req.decoder_prompt is not None and req.memory is None:  # kept across preemptions
                with self._adapter(req.adapter):
                    req.memory = encode_sources(self.model, [req.prompt], self.tokenizer.padding_id)
        if self.prefill == "serial":
            for req in list(self.prefilling):
                self._prefill(req, len(req.todo))
        else:
            self._prefill_chunks()

    def _prefill_chunks(self) -> None:
        """Spend at most `prefill_chunk` prompt tokens: shortest remaining prompt first (so short prompts are
        not stuck behind a long one), except that requests admitted four or more steps ago go first, oldest
        first (so a long one is never starved); each request's chunk continues where its cache ends. The
        chunks run together, in passes of rows of similar length (see `padded_passes`)."""
        budget = self.prefill_chunk

        def key(r: Request) -> tuple:
            aged = self.steps - r.admitted_at_step >= 4
            return (0, r.arrival, 0) if aged else (1, len(r.todo) - r.cache.length, r.arrival)

        plan, firsts = [], set()
        for req in sorted(self.prefilling, key=key):
            if budget <= 0:
                break
            if not req.started:  # an identical prompt admitted in an earlier step may have filled the cache since
                self._share_again(req)
                # one that would compute the same next block as another row of this step waits a step, then shares it
                start, size = req.cache.length, self.pool.block_size
                first = (req.adapter, tuple(req.todo[:start + size]))
                if self.pool.prefix_cache and len(req.todo) - start > size:
                    if first in firsts:
                        continue
                    firsts.add(first)
                req.started = True
            take = min(len(req.todo) - req.cache.length, budget)
            budget -= take
            plan.append((req, take))
        for group in padded_passes([take for _, take in plan]):
            rows = [plan[i] for i in group]
            feeds = [req.todo[req.cache.length:req.cache.length + take] for req, take in rows]
            logits = self._forward([req for req, _ in rows], feeds)[:, -1]
            for (req, _), row in zip(rows, logits):
                self._prefilled(req, row)

    def _prefill(self, req: Request, take: int) -> None:
        """Put the next `take` tokens of `req`'s prompt into the cache, alone (serial prefill)."""
        if not req.started:  # an identical prompt admitted in the same step may have filled the cache since
            req.started = True
            self._share_again(req)
            take = min(take, len(req.todo) - req.cache.length)
        start = req.cache.length
        self._prefilled(req, self._forward([req], [req.todo[start:start + take]])[0, -1])

    def _prefilled(self, req: Request, logits: torch.Tensor) -> None:
        """After a prefill pass: make its full blocks findable; once the whole prompt is in, the request joins
        the running batch with its first token (sampled from `logits`)."""
        self.pool.register(req.cache, req.todo, req.adapter or "")
        if req.cache.length < len(req.todo):
            return
        self.prefilling.remove(req)
        self.running.append(req)
        if req.generated:  # recomputed after a preemption: its next token is already chosen
            req.pending = req.generated[-1]
        else:
            self.tokens_in += len(req.prompt)
            self._take(req, logits)

    def _share_again(self, req: Request) -> None:
        """Before a request's first chunk: take the cached prefix again if it has grown since admission."""
        probe = CacheSequence()
        if self.pool.share_prefix(probe, req.todo, req.adapter or "") <= req.cache.length:
            return self.pool.release(probe)
        self.pool.count_lookup(0, 0 if req.generated else probe.length - req.cache.length)
        self.pool.release(req.cache)
        req.cache = probe
        self.pool.reserve(req.cache, len(req.todo) + 1)  # fits: it needs fewer blocks than it gave back

    def _decode(self) -> None:
        """One decoding pass for the running batch: each row feeds its pending token, and a row that speculates
        its drafts after it, all checked in the same pass (see `BatchDrafter`)."""
        drafts: dict[str, list[int]] = {}
        for req in list(self.running):
            drafts[req.id] = self.speculation.draft(req) if self.speculation and req.speculate else []
            while req in self.running:  # preemption may have taken it out
                try:
                    self.pool.reserve(req.cache, req.cache.length + 1 + len(drafts[req.id]))
                    break
                except CacheExhaustedError:
                    if drafts[req.id]:  # speculating is optional: try without drafts first
                        drafts[req.id] = []
                        continue
                    # the newest request, decoding or still prefilling, gives way
                    self._preempt(max(self.running + self.prefilling, key=lambda r: r.arrival))
        rows = list(self.running)
        if not rows:
            return
        self.batch_sizes.append(len(rows))
        del self.batch_sizes[:-10000]
        feeds = [[r.pending] + drafts[r.id] for r in rows]  # drafts are checked in the same pass
        logits = self._forward(rows, feeds, keep=max(len(f) for f in feeds))
        for req, feed, row in zip(rows, feeds, logits):
            if len(feed) == 1:
                self._take(req, row[-1])
                continue
            for tok in self.speculation.check(req, feed[1:], row[-len(feed):]):
                if self._accept(req, tok):
                    break

    def _forward(self, rows: list[Request], feeds: list[list[int]], keep: int = 1) -> torch.Tensor:
        """Logits (rows, keep, vocab) of the last `keep` positions of each row, which feeds its own tokens
        (left-padded to the longest: see `PagedStep`); rows of different adapters run as separate passes."""
        counts = [len(f) for f in feeds]
        width = max(counts)
        tokens = torch.tensor([[0] * (width - len(f)) + f for f in feeds], device=self.model.device)
        groups: dict[str | None, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(r.adapter, []).append(i)
        if len(groups) == 1 and (self.use_adapter is None):
            if width == 1 and keep == 1 and rows[0].memory is None:  # one token a row: the C++ step, if it serves
                if self._fast is False:
                    self._fast = DecodeStep.for_pool(self.model, self.pool)
                logits = self._fast.paged(tokens[:, 0], [r.cache for r in rows], self.pool) if self._fast else None
                if logits is not None:
                    return logits[:, None]
            step = PagedStep(self.pool, [r.cache for r in rows], counts)
            return self.model(tokens, cache=step, logits_to_keep=keep, memory=self._memories.of(rows)).float()
        out = torch.zeros(len(rows), keep, self.model.config.vocab_size, device=tokens.device)
        for name, idx in groups.items():
            t = max(counts[i] for i in idx)
            step = PagedStep(self.pool, [rows[i].cache for i in idx], [counts[i] for i in idx])
            with self.use_adapter(name):
                out[idx, -min(t, keep):] = self.model(tokens[idx, width - t:], cache=step, logits_to_keep=keep,
                                                       memory=self._memories.of([rows[i] for i in idx])).float()
        return out

    def _adapter(self, name: str | None):
        return self.use_adapter(name) if self.use_adapter is not None else contextlib.nullcontext()

    def _preempt(self, req: Request) -> None:
        (self.running if req in self.running else self.prefilling).remove(req)
        first = req.decoder_prompt or req.prompt  # what its cache holds is findable again when it comes back
        self.pool.register(req.cache, (first + req.generated)[:req.cache.length], req.adapter or "")
        self.pool.release(req.cache)
        req.pending = None
        self.preemptions += 1
        with self._lock:
            self.waiting.appendleft(req)
        log.info("preempted %s (the KV cache is full); it will be recomputed", req.id)

    def _take(self, req: Request, logits: torch.Tensor) -> None:
        """Sample the next token of `req` from its logits row; emit it or finish the request."""
        raw = logits[None]
        token = req.sampler.choose(raw)
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
        logprobs, tops = req.sampler.logprobs(raw, token)
        self._accept(req, int(token[0]), logprobs and logprobs[0], tops and tops[0])

    def _accept(self, req: Request, tok: int, logprob: float | None = None,
                top: dict[int, float] | None = None) -> bool:
        """Add `tok` to `req`'s output and emit it, or finish the request; True once it has finished."""
        if req.sampler.is_stop(tok):
            self._finish(req, "stop")
            return True
        if logprob is not None:
            req.logprobs.append(logprob)
        if top:
            req.top_logprobs.append(top)
        req.generated.append(tok)
        req.pending = tok
        self.tokens_out += 1
        delta = req.stream.push(tok)
        self._emit(req, Event(req.id, delta, tok, logprob, top))
        if req.stream.stopped:
            self._finish(req, "stop")
        elif len(req.generated) >= req.gen.max_new_tokens:
            self._finish(req, "length")
        return req.finish_reason is not None

    def _emit(self, req: Request, event: Event) -> None:
        if req.on_event is not None:
            try:
                req.on_event(event)
            except Exception:  # a broken listener must not stop the other requests
                log.exception("event listener of %s failed; cancelling it", req.id)
                self._cancelled.add(req.id)

    def _finish(self, req: Request, reason: str) -> None:
        if req in self.running:
            self.running.remove(req)
        if req in self.prefilling:
            self.prefilling.remove(req)
        self.pool.release(req.cache)
        self._memories.forget(req.memory)
        req.finish_reason, req.finished_at, req.pending, req.memory = reason, time.perf_counter(), None, None
        req.draft_cache = None
        tail = req.stream.flush() if reason != "cancelled" else ""
        self._emit(req, Event(req.id, tail, finish_reason=reason, prompt_tokens=len(req.prompt),
                              completion_tokens=len(req.generated)))
        req.done.set()

    # --------------------------------------------------------------- use it
    def generate(self, prompts: Sequence[str | Sequence[int]],
                 gen: GenerationConfig | Sequence[GenerationConfig] | None = None, **kwargs: Any) -> list[Completion]:
        """Run `prompts` through the engine in this thread (no background loop) and return their
        completions in order. `gen` may be one setting per prompt (e.g. a seed each, so that samples
        of the same prompt differ)."""
        if isinstance(gen, (list, tuple)):
            if len(gen) != len(prompts):
                raise ValueError(f"{len(gen)} generation settings for {len(prompts)} prompts: give one per prompt")
            gens = [GenerationConfig.from_kwargs(g, **kwargs) for g in gen]
        else:
            gens = [GenerationConfig.from_kwargs(gen, **kwargs)] * len(prompts)
        reqs = [self.submit(self.llm.tokenize(p) if isinstance(p, str) else list(p), g) for p, g in zip(prompts, gens)]
        while not all(r.done.is_set() for r in reqs):
            self.step()
        return [completion(r) for r in reqs]

    def start(self) -> "Engine":
        """Run the steps in a background thread until `shutdown()`."""
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="llmkit-engine", daemon=True)
            self._thread.start()
        return self

    def shutdown(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stop and not self.has_work():
                    self._lock.wait(timeout=1.0)
                if self._stop:
                    return
            try:
                self.step()
            except Exception:  # keep serving: fail the running requests, not the server
                log.exception("engine step failed; failing the running requests")
                for req in list(self.running) + list(self.prefilling):
                    self._finish(req, "error")

    def stats(self) -> dict[str, Any]:
        return {"running": len(self.running), "prefilling": len(self.prefilling), "waiting": len(self.waiting),
                "free_blocks": self.pool.num_free, "prefill": self.prefill,
                "total_blocks": self.pool.num_blocks - 1, "block_size": self.pool.block_size,
                "steps": self.steps, "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "preemptions": self.preemptions, "prefix_cache": self.pool.prefix_cache,
                "prefix_cache_hit_rate": self.pool.hit_rate, "prefix_cached_blocks": self.pool.cached_blocks,
                "speculative": self.speculation is not None,
                "draft_tokens": self.speculation.proposed if self.speculation else 0,
                "draft_acceptance_rate": self.speculation.acceptance_rate if self.speculation else 0.0}
