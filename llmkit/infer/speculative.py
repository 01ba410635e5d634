"""Speculative decoding: a cheap drafter proposes k tokens, the target model checks them all in one
forward pass, and rejection sampling keeps exactly the target's distribution.

Drafters: a small `draft` model sharing the target's tokenizer (it samples its proposals from its
own distribution q), or prompt lookup (`"prompt-lookup"`: the tokens that followed the last
occurrence of the current n-gram in the context so far — no second model; q is one-hot).

For each proposal d_i with target distribution p_i the token is accepted with probability
min(1, p_i(d_i) / q_i(d_i)); at the first rejection a token is drawn from norm(max(0, p_i - q_i))
and the rest is dropped; if all k pass, one more token comes from p_{k+1}. Every emitted token is
then distributed as plain sampling from the target (Leviathan et al. 2023; Chen et al. 2023). At
temperature 0 "accepted" means "equals the target's argmax", so the output is token for token
that of greedy decoding.

    out = speculative_generate(llm, ids, GenerationConfig(max_new_tokens=64, temperature=0), draft="prompt-lookup")
    out.completion.text, out.acceptance_rate, out.summary()   # what `llmkit generate --draft` prints
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from .generate import Completion, TextStream, fit_prompts
from .sampling import GenerationConfig, Sampler


class SpeculativeError(ValueError):
    pass


@dataclass
class SpeculativeResult:
    completion: Completion
    proposed: int  # draft tokens proposed
    accepted: int  # of which the target accepted
    target_passes: int  # forward passes of the target model after the prefill
    seconds: float = 0.0  # wall time of the whole generation, prefill included

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return len(self.completion.token_ids) / self.target_passes if self.target_passes else 0.0

    @property
    def tokens_per_second(self) -> float:
        return len(self.completion.token_ids) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (f"speculative: {self.accepted}/{self.proposed} drafts accepted ({self.acceptance_rate:.0%}), "
                f"{self.tokens_per_pass:.2f} tokens per target pass, {self.tokens_per_second:.1f} tok/s")


def prompt_lookup(context: Sequence[int], k: int, max_ngram: int = 3) -> list[int]:
    """Up to `k` tokens that followed an earlier occurrence of the context's last n-gram (longest
    n first, n <= max_ngram): the most recent occurrence with k tokens after it, else the one with
    the most."""
    n_ctx = len(context)
    for n in range(min(max_ngram, n_ctx - 1), 0, -1):
        tail = list(context[n_ctx - n:])
        best: list[int] = []
        for start in range(n_ctx - n - 1, -1, -1):
            if list(context[start:start + n]) == tail:
                follow = list(context[start + n:start + n + k])
                if len(follow) == k:
                    return follow
                if len(follow) > len(best):
                    best = follow
        if best:
            return best
    return []


def load_draft(draft, llm):
    """The drafter `draft` names for target `llm`: ``"prompt-lookup"``, a `LocalLLM` sharing the
    target's tokenizer, or a model name (see `llmkit.load`) loaded onto the target's device in its dtype."""
    if draft == "prompt-lookup":
        return draft
    if isinstance(draft, (str, os.PathLike)):
        from ..models.resolve import ModelNotFoundError
        from .llm import load

        try:
            draft = load(draft, device=llm.device, dtype=llm.model.dtype)
        except ModelNotFoundError as e:
            raise SpeculativeError(f"draft={str(draft)!r}: give 'prompt-lookup', a draft LLM or a model to load "
                                   f"({e})") from None
    if not hasattr(draft, "model"):
        raise SpeculativeError(f"draft {draft!r} is not a local model: speculative decoding runs the draft in this "
                               "process")
    same_tokenizer(draft, llm)
    return draft


def same_tokenizer(draft, llm) -> None:
    """Refuse a draft whose token ids mean other tokens than the target's (its proposals would be checked
    as other words): the vocabularies must match in size and token for token."""
    ours, theirs = llm.tokenizer, draft.tokenizer
    sizes = (draft.model.config.vocab_size, llm.model.config.vocab_size)
    if sizes[0] != sizes[1] or len(theirs) != len(ours):
        raise SpeculativeError(f"the draft's vocabulary ({sizes[0]} tokens, its tokenizer {len(theirs)}) differs "
                               f"from the target's ({sizes[1]} tokens, its tokenizer {len(ours)}): they must share a "
                               "tokenizer")
    if theirs is ours:
        return
    a, b = theirs.backend.get_vocab(with_added_tokens=True), ours.backend.get_vocab(with_added_tokens=True)
    if a != b:
        by_id_a, by_id_b = {i: t for t, i in a.items()}, {i: t for t, i in b.items()}
        i = next(i for i in sorted(set(by_id_a) | set(by_id_b)) if by_id_a.get(i) != by_id_b.get(i))
        raise SpeculativeError(f"token {i} is {by_id_a.get(i)!r} in the draft's vocabulary but {by_id_b.get(i)!r} "
                               f"in the target's ({sizes[1]} tokens each): they must share a tokenizer")


def can_speculate(gen: GenerationConfig) -> bool:
    """Whether a request with these settings can decode speculatively (the engine decodes the others
    plainly): no penalties, no grammar, no beams, and no log-probabilities asked for."""
    try:
        _check(gen, 1)
    except SpeculativeError:
        return False
    return not (gen.logprobs or gen.top_logprobs)


def _check(gen: GenerationConfig, k: int) -> None:
    if gen.repetition_penalty != 1.0 or gen.presence_penalty or gen.frequency_penalty:
        raise SpeculativeError("speculative decoding supports temperature, top_k, top_p and min_p; "
                               "turn the repetition / presence / frequency penalties off")
    if gen.response_format and gen.response_format["type"] != "text":
        raise SpeculativeError("speculative decoding does not constrain its output: generate without a draft "
                               "for a JSON response_format")
    if k < 1:
        raise SpeculativeError(f"k={k}: propose at least one token per step")
    if gen.num_beams > 1:
        raise SpeculativeError(f"num_beams={gen.num_beams}: speculative decoding samples one output; beam search "
                               "runs without a draft")


def propose(sampler: Sampler, draft, dcache, context: list[int], kk: int) -> tuple[list[int], list[torch.Tensor]]:
    """Up to `kk` draft tokens and the draft's distribution q at each (none for prompt lookup,
    whose q is one-hot at its token)."""
    if kk <= 0:
        return [], []
    if isinstance(draft, str):
        return prompt_lookup(context, kk), []
    drafts: list[int] = []
    qs: list[torch.Tensor] = []
    device = draft.model.device
    feed = torch.tensor([context[dcache.length:]], device=device)
    q = sampler.distribution(draft.model(feed, cache=dcache, logits_to_keep=1)[:, -1])[0]
    for j in range(kk):
        tok = int(sampler.draw(q))
        drafts.append(tok)
        qs.append(q)
        if j < kk - 1:
            q = sampler.distribution(draft.model(torch.tensor([[tok]], device=device), cache=dcache)[:, -1])[0]
    return drafts, qs


def verify(sampler: Sampler, drafts: list[int], qs: list[torch.Tensor], ps: torch.Tensor, lookup: bool) -> list[int]:
    """The tokens a target pass keeps: the drafts it accepts (each with probability
    min(1, p/q)), then one token drawn from the residual at the first rejection, or from the
    target's next distribution when every draft passed."""
    kept: list[int] = []
    for j, tok in enumerate(drafts):
        p = ps[j]
        if sampler.greedy:
            ok = int(p.argmax()) == tok
        else:
            q_tok = 1.0 if lookup else float(qs[j][tok])
            ok = q_tok > 0 and sampler.uniform() < min(1.0, float(p[tok]) / q_tok)
        if ok:
            kept.append(tok)
            continue
        if sampler.greedy:
            residual = p
        elif lookup:  # q is one-hot at tok: max(0, p - q) is p without tok
            residual = p.clone()
            residual[tok] = 0.0
        else:
            residual = (p - qs[j]).clamp_min(0)
        if float(residual.sum()) <= 0:
            residual = p
        return kept + [int(sampler.draw(residual / residual.sum()))]
    return kept + [int(sampler.draw(ps[len(drafts)]))]


