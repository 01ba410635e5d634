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
    out.completion.text, out.acceptance_rate
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .generate import Completion, TextStream, fit_prompts
from .sampling import GenerationConfig, SamplingState, build_processors


class SpeculativeError(ValueError):
    pass


@dataclass
class SpeculativeResult:
    completion: Completion
    proposed: int  # draft tokens proposed
    accepted: int  # of which the target accepted
    target_passes: int  # forward passes of the target model after the prefill

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return len(self.completion.token_ids) / self.target_passes if self.target_passes else 0.0


def _probs(logits: torch.Tensor, gen: GenerationConfig, procs, state) -> torch.Tensor:
    """The sampling distribution of each row of `logits` (one-hot argmax at temperature 0)."""
    if gen.temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(torch.float32)
    shaped = logits.float()
    for proc in procs:
        shaped = proc(shaped, state)
    return shaped.softmax(-1)


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


@torch.inference_mode()
def speculative_generate(llm, prompt: Sequence[int] | str, gen: GenerationConfig | None = None, draft="prompt-lookup",
                         k: int = 4) -> SpeculativeResult:
    """Generate from `llm` (a `LocalLLM`) for one prompt with speculative decoding. `draft` is a
    `LocalLLM` (same tokenizer) or ``"prompt-lookup"``."""
    gen = gen or GenerationConfig()
    if gen.repetition_penalty != 1.0 or gen.presence_penalty or gen.frequency_penalty:
        raise SpeculativeError("speculative decoding supports temperature, top_k, top_p and min_p; "
                               "turn the repetition / presence / frequency penalties off")
    if k < 1:
        raise SpeculativeError(f"k={k}: propose at least one token per step")
    lookup = isinstance(draft, str)
    if lookup and draft != "prompt-lookup":
        raise SpeculativeError(f"draft={draft!r}: give a draft LLM or 'prompt-lookup'")
    model = llm.model
    if not lookup and draft.model.config.vocab_size != model.config.vocab_size:
        raise SpeculativeError(f"the draft's vocabulary ({draft.model.config.vocab_size}) differs from the "
                               f"target's ({model.config.vocab_size}): they must share a tokenizer")
    ids = llm.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
    ids = fit_prompts([ids], gen, model.config.context_window, model.config.vocab_size)[0]
    device = model.device
    generator = torch.Generator(device=device).manual_seed(gen.seed) if gen.seed is not None else None
    procs = build_processors(gen)
    state = SamplingState(1, model.config.vocab_size, device, track_prompt=False)
    stop_ids = set(gen.stop_token_ids) | (set() if gen.ignore_eos else llm.eos_token_ids())
    text = TextStream(llm.tokenizer.stream_decoder(), gen.stop)
    budget = len(ids) + gen.max_new_tokens + k + 1
    cache = model.new_cache(1, budget)
    dcache = draft.model.new_cache(1, budget) if not lookup else None
    if generator is None:  # unseeded: draw a seed so acceptance tests and sampling share one stream
        generator = torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**62, ())))

    out: list[int] = []
    finish = "length"
    proposed = accepted = passes = 0
    if gen.max_new_tokens == 0:
        return SpeculativeResult(Completion("", [], "length", len(ids)), 0, 0, 0)

    def probs(logits: torch.Tensor) -> torch.Tensor:
        return _probs(logits, gen, procs, state)

    def draw(p: torch.Tensor) -> int:
        if gen.temperature == 0:
            return int(p.argmax())
        return int(torch.multinomial(p, 1, generator=generator))

    def uniform() -> float:
        return float(torch.rand((), generator=generator, device=device))

    # Invariant: both caches hold `context` but its last token (the target's, exactly; the draft's
    # at most that), and every forward pass first feeds what its cache lacks.
    context = list(ids)
    while True:
        room = gen.max_new_tokens - len(out)
        kk = min(k, room - 1)  # the last token of the budget comes from the target itself
        drafts: list[int] = []
        qs: list[torch.Tensor] = []
        if kk > 0 and lookup:
            drafts = prompt_lookup(context, kk)
        elif kk > 0:
            feed = torch.tensor([context[dcache.length:]], device=device)
            q = probs(draft.model(feed, cache=dcache, logits_to_keep=1)[:, -1])[0]
            for j in range(kk):
                tok = draw(q)
                drafts.append(tok)
                qs.append(q)
                if j < kk - 1:
                    q = probs(draft.model(torch.tensor([[tok]], device=device), cache=dcache)[:, -1])[0]
        start = cache.length
        feed = torch.tensor([context[start:] + drafts], device=device)
        ps = probs(model(feed, cache=cache, logits_to_keep=len(drafts) + 1)[0])  # p for each draft, then one more
        passes += 1
        proposed += len(drafts)
        new_tokens: list[int] = []
        for j, tok in enumerate(drafts):
            p = ps[j]
            if gen.temperature == 0:
                ok = int(p.argmax()) == tok
            else:
                q_tok = 1.0 if lookup else float(qs[j][tok])
                ok = q_tok > 0 and uniform() < min(1.0, float(p[tok]) / q_tok)
            if ok:
                new_tokens.append(tok)
                continue
            if gen.temperature == 0:
                residual = p
            elif lookup:  # q is one-hot at tok: max(0, p - q) is p without tok
                residual = p.clone()
                residual[tok] = 0.0
            else:
                residual = (p - qs[j]).clamp_min(0)
            if float(residual.sum()) <= 0:
                residual = p
            new_tokens.append(draw(residual / residual.sum()))
            break
        else:  # every draft passed: one more token from the target's last distribution
            new_tokens.append(draw(ps[len(drafts)]))
        n_ok = len(new_tokens) - 1
        accepted += n_ok
        cache.length = len(context) + n_ok  # drop the rejected drafts' keys and values
        if dcache is not None:
            dcache.length = min(dcache.length, len(context) + n_ok)
        done = False
        for tok in new_tokens:
            if tok in stop_ids:
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
    return SpeculativeResult(completion, proposed, accepted, passes)
