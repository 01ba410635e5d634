"""`LLM`: the one interface every later room talks to, and `LocalLLM`, its in-process
implementation over a `Transformer` and a `Tokenizer`.

Every method takes generation options either as a `GenerationConfig` or as keyword arguments
(``llm.generate("Hi", max_new_tokens=20, temperature=0)``). A call that names no sampling option
samples as the model's own settings say (`generation_defaults`: its ``generation_config.json``, or
what a GGUF file or the pull registry recommends); otherwise `GenerationConfig`'s defaults fill the
rest.

Every model embeds too (`embed`: one float32 vector per text, pooled from the last hidden states
as the model directory's sentence-transformers files say, else their mean). An encoder
(``config.causal`` False, e.g. BERT) only embeds: the generating and scoring methods refuse it.
An encoder-decoder (T5) reads each prompt as its source and generates the target; it scores a
target given a source, and has no perplexity.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from ..models.config import ModelConfig
from ..models.hf import save_pretrained
from ..models.logprobs import token_logprobs
from ..models.resolve import is_url, load_local, local_path, resolve_model
from ..models.sampling_defaults import sampling_defaults
from ..models.classifier import Classifier, is_classifier_dir, load_classifier_parts, save_classifier
from ..models.sentence import EmbeddingSpec, read_embedding_spec, write_embedding_spec
from ..models.transformer import Transformer
from ..quant import kernels
from ..tokenizer.chat import fit_history, source_ids  # noqa: F401  (RemoteLLM and callers import fit_history from here)
from .embedding import Embedding
from .beam import beam_completions, beam_search
from .generate import Completion, TextStream, Timings, TokenGeneration
from .seq2seq import seq2seq_loglikelihood
from .sampling import GenerationConfig, valid_settings
from .scoring import LogLikelihood, TokenScoring
from .tool_calls import ChatReply, ToolCallError, has_tool_turns, tool_prompt
from .tool_parse import ContentDelta, parse_tool_calls, tool_events

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]


@runtime_checkable
class LLM(Protocol):
    """What applications, evaluation and serving need from a language model, local or remote."""

    def generate(self, prompt: str | list[str], gen: GenerationConfig | None = None, **kwargs: Any) -> str | list[str]: ...

    def stream(self, prompt: str, gen: GenerationConfig | None = None, **kwargs: Any) -> Iterator[str]: ...

    def chat(self, messages: Messages, gen: GenerationConfig | None = None, stream: bool = False,
             tools: Sequence[Any] | None = None, tool_choice: Any = None,
             **kwargs: Any) -> str | Iterator[str] | ChatReply | Iterator[Any]: ...

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[LogLikelihood]: ...

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[tuple[float, int]]: ...

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def detokenize(self, ids: Sequence[int]) -> str: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class EncoderError(ValueError):
    """Generation or scoring asked of an encoder, which only embeds."""


def encoder_message(name: str) -> str:
    """Why an encoder cannot generate, and what to do instead: the one wording, local and served."""
    return (f"{name} is an encoder (bidirectional attention): it embeds text (LLM.embed, `llmkit embed`) and "
            "cannot generate; use a causal model for generation")


def decoder_only(method: Callable) -> Callable:
    """Refuse `method` on an encoder (`EncoderError`): the one check every generating and scoring
    entry point of `LocalLLM` goes through."""
    @functools.wraps(method)
    def checked(self: "LocalLLM", *args: Any, **kwargs: Any) -> Any:
        self.require_generation()
        return method(self, *args, **kwargs)

    return checked


def eos_token_ids(tokenizer: Tokenizer, config: ModelConfig) -> set[int]:
    """The tokens that end a generation: the tokenizer's end tokens and the config's eos id(s)."""
    ids = set(tokenizer.eos_token_ids)
    eos = config.eos_token_id
    ids |= set(eos) if isinstance(eos, list) else ({eos} if eos is not None else set())
    return ids


class LocalLLM(TokenScoring, Embedding):
    """A model and its tokenizer in this process. `embedding` says how it embeds (a
    sentence-transformers directory's `EmbeddingSpec`; None: `default_spec`)."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, name: str | None = None,
                 generation_defaults: dict[str, Any] | None = None, embedding: EmbeddingSpec | None = None,
                 classifier: Classifier | None = None):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.embedding, self.classifier = embedding, classifier
        self.generation_defaults = valid_settings(dict(generation_defaults or {}), f"{name or 'the model'}'s settings")
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                f"{model.config.vocab_size}: they do not belong together"
            )
        if model.device.type == "cpu" and model.config.causal:
            kernels.library()  # built now (about 2 s, once per machine), not inside the first reply

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def generates(self) -> bool:
        """Whether the model can generate and score text: causal, with an output head over the
        vocabulary (an encoder, or a classifier's body, has none)."""
        return self.config.causal and self.model.lm_head is not None

    def require_generation(self) -> None:
        """Raise `EncoderError` unless the model can generate (and score) text (`generates`)."""
        if not self.config.causal:
            raise EncoderError(encoder_message(self.name or self.config.family))
        if self.model.lm_head is None:
            raise EncoderError(f"{self.name or self.config.family} is a classification model (no output head over the "
                               "vocabulary): it classifies (LLM.classify) and embeds, and cannot generate")

    @property
    def seq2seq(self) -> bool:
        """An encoder-decoder (T5): prompts are its sources, and it scores targets given sources."""
        return self.config.is_seq2seq

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def context_window(self) -> int:
        return self.config.context_window

    @property
    def start_token_id(self) -> int:
        """What an empty context starts from: bos, else the pad / end-of-text token."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self._pad_id()

    def __repr__(self) -> str:
        return f"LocalLLM({self.name or self.config.family}, {self.model.num_parameters():,} params, {self.device})"

    # ------------------------------------------------------------------ tokens
    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def eos_token_ids(self) -> set[int]:
        return eos_token_ids(self.tokenizer, self.config)

    def _pad_id(self) -> int:
        return self.tokenizer.padding_id

    # --------------------------------------------------------------- generation
    @decoder_only
    def complete(self, prompts: Sequence[str] | Sequence[Sequence[int]], gen: GenerationConfig | None = None,
                 **kwargs: Any) -> list[Completion]:
        """Generate for a batch of prompts (text, or token ids) at once; full results."""
        gen = self.generation(gen, **kwargs)
        token_prompts = [self.tokenize(p) if isinstance(p, str) else list(p) for p in prompts]
        if gen.num_beams > 1:
            return [self._beams(p, gen)[0] for p in token_prompts]
        run = TokenGeneration(self.model, token_prompts, gen, self.eos_token_ids(), self._pad_id(), self.tokenizer)
        texts = [TextStream(self.tokenizer.stream_decoder(), gen.stop) for _ in token_prompts]
        logprobs: list[list[float]] = [[] for _ in token_prompts]
        tops: list[list[dict[int, float]]] = [[] for _ in token_prompts]
        for step in run:
            for row, tok in enumerate(step.tokens):
                if not step.emit[row]:
                    continue
                texts[row].push(tok)
                if step.logprobs is not None:
                    logprobs[row].append(step.logprobs[row])
                if step.top_logprobs is not None:
                    tops[row].append(step.top_logprobs[row])
                if texts[row].stopped:
                    run.stop(row, "stop")
        out = []
        for row, stream in enumerate(texts):
            stream.flush()
            out.append(Completion(
                text=stream.text, token_ids=run.generated[row], finish_reason=run.finish_reasons[row] or "length",
                prompt_tokens=len(run.prompts[row]), logprobs=logprobs[row] if gen.logprobs else None,
                top_logprobs=tops[row] if gen.top_logprobs else None,
            ))
        return out

    @decoder_only
    def beams(self, prompt: str | Sequence[int], gen: GenerationConfig | None = None, **kwargs: Any) -> list[Completion]:
        """Beam search (`num_beams`, default 4): every finished beam of one prompt, best first (their
        scores: log-probability / length ** length_penalty, as transformers ranks them)."""
        if gen is None and "num_beams" not in kwargs:
            kwargs["num_beams"] = 4
        gen = self.generation(gen, **kwargs)
        return self._beams(self.tokenize(prompt) if isinstance(prompt, str) else list(prompt), gen)

    def _beams(self, ids: list[int], gen: GenerationConfig) -> list[Completion]:
        found = beam_search(self.model, ids, gen, self.eos_token_ids(), self._pad_id(), self.tokenizer)
        return beam_completions(found, self.tokenizer, gen, len(ids))

    def generate(self, prompt: str | list[str], gen: GenerationConfig | None = None, **kwargs: Any) -> str | list[str]:
        """The generated text of one prompt (str), or of each prompt of a list, batched."""
        if isinstance(prompt, str):
            return self.complete([prompt], gen, **kwargs)[0].text
        return [c.text for c in self.complete(prompt, gen, **kwargs)]

    @decoder_only
    def stream(self, prompt: str | Sequence[int], gen: GenerationConfig | None = None,
               timings: Timings | None = None, **kwargs: Any) -> Iterator[str]:
        """Text deltas as they are produced; their concatenation is `generate`'s text. Bad input
        (too long a prompt, bad options) raises here, before the first delta. `timings` is
        filled in as the stream runs. Closing the stream early (``close()``, or leaving a loop
        over it) stops the generation."""
        gen = self.generation(gen, **kwargs)
        ids = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if gen.num_beams > 1:  # a search settles its output only at the end: one delta
            return self._beam_stream(ids, gen, timings or Timings())
        run = TokenGeneration(self.model, [ids], gen, self.eos_token_ids(), self._pad_id(), self.tokenizer)
        return self._stream(run, TextStream(self.tokenizer.stream_decoder(), gen.stop), timings or Timings())

    def _beam_stream(self, ids: list[int], gen: GenerationConfig, timings: Timings) -> Iterator[str]:
        timings.prompt_tokens, start = len(ids), time.perf_counter()
        best = self._beams(ids, gen)[0]
        timings.prefill_s, timings.generated_tokens = time.perf_counter() - start, len(best.token_ids)
        if best.text:
            yield best.text

    @staticmethod
    def _stream(run: TokenGeneration, text: TextStream, timings: Timings) -> Iterator[str]:
        timings.prompt_tokens = len(run.prompts[0])
        start = last = time.perf_counter()
        try:
            for i, step in enumerate(run):
                last = time.perf_counter()
                if i == 0:
                    timings.prefill_s = last - start
                if not step.emit[0]:
                    break
                delta = text.push(step.tokens[0])
                if delta:
                    yield delta
                if text.stopped:
                    run.stop(0, "stop")
                    break
            tail = text.flush()
            if tail:
                yield tail
        finally:  # also when the reader stops early: what was made so far is counted
            timings.generated_tokens = len(run.generated[0])
            timings.finish_reason = run.finish_reasons[0]
            timings.decode_s = max(0.0, last - start - timings.prefill_s)

    def chat_prompt(self, messages: Messages) -> list[int]:
        """Token ids of `messages` rendered with the chat template, ready for the assistant's turn.
        An encoder-decoder reads them as `source_ids` gives them (without a template: their text, one per
        line)."""
        if self.seq2seq:
            return source_ids(self.tokenizer, messages)
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)

    def chat_tokens(self, messages: Messages) -> int:
        """How many tokens `messages` take in the context, rendered with the chat template."""
        return len(self.chat_prompt(messages))

    def fit_history(self, messages: Messages, max_new_tokens: int) -> Messages:
        """Drop the oldest turns until the conversation leaves room for `max_new_tokens` (see
        `fit_history`); an encoder-decoder's conversation is its source, which has the whole window."""
        budget = self.config.context_window - (0 if self.seq2seq else max_new_tokens)
        return fit_history(messages, budget, self.chat_tokens)

    @decoder_only
    def chat(self, messages: Messages, gen: GenerationConfig | None = None, stream: bool = False,
             timings: Timings | None = None, tools: Sequence[Any] | None = None, tool_choice: Any = None,
             parallel_tool_calls: bool = True, **kwargs: Any) -> str | Iterator[str] | ChatReply | Iterator[Any]:
        """The assistant's reply to `messages` (a list of {"role", "content"} dicts).

        With `tools` (`llmkit.apps.Tool`s or OpenAI ``tools`` entries) the reply is a `ChatReply`
        (content, tool calls, finish reason) whose calls' arguments are generated under their
        schemas' grammar; `tool_choice` and `parallel_tool_calls` mean what they mean in OpenAI's
        API, and the conversation may hold assistant ``tool_calls`` and ``tool`` results (see
        `llmkit.infer.tool_calls`). Streamed, it yields `ContentDelta`, `CallStart`,
        `ArgumentsDelta` events and a last `Finish`."""
        if tools is not None or tool_choice is not None:
            return self._tool_chat(messages, gen, stream, timings, tools, tool_choice, parallel_tool_calls, kwargs)
        if has_tool_turns(messages):  # earlier calls and results, written as the tool format says; text back
            reply = self._tool_chat(messages, gen, stream, timings, None, "none", True, kwargs)
            return (e.text for e in reply if isinstance(e, ContentDelta)) if stream else reply.content or ""
        ids = self.chat_prompt(messages)
        if stream:
            return self.stream(ids, gen, timings=timings, **kwargs)
        return self.complete([ids], gen, **kwargs)[0].text

    def _tool_chat(self, messages: Messages, gen: GenerationConfig | None, stream: bool, timings: Timings | None,
                   tools: Sequence[Any] | None, tool_choice: Any, parallel: bool, kwargs: dict[str, Any]):
        if self.seq2seq:
            raise ToolCallError(f"{self.name or self.config.family} is an encoder-decoder: tool calling needs a "
                                "decoder with a chat template")
        gen = self.generation(gen, **kwargs)
        if gen.response_format and gen.response_format.get("type", "text") != "text":
            raise ToolCallError("response_format cannot be combined with tools: the tool calls' grammar shapes "
                                "the answer", "response_format")
        ids, grammar = tool_prompt(self.tokenizer, messages, tools, tool_choice, parallel)
        gen = gen.replace(response_format=grammar)
        if stream:
            timings = timings or Timings()
            return tool_events(self.stream(ids, gen, timings=timings), timings)
        done = self.complete([ids], gen)[0]
        return parse_tool_calls(done.text, done.finish_reason)

    # ------------------------------------------------------------------ scoring
    loglikelihood = decoder_only(TokenScoring.loglikelihood)
    loglikelihood_rolling = decoder_only(TokenScoring.loglikelihood_rolling)

    @decoder_only
    def loglikelihood_tokens(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                             batch_size: int = 16, max_len: int | None = None) -> list[LogLikelihood]:
        """`loglikelihood` on token ids: (context ids, continuation ids) pairs. Each sequence keeps
        at most its last `max_len` (default: the context window) input tokens."""
        if self.seq2seq:
            found = seq2seq_loglikelihood(self.model, pairs, self._pad_id(), batch_size)
            return [LogLikelihood(*r) for r in found]
        max_len = min(max_len or self.config.context_window, self.config.context_window)
        for i, (ctx, cont) in enumerate(pairs):
            if not ctx:
                raise ValueError(f"pair {i} has an empty context: give at least one context token (e.g. bos)")
            if len(cont) > max_len:
                raise ValueError(f"pair {i}: a continuation of {len(cont)} tokens does not fit the context "
                                 f"window of {max_len} tokens")
        results: list[LogLikelihood | None] = [None] * len(pairs)
        # Pairs that share their (truncated) context - the choices of one question - share one pass
        # over it: the context goes through the model once into a KV cache, which is then copied
        # for each continuation. Only the continuation positions go through the output head.
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (ctx, cont) in enumerate(pairs):
            seq = (list(ctx) + list(cont))[-(max_len + 1):]
            groups.setdefault(tuple(seq[:-len(cont)]), []).append(i)
        # longest first, so padding is small and results do not depend on batch composition
        order = sorted(groups, key=lambda k: -(len(k) + max(len(pairs[i][1]) for i in groups[k])))
        batch: list[tuple[int, ...]] = []
        rows = prefix = step = 0

        def widths(key: tuple[int, ...]) -> tuple[int, int]:  # what _score_shared pads to
            return len(key) - 1, max(len(pairs[i][1]) for i in groups[key])

        for key in order:
            p, s = widths(key)
            # a batch is padded to its longest prefix plus its longest step: keep that in the window
            # (learned positions refuse padded lengths beyond it)
            if batch and (rows + len(groups[key]) > batch_size or max(prefix, p) + max(step, s) > max_len):
                self._score_shared(batch, groups, pairs, results)
                batch, rows, prefix, step = [], 0, 0, 0
            batch.append(key)
            rows += len(groups[key])
            prefix, step = max(prefix, p), max(step, s)
        if batch:
            self._score_shared(batch, groups, pairs, results)
        return results  # type: ignore[return-value]

    def _score_shared(self, contexts: list[tuple[int, ...]], groups: dict[tuple[int, ...], list[int]],
                      pairs: Sequence[tuple[Sequence[int], Sequence[int]]], results: list) -> None:
        """Score the pairs of some context groups: prefill each context but its last token (left
        padded), copy the cache rows per pair, then run last-context-token + continuation."""
        pad = self._pad_id()
        prefixes = [list(c[:-1]) for c in contexts]
        width = max(len(p) for p in prefixes)
        members = [(g, i) for g, c in enumerate(contexts) for i in groups[c]]
        steps = [[contexts[g][-1]] + list(pairs[i][1][:-1]) for g, i in members]
        step_width = max(len(s) for s in steps)
        with torch.inference_mode():
            cache = self.model.new_cache(len(contexts), width + step_width)
            if width:
                ids = torch.full((len(contexts), width), pad, dtype=torch.long)
                mask = torch.zeros((len(contexts), width), dtype=torch.long)
                for g, p in enumerate(prefixes):
                    if p:
                        ids[g, width - len(p):], mask[g, width - len(p):] = torch.tensor(p), 1
                self.model.hidden_states(ids.to(self.device), None if bool(mask.all()) else mask.to(self.device),
                                         cache=cache)
            cache.select([g for g, _ in members])
            ids = torch.full((len(members), step_width), pad, dtype=torch.long)
            for r, s in enumerate(steps):  # right padding: causal attention never looks at it
                ids[r, :len(s)] = torch.tensor(s)
            hidden = self.model.hidden_states(ids.to(self.device), cache=cache)
            lengths = [len(pairs[i][1]) for _, i in members]
            # one pass of the output head over every continuation position (it reads the head's
            # weights once), then a log-softmax of those rows only
            rows = torch.cat([hidden[r, :n] for r, n in enumerate(lengths)])
            targets = torch.tensor([t for _, i in members for t in pairs[i][1]], device=self.device)
            picked, greedy = [], []
            for c in range(0, len(rows), 1024):  # bounded memory for long (rolling) continuations
                logits, chunk = self.model.lm_head(rows[c:c + 1024]), targets[c:c + 1024]
                picked.append(token_logprobs(logits, chunk))
                greedy.append(logits.argmax(-1) == chunk)
            picked, greedy = torch.cat(picked), torch.cat(greedy)
            start = 0
            for (_, i), n in zip(members, lengths):
                results[i] = LogLikelihood(float(picked[start:start + n].sum()), bool(greedy[start:start + n].all()), n)
                start += n

    # --------------------------------------------------------------------- save
    def save(self, path: str | os.PathLike) -> Path:
        """Write model and tokenizer in Hugging Face layout (and the sentence-transformers files of
        a model that has an `embedding` spec)."""
        path = Path(path)
        if self.classifier is not None:  # the head and its labels, in *For...Classification layout
            save_classifier(self.classifier, path, self.tokenizer)
        else:
            save_pretrained(self.model, path, sampling=self.generation_defaults)
            self.tokenizer.save(path)
        if self.embedding is not None:
            write_embedding_spec(path, self.embedding, self.config.dim)
        return path


