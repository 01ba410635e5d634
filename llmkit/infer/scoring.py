"""What every LLM that scores text shares, local or remote: `loglikelihood` (a continuation given
a context, for multiple choice) and `loglikelihood_rolling` (a whole text, for perplexity), both
tokenised one way over `loglikelihood_tokens`; and `generation`, where call options meet a model's
own sampling settings."""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch

from ..models.logprobs import token_logprobs
from .sampling import SAMPLING_OPTIONS, GenerationConfig, top_logprobs
from .seq2seq import PERPLEXITY_REFUSAL, Seq2SeqScoringError


class LogLikelihood(NamedTuple):
    logprob: float  # sum of log p(continuation tokens | context)
    is_greedy: bool  # whether every continuation token is the argmax
    n_tokens: int



class TokenScoring:
    """`loglikelihood` and `loglikelihood_rolling` for any LLM that can tokenize and score token
    ids (`loglikelihood_tokens`), local or remote: both tokenise the same way; and the one place
    generation options meet the model's own sampling settings (`generation`)."""

    context_window: int
    start_token_id: int
    seq2seq: bool = False  # an encoder-decoder scores a target given a source
    generation_defaults: dict[str, Any] = {}

    def generation(self, gen: GenerationConfig | None = None, **kwargs: Any) -> GenerationConfig:
        """`gen` with `kwargs` merged in. A call that names no sampling option (no `gen`, none of
        `SAMPLING_OPTIONS` in `kwargs`, no beam search) samples as the model's own settings say
        (`generation_defaults`); one that names any samples exactly as it says, so that
        ``temperature=0`` (evaluation, judges) stays plain greedy whatever the model ships."""
        if gen is None and not set(SAMPLING_OPTIONS) & kwargs.keys() and (kwargs.get("num_beams") or 1) <= 1:
            gen = GenerationConfig(**self.generation_defaults)
        return GenerationConfig.from_kwargs(gen, **kwargs)

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise NotImplementedError

    def loglikelihood_tokens(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                             batch_size: int = 16) -> list[LogLikelihood]:
        raise NotImplementedError

    def loglikelihood(self, requests: Sequence[tuple[str, str]], batch_size: int = 16) -> list[LogLikelihood]:
        """log p(continuation | context) for (context, continuation) pairs, batched.

        Tokenised as lm-eval does: trailing spaces of the context move to the continuation, the
        continuation's tokens are those of context+continuation after the context's tokens, and an
        empty context starts from the bos (or end-of-text) token. Over-long inputs lose their
        oldest context tokens. An encoder-decoder (`seq2seq`) reads the context as its source and
        scores the continuation, tokenised on its own, as the decoder's target (as lm-eval's
        seq2seq backend does)."""
        pairs = []
        for context, continuation in requests:
            spaces = len(context) - len(context.rstrip(" "))
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            if self.seq2seq:  # source and target apart, each as the tokenizer ends it (T5: with </s>)
                ctx, cont = self.tokenize(context), self.tokenize(continuation)
            elif context:
                ctx = self.tokenize(context)
                cont = self.tokenize(context + continuation)[len(ctx):]
            else:
                ctx = [self.start_token_id]
                cont = self.tokenize(continuation, add_special_tokens=False)
            if not cont:
                raise ValueError(f"continuation {continuation!r} has no tokens to score")
            pairs.append((ctx, cont))
        return self.loglikelihood_tokens(pairs, batch_size)

    def loglikelihood_rolling(self, texts: Sequence[str], batch_size: int = 16,
                              stride: int | None = None) -> list[tuple[float, int]]:
        """(sum of log p, number of tokens) of each whole text, for perplexity. Texts longer than
        the context window are scored with a sliding window: every window after the first scores
        `stride` new tokens (default half the window) with the tokens before them as context.
        The first token is predicted from bos (or end-of-text). Encoder-decoders have no such
        score (`Seq2SeqScoringError`)."""
        if self.seq2seq:
            raise Seq2SeqScoringError(PERPLEXITY_REFUSAL.format(name=getattr(self, "name", None) or "this model"))
        window = self.context_window
        stride = stride or max(1, window // 2)
        start = self.start_token_id
        pairs, owners = [], []
        for i, text in enumerate(texts):
            tokens = self.tokenize(text, add_special_tokens=False)
            full = [start] + tokens  # full[j + 1] is tokens[j]
            pos = 0
            while pos < len(tokens):
                end = min(len(tokens), pos + (window if pos == 0 else stride))
                first = max(0, end - window)  # the model sees full[first:end], predicting full[first+1:end+1]
                pairs.append((full[first:pos + 1], full[pos + 1:end + 1]))
                owners.append(i)
                pos = end
        totals = [[0.0, 0] for _ in texts]
        for owner, res in zip(owners, self.loglikelihood_tokens(pairs, batch_size) if pairs else []):
            totals[owner][0] += res.logprob
            totals[owner][1] += res.n_tokens
        return [(lp, n) for lp, n in totals]


@torch.inference_mode()
def prompt_logprobs(model, ids: Sequence[int], top: int = 0) -> tuple[list[float | None], list[dict[int, float] | None]]:
    """log p(token i | tokens before it) for every token of `ids` (None for the first), and the
    `top` most likely alternatives at each position (None for the first). `ids` may be one token
    longer than the context window: its last token is only scored."""
    if len(ids) < 2:
        return [None] * len(ids), [None] * len(ids)
    x = torch.tensor([list(ids)], device=model.device)
    logits = model(x[:, :-1])[0]  # the last token is scored, never fed
    values: list[float | None] = [None, *token_logprobs(logits, x[0, 1:]).tolist()]
    tops: list[dict[int, float] | None] = [None]
    tops += top_logprobs(logits, top) if top else [None] * (len(ids) - 1)
    return values, tops
