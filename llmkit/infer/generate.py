"""The token loop: left-pad a batch of prompts, prefill the KV cache once, then decode one
token per step for every row until each row stops.

`TokenGeneration` works on token ids only; `TextStream` turns a row's tokens into text deltas,
holding back bytes of unfinished UTF-8 characters and text that may be the start of a stop
string. The `LLM` classes combine the two.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from ..models.decode_step import DecodeStep
from ..models.texts import cut_keeping_end
from ..models.transformer import ContextLengthError, Transformer
from .sampling import GenerationConfig, Sampler

log = logging.getLogger(__name__)


@dataclass
class Step:
    """One decoding step: the token of every row, and which rows it adds an output token to
    (not rows that had already finished, nor an end token that finishes a row)."""

    tokens: list[int]
    emit: list[bool]
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None


def fit_prompts(prompts: Sequence[Sequence[int]], gen: GenerationConfig, max_seq_len: int,
                vocab_size: int | None = None, source: bool = False) -> list[list[int]]:
    """Check that every prompt plus `max_new_tokens` fits the context window; drop the oldest
    prompt tokens when `gen.truncate_prompt`, else raise `ContextLengthError`. Token ids must
    lie in the vocabulary. An encoder-decoder's prompts are its sources (`source=True`): each
    must fit the encoder's positions on its own, and truncation keeps their start (where T5's task
    prefix sits), with a warning."""
    if len(prompts) == 0:
        raise ValueError("no prompts given: pass at least one prompt")
    budget = max_seq_len - (0 if source else gen.max_new_tokens)
    if source and gen.max_new_tokens >= max_seq_len:
        raise ContextLengthError(f"max_new_tokens={gen.max_new_tokens} exceeds the decoder's {max_seq_len} "
                                 f"positions: ask for at most {max_seq_len - 1} new tokens")
    if budget < 1:
        raise ContextLengthError(
            f"max_new_tokens={gen.max_new_tokens} leaves no room for a prompt in the context window of "
            f"{max_seq_len} tokens: ask for at most {max_seq_len - 1} new tokens"
        )
    out = []
    for i, p in enumerate(prompts):
        p = list(p)
        if not p:
            raise ValueError(f"prompt {i} is empty after tokenisation: give at least one token")
        if vocab_size is not None and (min(p) < 0 or max(p) >= vocab_size):
            bad = next(t for t in p if t < 0 or t >= vocab_size)
            raise ValueError(f"prompt {i} holds token id {bad}, outside the model's vocabulary of {vocab_size}")
        if len(p) > budget:
            if source and not gen.truncate_prompt:
                raise ContextLengthError(
                    f"source {i} has {len(p)} tokens but the encoder reads at most {budget}: shorten it, or set "
                    "truncate_prompt=True to keep its first tokens")
            if not gen.truncate_prompt:
                raise ContextLengthError(
                    f"prompt {i} has {len(p)} tokens; with max_new_tokens={gen.max_new_tokens} that exceeds "
                    f"the context window of {max_seq_len} tokens. Shorten the prompt, lower max_new_tokens, "
                    "or set truncate_prompt=True to drop the oldest tokens"
                )
            if source:
                log.warning("source %d has %d tokens; keeping the first %d the encoder reads", i, len(p), budget)
                p = cut_keeping_end(p, budget)  # the end-of-source token the model was trained with stays
            else:
                p = p[len(p) - budget:]
        out.append(p)
    return out


def decoder_start(model: Transformer, pad_token_id: int) -> int:
    """The token an encoder-decoder's decoder starts from (T5: the pad token)."""
    start = model.config.decoder_start_token_id
    return pad_token_id if start is None else start


