"""Beam search: keep the `num_beams` most likely partial outputs of one prompt, as transformers
searches (so outputs match its ``num_beams`` generation token for token).

Each step scores every continuation of every running beam (its summed log-probability), takes
the best ``2 · num_beams`` (enough that `num_beams` stay running when some end), moves those among
the best `num_beams` that end (an end token, or the token budget) to the finished list, scored
``sum log p / length ** length_penalty``, and runs the best unfinished ones on. The search stops when
no running beam can beat the worst finished one (`early_stopping=False`: judged at the current
length; "never": at the longest possible length when the penalty favours length), when
`num_beams` have finished (`early_stopping=True`), or at the token budget. A beam whose text
reaches a stop string ends there, inside the search (as transformers' `stop_strings` end one).
Beams share one KV cache whose rows follow their beams; an encoder-decoder's source is encoded once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..models.transformer import Transformer
from .generate import decoder_start, encode_sources, fit_prompts
from .sampling import GenerationConfig, stop_token_ids

NEG = -1.0e9  # the score of a beam that may not be chosen


@dataclass
class Beam:
    """One finished hypothesis: its new tokens (without the end token), its length-normalised score
    and why it ended ("stop": an end token, "length": the token budget)."""

    token_ids: list[int]
    score: float
    finish_reason: str


@torch.inference_mode()
def beam_search(model: Transformer, prompt: Sequence[int], gen: GenerationConfig, eos_ids: Sequence[int] | set[int] = (),
                pad_token_id: int = 0, tokenizer=None) -> list[Beam]:
    """The finished beams of one prompt (a source, for an encoder-decoder), best first: up to
    `gen.num_beams` of them. Stop strings (`gen.stop`) need the `tokenizer`."""
    if gen.stop and tokenizer is None:
        raise ValueError("stop strings need the tokenizer: pass tokenizer= to beam_search")
    k, budget = gen.num_beams, gen.max_new_tokens
    seq2seq = model.config.is_seq2seq
    prompt = fit_prompts([prompt], gen, model.config.context_window, model.config.vocab_size, seq2seq)[0]
    if budget == 0:
        return [Beam([], 0.0, "length") for _ in range(k)]

    def stopped(tokens: list[int]) -> bool:
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        return any(s in text for s in gen.stop)

    stops = stop_token_ids(gen, eos_ids)
    memory = encode_sources(model, [prompt], pad_token_id).select([0] * k) if seq2seq else None
    start = [decoder_start(model, pad_token_id)] if seq2seq else prompt
    cache = model.new_cache(k, len(start) + budget)
    device = model.device
    logits = model(torch.tensor([start] * k, device=device), cache=cache, memory=memory, logits_to_keep=1)[:, -1]

    keep = max(2, 1 + len(stops)) * k
    running = [[] for _ in range(k)]
    running_scores = torch.full((k,), NEG, device=device)
    running_scores[0] = 0.0  # only the first beam's continuations count at the first step
    finished: list[list[int]] = [[] for _ in range(k)]
    finished_scores = torch.full((k,), NEG, device=device)
    finished_done = torch.zeros(k, dtype=torch.bool, device=device)
    improvable = True
    stop_tensor = torch.tensor(sorted(stops), dtype=torch.long, device=device)

    for length in range(1, budget + 1):
        vocab = logits.shape[-1]
        totals = (logits.float().log_softmax(-1) + running_scores[:, None]).view(-1)
        top_scores, top_idx = totals.topk(keep)
        source_beam, tokens = top_idx // vocab, top_idx % vocab
        ends = torch.isin(tokens, stop_tensor) | (length >= budget)
        candidates = [running[b] + [t] for b, t in zip(source_beam.tolist(), tokens.tolist())]
        if gen.stop:
            ends |= torch.tensor([stopped(c) for c in candidates], device=device)

        # the best unfinished candidates run on
        runnable = top_scores + ends.float() * NEG
        order = runnable.topk(k).indices
        next_scores, next_rows = runnable[order], source_beam[order]

        # those of the best k candidates that end may join the finished list
        just_finished = ends.clone()
        just_finished[k:] = False
        normalised = top_scores / (length ** gen.length_penalty)
        if gen.early_stopping is True and bool(finished_done.all()):
            normalised = normalised + NEG
        if not improvable:
            normalised = normalised + NEG
        normalised = normalised + (~just_finished).float() * NEG
        merged = torch.cat([finished_scores, normalised])
        best = merged.topk(k).indices
        pool = finished + candidates
        finished = [pool[i] for i in best.tolist()]
        finished_scores = merged[best]
        finished_done = torch.cat([finished_done, just_finished])[best]

        running = [candidates[i] for i in order.tolist()]
        running_scores = next_scores
        if gen.early_stopping == "never" and gen.length_penalty > 0:
            best_length = budget
        else:
            best_length = length
        best_possible = running_scores[0] / (best_length ** gen.length_penalty)
        worst = torch.where(finished_done, finished_scores.min(), torch.tensor(NEG, device=device))
        improvable = improvable and bool((best_possible > worst).any())
        if not improvable or (gen.early_stopping is True and bool(finished_done.all())) or bool(ends.all()):
            break
        cache.select(next_rows)  # every beam reads the same source: the memory needs no reordering
        logits = model(torch.tensor([[b[-1]] for b in running], device=device), cache=cache, memory=memory)[:, -1]

    out = []
    for tokens, score, done in zip(finished, finished_scores.tolist(), finished_done.tolist()):
        if not done:
            continue
        ended = bool(tokens) and tokens[-1] in stops
        reason = "stop" if ended or (gen.stop and stopped(tokens)) else "length"
        out.append(Beam(tokens[:-1] if ended else tokens, score, reason))
    return out


def beam_completions(beams: list[Beam], tokenizer, gen: GenerationConfig, prompt_tokens: int) -> list:
    """`Completion`s of finished beams (best first), their text cut at the first stop string."""
    from .generate import Completion, TextStream

    out = []
    for beam in beams:
        text = TextStream(tokenizer.stream_decoder(), gen.stop)
        for tok in beam.token_ids:
            text.push(tok)
            if text.stopped:
                break
        text.flush()
        out.append(Completion(text=text.text, token_ids=list(beam.token_ids), prompt_tokens=prompt_tokens,
                              finish_reason="stop" if text.stopped else beam.finish_reason))
    return out