class BatchDrafter:
    """Speculative decoding for the serving engine's requests (`llmkit.infer.engine`): `draft` proposes
    tokens after a request's pending one, which the engine feeds with it in the batch's pass; `check` keeps
    what the target accepts and rolls the request's caches back over the rest."""

    def __init__(self, drafter, k: int):
        self.drafter, self.k = drafter, k
        self.lookup = isinstance(drafter, str)
        self.proposed = self.accepted = 0  # draft tokens proposed, and accepted by the target

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    def draft(self, req) -> list[int]:
        """Up to k tokens to follow `req`'s pending token (none when one token is all its budget has left)."""
        k = min(self.k, req.gen.max_new_tokens - len(req.generated) - 1)
        if k <= 0:
            return []
        context = (req.decoder_prompt or req.prompt) + req.generated
        if not self.lookup:
            if len(context) + k > self.drafter.model.config.context_window:
                return []  # past the draft's positions the target decodes alone
            if req.draft_cache is None:  # the draft model's own cache, for this request
                req.draft_cache = self.drafter.model.new_cache(1, len(context) + req.gen.max_new_tokens + k + 1)
            # drafts dropped unchecked (the pool ran short, a preemption) may still sit in it: it holds the context
            # up to its last token at most, which every proposal feeds again
            req.draft_cache.length = min(req.draft_cache.length, len(context) - 1)
        drafts, req.draft_q = propose(req.sampler, self.drafter, req.draft_cache, context, k)
        return drafts

    def check(self, req, drafts: list[int], logits: torch.Tensor) -> list[int]:
        """The tokens `req` gets from one pass that fed its pending token and `drafts` (`logits`: the target's
        at each of them): the accepted drafts, then one of the target's own. Its cache lets go of the
        rejected drafts' keys and values."""
        context = len(req.decoder_prompt or req.prompt) + len(req.generated)
        kept = verify(req.sampler, drafts, req.draft_q, req.sampler.distribution(logits), self.lookup)
        accepted = len(kept) - 1
        self.proposed, self.accepted = self.proposed + len(drafts), self.accepted + accepted
        req.cache.length -= len(drafts) - accepted
        if req.draft_cache is not None:
            req.draft_cache.length = min(req.draft_cache.length, context + accepted)
        return kept