def _is_pulled(path: Path | str) -> bool:
    """A file in a folder of the model cache."""
    return _is_cached(Path(path).parent)


def _is_cached(folder: Path | str) -> bool:
    """A folder of the model cache."""
    from ..models.resolve import models_dir

    return Path(os.path.abspath(folder)).parent == Path(os.path.abspath(models_dir()))


def load(name: str | os.PathLike, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None, api_key: str | None = None):
    """An `LLM` from a model name: an HF directory, a ``.gguf`` file, a run directory, or a name in the model cache
    (see `llmkit.models.resolve`) gives a `LocalLLM` (`dtype` defaults to fp32 on CPU, bf16/fp16
    on GPUs); an ``http(s)://…/v1`` URL gives a `RemoteLLM` talking to that server."""
    where = resolve_model(name)
    if isinstance(where, str) and is_url(where):
        from .remote import RemoteLLM

        return RemoteLLM(where, api_key=api_key)
    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was asked for but this torch has no usable CUDA device: "
                           "use --device cpu (or leave it unset)")
    # read before the weights: a sentence-transformers directory llmkit cannot embed with fails at once
    embedding = read_embedding_spec(where) if where.is_dir() else None
    folder = local_path(where)
    if folder.is_dir() and is_classifier_dir(folder):  # the body embeds, the head classifies
        from ..tokenizer import Tokenizer

        body, classifier = load_classifier_parts(folder, device, dtype)
        return LocalLLM(body, Tokenizer.from_dir(folder), name=_display_name(name, folder), embedding=embedding,
                        classifier=classifier)
    if folder.suffix == ".gguf":  # its metadata parsed once, for the weights and the sampling defaults
        from ..models.gguf import GGUFFile, load_gguf

        gguf = GGUFFile(folder)
        path, (model, tokenizer) = folder, load_gguf(gguf, device=device, dtype=dtype)
        defaults = sampling_defaults(path, gguf_meta=gguf.meta)
    else:
        path, model, tokenizer = load_local(where, device=device, dtype=dtype)
        defaults = sampling_defaults(path)
    if path.suffix == ".gguf":
        return LocalLLM(model, tokenizer, name=path.parent.name if _is_pulled(path) else path.stem,
                        generation_defaults=defaults)
    if _is_cached(path):  # a hub model in the cache: its repo id, as `llmkit list` shows it
        return LocalLLM(model, tokenizer, name=path.name.replace("--", "/"), generation_defaults=defaults,
                        embedding=embedding)
    return LocalLLM(model, tokenizer, name=_display_name(name, path), generation_defaults=defaults,
                    embedding=embedding)


def _display_name(name: str | os.PathLike, path: Path) -> str:
    """A run directory's weights are in its model/ folder, but the run's name is the model's
    (chat and serve show it)."""
    folder = path.parent if path == Path(str(name)).expanduser() / "model" else path
    return Path(os.path.abspath(folder)).name
