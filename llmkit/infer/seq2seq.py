"""Scoring with an encoder-decoder: log p(target | source), the decoder's likelihood of each target
token with the source encoded once per batch. Multiple choice and generation tasks evaluate T5
this way (as lm-eval's seq2seq backend does); perplexity of a text on its own has no meaning here."""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from ..models.logprobs import token_logprobs
from ..models.texts import cut_keeping_end
from .generate import decoder_start, encode_sources


log = logging.getLogger(__name__)


class Seq2SeqScoringError(ValueError):
    """A scoring request an encoder-decoder cannot answer (perplexity of a text on its own)."""


PERPLEXITY_REFUSAL = (
    "{name} is an encoder-decoder: it scores a target given a source, not a text on its own, so it has no "
    "perplexity (loglikelihood_rolling); evaluate it with generation tasks or multiple choice")


@torch.inference_mode()
def seq2seq_loglikelihood(model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_token_id: int,
                          batch_size: int = 16) -> list[tuple[float, bool, int]]:
    """(sum log p, whether every target token is the argmax, target tokens) of each (source ids,
    target ids) pair; the decoder starts from its start token and reads the target teacher-forced."""
    window = model.config.context_window
    for i, (src, tgt) in enumerate(pairs):
        if not src or not tgt:
            raise ValueError(f"pair {i} has an empty {'source' if not src else 'target'}: give at least one token")
        if len(tgt) > window:
            raise ValueError(f"pair {i}: a target of {len(tgt)} tokens exceeds the decoder's {window} positions")
    start = decoder_start(model, pad_token_id)
    long = sum(len(s) > window for s, _ in pairs)
    if long:
        log.warning("%d source(s) longer than the encoder's %d positions: keeping their first tokens", long, window)
    out: list[tuple[float, bool, int]] = []
    for b in range(0, len(pairs), batch_size):
        chunk = pairs[b:b + batch_size]
        # as generation truncates: the first tokens, then the source's own last (end) token
        memory = encode_sources(model, [cut_keeping_end(s, window) for s, _ in chunk], pad_token_id)
        width = max(len(t) for _, t in chunk)
        ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        for r, (_, tgt) in enumerate(chunk):  # right padding: causal attention never looks at it
            ids[r, :len(tgt)] = torch.tensor([start, *list(tgt)[:-1]])
        logits = model(ids.to(model.device), memory=memory)
        for r, (_, tgt) in enumerate(chunk):
            target = torch.tensor(list(tgt), device=model.device)
            rows = logits[r, :len(tgt)]
            out.append((float(token_logprobs(rows, target).sum()), bool((rows.argmax(-1) == target).all()), len(tgt)))
    return out