@torch.inference_mode()
def speculative_generate(llm, prompt: Sequence[int] | str, gen: GenerationConfig | None = None, draft="prompt-lookup",
                         k: int = 4) -> SpeculativeResult:
    """Generate from `llm` (a `LocalLLM`) for one prompt (text or token ids) with speculative
    decoding, timed. `draft` is a `LocalLLM` sharing the tokenizer, a model name to load as one,
    or ``"prompt-lookup"``."""
    gen = gen or GenerationConfig()
    _check(gen, k)
    if llm.config.is_seq2seq:
        raise SpeculativeError("speculative decoding is for decoder-only models; generate from an encoder-decoder "
                               "without a draft")
    draft = load_draft(draft, llm)
    start_time = time.perf_counter()
    lookup = isinstance(draft, str)
    model, device = llm.model, llm.model.device
    ids = llm.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
    ids = fit_prompts([ids], gen, model.config.context_window, model.config.vocab_size)[0]
    if gen.max_new_tokens == 0:
        return SpeculativeResult(Completion("", [], "length", len(ids)), 0, 0, 0)
    sampler = Sampler(gen, model.config.vocab_size, device, eos_ids=llm.eos_token_ids())
    text = TextStream(llm.tokenizer.stream_decoder(), gen.stop)
    budget = len(ids) + gen.max_new_tokens + k + 1
    cache = model.new_cache(1, budget)
    dcache = draft.model.new_cache(1, budget) if not lookup else None

    out: list[int] = []
    finish = "length"
    proposed = accepted = passes = 0
    # Invariant: both caches hold `context` but its last token (the target's, exactly; the draft's
    # at most that), and every forward pass first feeds what its cache lacks.
    context = list(ids)
    while True:
        room = gen.max_new_tokens - len(out)
        kk = min(k, room - 1)  # the last token of the budget comes from the target itself
        drafts, qs = propose(sampler, draft, dcache, context, kk)
        feed = torch.tensor([context[cache.length:] + drafts], device=device)
        # the target's distribution at each draft, then one more
        ps = sampler.distribution(model(feed, cache=cache, logits_to_keep=len(drafts) + 1)[0])
        passes += 1
        proposed += len(drafts)
        new_tokens = verify(sampler, drafts, qs, ps, lookup)
        n_ok = len(new_tokens) - 1
        accepted += n_ok
        cache.length = len(context) + n_ok  # drop the rejected drafts' keys and values
        if dcache is not None:
            dcache.length = min(dcache.length, len(context) + n_ok)
        done = False
        for tok in new_tokens:
            if sampler.is_stop(tok):
                finish, done = "stop", True
                break
            out.append(tok)
            context.append(tok)
            text.push(tok)
            if text.stopped:
                finish, done = "stop", True
                break
            if len(out) >= gen.max_new_tokens:
                done = True
                break
        if done:
            break
    text.flush()
    completion = Completion(text=text.text, token_ids=out, finish_reason=finish, prompt_tokens=len(ids))
    return SpeculativeResult(completion, proposed, accepted, passes, time.perf_counter() - start_time)