def encode_sources(model: Transformer, sources: Sequence[Sequence[int]], pad_token_id: int):
    """The `EncoderMemory` of a batch of sources (right-padded, masked)."""
    longest = max(len(p) for p in sources)
    ids = torch.full((len(sources), longest), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(sources):
        ids[row, :len(p)] = torch.tensor(p)
        mask[row, :len(p)] = 1
    return model.memory(ids.to(model.device), mask.to(model.device))


class TokenGeneration:
    """Iterate over the decoding steps of a batch. Call `stop(row)` to end a row early (e.g. on a
    stop string); `finish_reasons[row]` is "stop" or "length" once the row has ended. A JSON
    `gen.response_format` needs the `tokenizer` (its grammar is built over the vocabulary). An
    encoder-decoder's prompts are its sources: they are encoded once, and every row's decoder
    starts from the decoder start token, cross-attending to its source."""

    def __init__(self, model: Transformer, prompts: Sequence[Sequence[int]], gen: GenerationConfig,
                 eos_token_ids: set[int] | None = None, pad_token_id: int = 0, tokenizer=None):
        self.model, self.gen = model, gen
        self.seq2seq = model.config.is_seq2seq  # then the prompts are sources, and the decoder starts afresh
        self.prompts = fit_prompts(prompts, gen, model.config.context_window, model.config.vocab_size, self.seq2seq)
        self.sampler = Sampler(gen, model.config.vocab_size, model.device, len(self.prompts), eos_token_ids or (),
                               tokenizer)
        self.pad_token_id = pad_token_id
        n = len(self.prompts)
        self.finished = [False] * n
        self.finish_reasons: list[str | None] = [None] * n
        self.generated: list[list[int]] = [[] for _ in range(n)]

    def stop(self, row: int, reason: str = "stop") -> None:
        """End `row`. A stop string found in the text of the row's last allowed token still
        counts as "stop", not "length"."""
        if not self.finished[row] or reason == "stop" and self.finish_reasons[row] == "length":
            self.finished[row], self.finish_reasons[row] = True, reason
            self.sampler.release(row)

    def __iter__(self) -> Iterator[Step]:
        gen, model = self.gen, self.model
        if gen.max_new_tokens == 0:
            for row in range(len(self.prompts)):
                self.stop(row, "length")
            return
        device = model.device
        memory = None
        with torch.inference_mode():
            if self.seq2seq:
                memory = encode_sources(model, self.prompts, self.pad_token_id)
        prompts = [[decoder_start(model, self.pad_token_id)]] * len(self.prompts) if self.seq2seq else self.prompts
        longest = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompts):  # left padding: every row's last token is aligned
            ids[row, longest - len(p):] = torch.tensor(p)
            mask[row, longest - len(p):] = 1
        ids, mask = ids.to(device), mask.to(device)
        padded = not bool(mask.all())
        cache = model.new_cache(len(prompts), longest + gen.max_new_tokens)
        self.sampler.add_prompt(ids, mask if padded else None)

        with torch.inference_mode():
            logits = model(ids, attention_mask=mask if padded else None, cache=cache, logits_to_keep=1,
                           memory=memory)[:, -1]
        # the whole step in one C++ call where it serves this model (CPU, no padding), else the modules
        fast = DecodeStep.plan(model, cache) if memory is None and gen.max_new_tokens > 1 else None
        for _ in range(gen.max_new_tokens):
            step, tokens = self._choose(logits)
            yield step
            if all(self.finished):
                return
            with torch.inference_mode():
                logits = fast(tokens) if fast is not None else None
                if logits is None:
                    logits = model(tokens[:, None], cache=cache, memory=memory)[:, -1]

    def _choose(self, logits: torch.Tensor) -> tuple[Step, torch.Tensor]:
        with torch.inference_mode():
            raw = logits.float()
            tokens = self.sampler.choose(raw)
            step = Step(tokens=tokens.tolist(), emit=[not f for f in self.finished])
            step.logprobs, step.top_logprobs = self.sampler.logprobs(raw, tokens)
        for row, tok in enumerate(step.tokens):
            if not step.emit[row]:
                continue
            if self.sampler.is_stop(tok):
                self.stop(row, "stop")
                step.emit[row] = False
                continue
            self.generated[row].append(tok)
            if len(self.generated[row]) >= self.gen.max_new_tokens:
                self.stop(row, "length")
        return step, tokens


class TextStream:
    """Text deltas of one row. Never emits part of a multi-byte character (the tokenizer's
    stream decoder holds those bytes back) or text that might turn out to begin a stop string."""

    def __init__(self, decoder, stop: Sequence[str] = ()):
        self.decoder = decoder
        self.stops = [s for s in stop if s]
        self.pending = ""
        self.text = ""
        self.stopped = False

    def _emit(self, buf: str, final: bool) -> str:
        if self.stops:
            hits = [(buf.find(s), s) for s in self.stops if s in buf]
            if hits:
                cut = min(h[0] for h in hits)
                self.stopped = True
                self.pending = ""
                self.text += buf[:cut]
                return buf[:cut]
            if not final:
                hold = _longest_stop_prefix_suffix(buf, self.stops)
                self.pending = buf[len(buf) - hold:] if hold else ""
                buf = buf[:len(buf) - hold]
        self.text += buf
        return buf

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        return self._emit(self.pending + self.decoder.push(token_id), final=False)

    def flush(self) -> str:
        if self.stopped:
            return ""
        return self._emit(self.pending + self.decoder.flush(), final=True)


def _longest_stop_prefix_suffix(buf: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `buf` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(buf)), best, -1):
            if buf.endswith(s[:n]):
                best = n
                break
    return best


@dataclass
class Completion:
    """The result of one prompt."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end token, stop token or stop string) or "length"
    prompt_tokens: int
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None


@dataclass
class Timings:
    """What one generation took, as llama.cpp's timings and Ollama's ``--verbose`` report it:
    prompt tokens and the time until the first new token (prefill), then the new tokens and the
    time they took (decode). A stream fills one in as it runs (``llm.stream(..., timings=t)``)."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    finish_reason: str | None = None  # "stop" or "length", once the generation has ended

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        # the first new token comes out of the prefill pass: the decode steps make the rest
        steps = max(0, self.generated_tokens - 1)
        return steps / self.decode_s if self.decode_s > 0 and steps else 0.0
