"""Whole texts into model inputs, for the models that read a text at once (embedding,
classification): each cut to a length the way Hugging Face tokenizers truncate, and right-padded
batches with their attention mask."""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from .transformer import ContextLengthError

log = logging.getLogger(__name__)


def truncate_ids(ids: list[int], plain: list[int], limit: int) -> list[int]:
    """`ids` (a text's tokens with special tokens; `plain`: without) cut to `limit` tokens as
    Hugging Face tokenizers (and so sentence-transformers) truncate: the text's own tokens lose
    their end, the special tokens the tokenizer puts around them ([CLS] … [SEP], a bos) stay."""
    extra = len(ids) - len(plain)
    start = next((p for p in range(max(extra, 0) + 1) if ids[p:p + len(plain)] == plain), None)
    if start is None or extra >= limit:  # specials we cannot place, or nothing else fits: a plain cut
        return ids[:limit]
    return ids[:start] + plain[:limit - extra] + ids[start + len(plain):]


def cut_keeping_end(ids: list[int], limit: int) -> list[int]:
    """At most `limit` tokens: the first ones and the sequence's own last (T5's </s>), as transformers
    truncates an encoder-decoder's source."""
    return list(ids) if len(ids) <= limit else list(ids[:limit - 1]) + list(ids[-1:])


def fit_texts(tokenizer, texts: Sequence[str], limit: int, truncate: bool = True, reader: str = "the model",
              verb: str = "reads") -> list[list[int]]:
    """Token ids of `texts` (special tokens added), each at most `limit` long: longer ones are cut
    by `truncate_ids` with one warning saying how many, or, with ``truncate=False``, refused with a
    `ContextLengthError` naming the first. `reader` and `verb` word the messages ("all-minilm-l6-v2
    embeds")."""
    inputs = [tokenizer.encode(t) for t in texts]
    long = [i for i, ids in enumerate(inputs) if len(ids) > limit]
    if long and not truncate:
        raise ContextLengthError(
            f"{len(long)} of {len(texts)} texts are longer than the {limit} tokens {reader} {verb} "
            f"(texts[{long[0]}] has {len(inputs[long[0]])}): shorten them, or turn truncation on "
            f"(each is then cut at {limit} tokens)")
    if long:
        log.warning("%d of %d texts were longer than the %d tokens %s %s and were cut to that (the longest had %d)",
                    len(long), len(texts), limit, reader, verb, max(len(inputs[i]) for i in long))
        for i in long:
            inputs[i] = truncate_ids(inputs[i], tokenizer.encode(texts[i], add_special_tokens=False), limit)
    return inputs


def pad_right(rows: Sequence[Sequence[int]], pad_id: int,
              device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (len(rows), longest row): each row followed by `pad_id`,
    its mask 1 on its own tokens. Right padding keeps every row's positions from 0, as BERT's
    absolute positions and a decoder's last-token reading expect."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        mask[r, :len(row)] = 1
    return ids.to(device), mask.to(device)
