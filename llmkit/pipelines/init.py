"""`llmkit init`: a random-weight model of a preset, with a small tokenizer trained on the embedded
corpus (a byte-level BPE with a chat template for decoders, BERT's uncased WordPiece with [MASK]
for encoders, T5's Unigram with its sentinels for encoder-decoders), saved in Hugging Face layout."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

import torch

from ..data.corpus import stdlib_texts
from ..infer.llm import LocalLLM
from ..models.config import preset
from ..models.transformer import Transformer
from ..tokenizer import Tokenizer

log = logging.getLogger(__name__)

INIT_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def init_model(preset_name: str, out: str | os.PathLike, vocab_size: int | None = None,
               texts: Iterable[str] | None = None, corpus_bytes: int = 2_000_000, seed: int = 0,
               tokenizer: Tokenizer | None = None, overwrite: bool = False, **overrides) -> LocalLLM:
    """Build preset `preset_name` with random weights (seeded) and a tokenizer, save both to `out`.

    Keyword `overrides` change preset fields (e.g. ``init_std=0.2``). The tokenizer is `tokenizer` if given, else a byte-level BPE of `vocab_size` (default: the
    preset's) trained on `texts` (default: the installed Python standard library). The model's
    vocabulary is sized to the tokenizer."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file: --out must be a directory (new or empty)")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty: choose another --out, or pass --overwrite")
    config = preset(preset_name, **overrides)
    if tokenizer is None:
        target = vocab_size or config.vocab_size
        if target > 65536:
            raise ValueError(f"vocab_size={target} is too large to train here: give vocab_size <= 65536")
        kind = "wordpiece" if config.is_encoder else "unigram" if config.is_seq2seq else "bpe"
        log.info("training a %d-token %s tokenizer", target, kind)
        tokenizer = Tokenizer.train(texts if texts is not None else stdlib_texts(corpus_bytes), vocab_size=target,
                                    special_tokens=INIT_SPECIAL_TOKENS if kind == "bpe" else None, kind=kind)
    config = config.replace(vocab_size=tokenizer.vocab_size, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = Transformer(config)
    LocalLLM(model, tokenizer, name=out.name).save(out)
    # read the tokenizer back as every later load will (e.g. transformers rebuilds Qwen2's
    # pre-tokenizer from config.json), so the returned LLM tokenizes exactly like the saved one
    return LocalLLM(model, Tokenizer.from_dir(out), name=out.name)
