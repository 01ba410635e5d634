"""An `LLM` behind an OpenAI-compatible HTTP server (llmkit serve, vLLM, llama.cpp's server, or
the OpenAI API itself), spoken to with the standard library only.

    judge = RemoteLLM("http://127.0.0.1:8000/v1", api_key="k")
    judge.chat([{"role": "user", "content": "Say hi"}], max_new_tokens=16, temperature=0)
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..models.sentence import check_texts
from ..tokenizer.chat import estimate_chat_tokens
from .generate import Timings
from .llm import fit_history
from .retry import EndpointError, RequestRefused, parse_retry_after, retry_delay  # noqa: F401  (their home was here)
from .scoring import LogLikelihood, TokenScoring
from .sampling import GenerationConfig, valid_settings
from .tool_calls import ChatReply, ToolCall, tool_mode, tool_specs
from .tool_parse import ArgumentsDelta, CallStart, ContentDelta, Finish
from .wire import api_message, usage_into

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]


class RemoteLLM(TokenScoring):
    """Chat and completion through ``/chat/completions`` and ``/completions``. The API key comes
    from `api_key` or the ``OPENAI_API_KEY`` environment variable; `model` defaults to the first
    model the server lists. With a server that tokenises (``/tokenize``, as llmkit serve and vLLM
    have) and echoes prompt log-probabilities, scoring (`loglikelihood`, `loglikelihood_rolling`)
    works as it does locally, so the evaluation harness runs multiple-choice tasks remotely.
    `embed` goes through ``/embeddings``.

    A request the server could not take is sent again up to `retries` times, after `backoff`,
    2 × `backoff`, ... seconds (or the server's ``Retry-After``, at most `max_wait`): a refused or
    reset connection, 429, 502, 503 and 504. Only the opening of a request is retried, so a stream
    never repeats what it yielded; a timeout is not retried (the server may still be working).
    Failures raise `EndpointError` (a ConnectionError) carrying the status, ``Retry-After`` and
    kind, so a wrapper can decide for itself: `llmkit.apps.production.guarded` owns retries and
    gives its RemoteLLMs ``retries=0``. A stream that breaks off, or ends without ``[DONE]``,
    raises instead of ending quietly, so a truncated answer is never taken for a whole one."""

    RETRY_STATUS = (429, 502, 503, 504)

    def __init__(self, base_url: str, api_key: str | None = None, model: str | None = None, timeout: float = 120.0,
                 retries: int = 2, backoff: float = 0.25, max_wait: float = 30.0):
        if retries < 0:
            raise ValueError(f"retries={retries} must be 0 or more")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        self.retries, self.backoff, self.max_wait = retries, backoff, max_wait
        self._model = model

    @property
    def name(self) -> str:
        return self.model

    @property
    def model(self) -> str:
        if self._model is None:
            listed = self._request("GET", "/models").get("data") or []
            if not listed:
                raise ConnectionError(f"{self.base_url}/models lists no model: pass model=")
            self._model = str(listed[0]["id"])
        return self._model

    def __repr__(self) -> str:
        return f"RemoteLLM({self.base_url}, model={self._model!r})"

    # ------------------------------------------------------------------ HTTP
    def _open(self, method: str, path: str, body: dict | None = None):
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            req = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
            tried = f" (after {attempt} attempts)" if attempt > 1 else ""
            url = self.base_url + path
            try:
                return urllib.request.urlopen(req, timeout=self.timeout)
            except urllib.error.HTTPError as e:
                try:
                    detail = e.read().decode("utf-8", "replace")[:500]
                except (OSError, http.client.HTTPException):
                    detail = "(the error body broke off)"
                retry_after = parse_retry_after(e.headers.get("Retry-After") if e.headers else None)
                if e.code in self.RETRY_STATUS and attempt < attempts:
                    self._wait(attempt, retry_after, f"{e.code}")
                    continue
                hint = " (check --api-key)" if e.code in (401, 403) else ""
                error = RequestRefused if e.code in (400, 413, 422) else EndpointError
                raise error(f"{method} {url} answered {e.code}{hint}{tried}: {detail}", url, e.code, retry_after,
                            attempt, "status") from e
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", e)
                if attempt < attempts and isinstance(reason, (ConnectionRefusedError, ConnectionResetError)):
                    self._wait(attempt, None, str(reason))
                    continue
                kind = "timeout" if isinstance(reason, TimeoutError) else "connection"
                raise EndpointError(f"cannot reach {url}{tried}: {reason or type(reason).__name__}", url, None, None,
                                    attempt, kind) from e
        raise AssertionError("unreachable")

    def _wait(self, attempt: int, retry_after: float | None, why: str) -> None:
        """Sleep before attempt `attempt` + 1: the server's Retry-After (seconds) or the backoff."""
        delay = retry_delay(attempt, self.backoff, self.max_wait, retry_after)
        log.info("%s: %s; trying again in %.2f s (attempt %d of %d)", self.base_url, why, delay, attempt + 1,
                 self.retries + 1)
        time.sleep(delay)

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        url = self.base_url + path
        with self._open(method, path, body) as resp:
            try:
                text = resp.read().decode("utf-8", "replace")
            except (OSError, http.client.HTTPException) as e:
                kind = "timeout" if isinstance(e, TimeoutError) else "interrupted"
                raise EndpointError(f"{url}: the answer broke off ({kind}): {e or type(e).__name__}", url,
                                    resp.status, kind=kind) from e
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise EndpointError(f"{url} did not answer JSON: {text[:200]!r}", url, resp.status,
                                kind="malformed") from e

    def _body(self, gen: GenerationConfig) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": gen.max_new_tokens, "temperature": gen.temperature,
                                "top_p": gen.top_p}
        if gen.stop:
            body["stop"] = list(gen.stop)
        if gen.seed is not None:
            body["seed"] = gen.seed
        if gen.presence_penalty:
            body["presence_penalty"] = gen.presence_penalty
        if gen.frequency_penalty:
            body["frequency_penalty"] = gen.frequency_penalty
        if gen.response_format:
            body["response_format"] = gen.response_format
        # not OpenAI's fields (vLLM's and llmkit's): sent when they do something, or when the
        # server would otherwise fill them with its model's own setting
        own = self.generation_defaults
        for name, off in (("top_k", 0), ("min_p", 0.0), ("repetition_penalty", 1.0)):
            if getattr(gen, name) != off or name in own:
                body[name] = getattr(gen, name)
        if gen.num_beams > 1:  # beam search is /v1/completions' best_of (vLLM: with use_beam_search)
            body["best_of"], body["use_beam_search"] = gen.num_beams, True
            for name, off in (("length_penalty", 1.0), ("early_stopping", False)):
                if getattr(gen, name) != off:
                    body[name] = getattr(gen, name)
        return body

    @staticmethod
    def _no_beams(gen: GenerationConfig, what: str) -> None:
        if gen.num_beams > 1:
            raise ValueError(f"num_beams={gen.num_beams}: through a server beam search runs on /v1/completions "
                             f"(best_of), which {what} does not use; call generate")

    def _events(self, path: str, body: dict) -> Iterator[dict]:
        """Server-sent events of a streaming request, as parsed JSON chunks. A stream that breaks
        off, sends a chunk that is not JSON, or ends without ``[DONE]`` raises `EndpointError`."""
        url, chunks = self.base_url + path, 0
        with self._open("POST", path, {**body, "stream": True}) as resp:
            try:
                for raw in resp:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        chunk = json.loads(data)
                    except json.JSONDecodeError as e:
                        raise EndpointError(f"{url} sent a stream chunk that is not JSON after {chunks} chunks: "
                                            f"{data[:200]!r}", url, resp.status, kind="malformed") from e
                    chunks += 1
                    yield chunk
            except (OSError, http.client.HTTPException) as e:
                if isinstance(e, EndpointError):
                    raise
                kind = "timeout" if isinstance(e, TimeoutError) else "interrupted"
                raise EndpointError(f"{url}: the stream broke off after {chunks} chunks ({kind}): "
                                    f"{e or type(e).__name__}", url, resp.status, kind=kind) from e
        raise EndpointError(f"{url}: the stream ended after {chunks} chunks without [DONE]: the connection was "
                            "dropped, so the answer is incomplete", url, resp.status, kind="interrupted")

    # ------------------------------------------------------------------ LLM
    def generate(self, prompt: str | list[str], gen: GenerationConfig | None = None, timings: Timings | None = None,
                 **kwargs: Any) -> str | list[str]:
        """The completion of one prompt (str), or of each prompt of a list; `timings` gets the
        server's token counts (``usage``)."""
        gen = self.generation(gen, **kwargs)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        out = self._request("POST", "/completions", {**self._body(gen), "prompt": prompts})
        usage_into(out, timings)
        texts = [c.get("text", "") for c in sorted(out.get("choices", []), key=lambda c: c.get("index", 0))]
        if len(texts) != len(prompts):
            url = f"{self.base_url}/completions"
            raise EndpointError(f"{url} answered {len(texts)} choices for {len(prompts)} prompts", url, 200,
                                kind="malformed")
        return texts[0] if isinstance(prompt, str) else texts

    def stream(self, prompt: str, gen: GenerationConfig | None = None, timings: Timings | None = None,
               **kwargs: Any) -> Iterator[str]:
        gen = self.generation(gen, **kwargs)
        self._no_beams(gen, "stream")
        body = {**self._body(gen), "prompt": prompt}
        return self._deltas("/completions", body, lambda choice: choice.get("text", ""), timings)

    def chat(self, messages: Messages, gen: GenerationConfig | None = None, stream: bool = False,
             timings: Timings | None = None, tools: Sequence[Any] | None = None, tool_choice: Any = None,
             parallel_tool_calls: bool = True, **kwargs: Any) -> Any:
        """As `LocalLLM.chat`: text, or with `tools` a `ChatReply` (streamed: its events), the
        server generating and parsing the calls."""
        gen = self.generation(gen, **kwargs)
        self._no_beams(gen, "chat")
        body = {**self._body(gen), "messages": [api_message(m) for m in messages]}
        if tools is not None or tool_choice is not None:
            return self._tool_chat(body, stream, timings, tools, tool_choice, parallel_tool_calls)
        if stream:
            return self._deltas("/chat/completions", body,
                                lambda choice: choice.get("delta", {}).get("content") or "", timings)
        out = self._request("POST", "/chat/completions", body)
        usage_into(out, timings)
        try:
            return out["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as e:
            raise self._no_message(out) from e

    def _tool_chat(self, body: dict, stream: bool, timings: Timings | None, tools: Sequence[Any] | None,
                   tool_choice: Any, parallel: bool) -> Any:
        specs = tool_specs(tools or [])
        tool_mode(tool_choice, specs)  # a bad choice fails here, as it does locally
        if specs:
            body["tools"] = specs
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
        if not parallel:
            body["parallel_tool_calls"] = False
        if stream:
            return self._tool_events(body, timings or Timings())
        out = self._request("POST", "/chat/completions", body)
        usage_into(out, timings)
        try:
            choice = out["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError) as e:
            raise self._no_message(out) from e
        calls = [ToolCall.from_openai(c) for c in message.get("tool_calls") or []]
        content = message.get("content")
        return ChatReply(content if content or not calls else None, calls, choice.get("finish_reason") or "stop")

    def _no_message(self, out: Any) -> EndpointError:
        url = f"{self.base_url}/chat/completions"
        return EndpointError(f"{url} answered without a message: {str(out)[:200]}", url, 200, kind="malformed")

    def _tool_events(self, body: dict, timings: Timings) -> Iterator[Any]:
        """A streamed reply with tools as the events `LocalLLM.chat` yields."""
        reason = "stop"
        for chunk in self._chunks("/chat/completions", body, timings):
            choice = chunk["choices"][0]
            delta = choice.get("delta") or {}
            if delta.get("content"):
                yield ContentDelta(delta["content"])
            for call in delta.get("tool_calls") or []:
                fn = call.get("function") or {}
                if call.get("id"):
                    yield CallStart(int(call.get("index", 0)), call["id"], fn.get("name", ""))
                if fn.get("arguments"):
                    yield ArgumentsDelta(int(call.get("index", 0)), fn["arguments"])
            reason = choice.get("finish_reason") or reason
        timings.finish_reason = reason
        yield Finish(reason)

    def _chunks(self, path: str, body: dict, timings: Timings) -> Iterator[dict]:
        """The chunks of a streaming request that carry choices; `timings` from the clock and the
        usage chunk (asked for with ``stream_options.include_usage``)."""
        start = last = time.perf_counter()
        try:
            for chunk in self._events(path, {**body, "stream_options": {"include_usage": True}}):
                last = time.perf_counter()
                if not timings.prefill_s:
                    timings.prefill_s = last - start
                usage = chunk.get("usage") or {}
                timings.prompt_tokens = usage.get("prompt_tokens", timings.prompt_tokens)
                timings.generated_tokens = usage.get("completion_tokens", timings.generated_tokens)
                if chunk.get("choices"):
                    yield chunk
        finally:
            timings.decode_s = max(0.0, last - start - timings.prefill_s)

    def _deltas(self, path: str, body: dict, text: Callable[[dict], str], timings: Timings | None) -> Iterator[str]:
        """The text deltas of a streaming request; `timings` from the clock and the usage chunk
        (asked for with ``stream_options.include_usage``)."""
        timings = timings or Timings()
        for chunk in self._chunks(path, body, timings):
            choice = chunk["choices"][0]
            timings.finish_reason = choice.get("finish_reason") or timings.finish_reason
            delta = text(choice)
            if delta:
                yield delta

    # --------------------------------------------------------------- the model's settings
    @property
    def generation_defaults(self) -> dict[str, Any]:
        """The served model's own sampling settings, as llmkit serve lists them ({} elsewhere)."""
        try:
            card = self.card()
        except ConnectionError:  # a server without /models: the request itself will say what is wrong
            self._model_card = card = {}  # asked once, not before every request
        return valid_settings(dict(card.get("generation_defaults") or {}), f"{self.base_url}'s model card")

    def chat_tokens(self, messages: Messages) -> int:
        """How many tokens `messages` take in the context, ready for the assistant's turn: exact from
        a server that renders the chat template in ``/tokenize`` (llmkit serve and vLLM take
        ``messages`` there); elsewhere `estimate_chat_tokens`, an upper bound (``chat_tokens_exact``
        says which the last count was)."""
        if getattr(self, "_tokenize_messages", True):
            try:
                out = self._tokenizer_call("/tokenize", {"messages": [api_message(m) for m in messages],
                                                         "add_generation_prompt": True})
                self.chat_tokens_exact = True
                return int(out["count"]) if "count" in out else len(out["tokens"])
            except NotImplementedError:  # no /tokenize at all: no use asking again
                self._tokenize_messages = False
                log.info("%s has no /tokenize: chat token counts are upper-bound estimates", self.base_url)
            except RequestRefused as e:
                # a server whose /tokenize takes only `prompt` says so once and for all; any other refusal
                # (a template that rejects these messages) is about this conversation only
                if any(sign in str(e) for sign in ("unsupported field", "extra_forbidden", "Extra inputs")):
                    self._tokenize_messages = False
                log.info("%s does not count chat messages (%s): estimating an upper bound", self.base_url,
                         str(e)[:200])
        self.chat_tokens_exact = False
        return estimate_chat_tokens(messages)

    def fit_history(self, messages: Messages, max_new_tokens: int) -> Messages:
        """Drop the oldest turns to leave room for `max_new_tokens`, when the server gives its
        context window and a tokenizer; otherwise the server refuses an over-long request."""
        try:
            budget = self.context_window - max_new_tokens
            return fit_history(messages, budget, self.chat_tokens)
        except NotImplementedError:
            return messages

    # --------------------------------------------------------------- embeddings
    def embed(self, texts: Sequence[str], batch_size: int = 64, truncate: bool = True,
              progress: Callable[[int], None] | None = None, precision: str = "auto") -> np.ndarray:
        """float32 vectors (len(texts), dim) in input order, from ``POST /embeddings`` in requests
        of `batch_size` texts (sent as base64: exact float32, a quarter of the JSON). The server
        embeds as its model says (llmkit serve: the model's sentence-transformers spec); texts
        longer than its model reads are cut there (llmkit serve's ``"truncate"`` field; other
        servers do as they do) or, with ``truncate=False``, refused (`RequestRefused`, a ValueError).
        The server decides the precision: only "auto" is accepted. `progress(n)` is called after
        each request."""
        if precision != "auto":
            raise ValueError(f"precision={precision!r}: a server embeds at the precision it was started with "
                             "(llmkit serve --embed-precision); leave precision at auto")
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        parts = []
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            parts.append(self._embeddings(chunk, truncate))
            if progress is not None:
                progress(len(chunk))
        return np.concatenate(parts)

    def _embeddings(self, texts: list[str], truncate: bool = True) -> np.ndarray:
        body = {"model": self.model, "input": texts, "encoding_format": "base64"}
        if truncate and "embedding_dim" in self.card():  # llmkit serve (its card says so) cuts as `embed` does;
            body["truncate"] = True                      # OpenAI refuses fields it does not know
        out = self._request("POST", "/embeddings", body)
        data = sorted(out.get("data") or [], key=lambda d: d.get("index", 0))
        if len(data) != len(texts):
            raise ConnectionError(f"{self.base_url}/embeddings answered {len(data)} vectors for {len(texts)} texts")
        rows = []
        for d in data:
            emb = d.get("embedding")
            # a server that ignores encoding_format answers floats
            rows.append(np.frombuffer(base64.b64decode(emb), dtype="<f4") if isinstance(emb, str)
                        else np.asarray(emb, dtype=np.float32))
        if len({len(r) for r in rows}) != 1:
            raise ConnectionError(f"{self.base_url}/embeddings answered vectors of different lengths")
        return np.stack(rows).astype(np.float32)

    @property
    def embedding_dim(self) -> int:
        """The length of `embed`'s vectors (as `LocalLLM.embedding_dim`, for checking an index
        against its embedder): llmkit serve lists it on the model card; elsewhere one text tells."""
        dim = self.card().get("embedding_dim")
        return int(dim) if dim else self._embeddings(["dimension"]).shape[1]

    # ------------------------------------------------------------ tokens & scoring
    def card(self) -> dict[str, Any]:
        """The model's entry in the server's /models list ({} when it is not listed)."""
        if getattr(self, "_model_card", None) is None:
            listed = self._request("GET", "/models").get("data") or []
            self._model_card = next((m for m in listed if m.get("id") == self.model), {})
        return self._model_card

    @property
    def context_window(self) -> int:
        n = self.card().get("max_model_len")
        if not n:
            raise NotImplementedError(f"{self.base_url}/models does not give max_model_len: rolling scoring "
                                      "needs the server's context window")
        return int(n)

    @property
    def start_token_id(self) -> int:
        start = self.card().get("start_token_id")
        if start is None:
            raise NotImplementedError(f"{self.base_url} does not say which token starts an empty context: "
                                      "give every request a non-empty context")
        return int(start)

    def _tokenizer_call(self, path: str, body: dict) -> dict:
        try:
            return self._request("POST", path, {"model": self.model, **body})
        except ConnectionError as e:
            if " 404" in str(e) or " 405" in str(e):
                raise NotImplementedError(f"{self.base_url} has no {path} endpoint, so its tokenizer is not "
                                          "reachable (llmkit serve and vLLM have one)") from e
            raise

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tokenizer_call("/tokenize", {"prompt": text, "add_special_tokens": add_special_tokens})
                    ["tokens"])

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._tokenizer_call("/detokenize", {"tokens": [int(i) for i in ids]})["prompt"]

    @property
    def seq2seq(self) -> bool:
        """Whether the served model is an encoder-decoder (its model card says so)."""
        try:
            return bool(self.card().get("encoder_decoder"))
        except ConnectionError:
            return False

    def loglikelihood_tokens(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                             batch_size: int = 16) -> list[LogLikelihood]:
        """Scored by the server: token-id prompts with ``echo``, ``logprobs: 1`` and no new tokens."""
        if self.seq2seq:
            raise NotImplementedError(f"{self.model} at {self.base_url} is an encoder-decoder: the OpenAI API scores "
                                      "a prompt's own tokens (echo), not a target given a source; score it with "
                                      "the model loaded locally (llmkit.load)")
        out: list[LogLikelihood] = []
        for i in range(0, len(pairs), batch_size):
            chunk = [(list(c), list(x)) for c, x in pairs[i:i + batch_size]]
            body = {"model": self.model, "prompt": [c + x for c, x in chunk], "max_tokens": 0, "echo": True,
                    "logprobs": 1, "temperature": 0}
            choices = sorted(self._request("POST", "/completions", body).get("choices", []),
                             key=lambda ch: ch.get("index", 0))
            if len(choices) != len(chunk):
                raise ConnectionError(f"{self.base_url}/completions answered {len(choices)} choices for "
                                      f"{len(chunk)} prompts")
            for (ctx, cont), ch in zip(chunk, choices):
                lp = ch.get("logprobs") or {}
                values = (lp.get("token_logprobs") or [])[len(ctx):len(ctx) + len(cont)]
                tops = (lp.get("top_logprobs") or [])[len(ctx):len(ctx) + len(cont)]
                if len(values) != len(cont) or any(v is None for v in values):
                    raise ConnectionError(f"{self.base_url}/completions did not echo the prompt's log-probabilities")
                greedy = len(tops) == len(values) and all(t and v >= max(t.values()) - 1e-6
                                                          for v, t in zip(values, tops))
                out.append(LogLikelihood(float(sum(values)), greedy, len(cont)))
        return out


def connect(base_url: str, api_key: str | None = None, model: str | None = None, timeout: float = 120.0) -> RemoteLLM:
    """An `LLM` served at `base_url` (``http://host:port/v1``), with the same methods as a local one."""
    return RemoteLLM(base_url, api_key=api_key, model=model, timeout=timeout)
