"""Training tokenizers with the `tokenizers` library: byte-level BPE (GPT-2 style, for decoders),
BERT-style WordPiece (for masked-LM encoders) and T5-style Unigram (for encoder-decoders)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as BackendTokenizer

from llmkit.tokenizer import unigram, wordpiece

logger = logging.getLogger(__name__)

ENDOFTEXT = "<|endoftext|>"
DEFAULT_SPECIAL_TOKENS = [ENDOFTEXT, "<|im_start|>", "<|im_end|>"]


def _as_files(texts_or_files: object) -> list[str] | None:
    """The file paths in `texts_or_files`, or None when it is an iterable of texts.

    A `Path` (or a list of them) is always a file; a list of strings counts as files only when
    every string names an existing file, so a corpus of short texts is never mistaken for paths.
    """
    if isinstance(texts_or_files, (str, os.PathLike)):
        path = Path(texts_or_files)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"training file {str(path)!r} does not exist; pass a list of texts "
                                    f"(e.g. [text]) to train on a string")
        return [str(path)]
    if isinstance(texts_or_files, (list, tuple)) and texts_or_files:
        if all(isinstance(x, os.PathLike) for x in texts_or_files) or all(
                isinstance(x, (str, os.PathLike)) and os.path.isfile(x) for x in texts_or_files):
            missing = [str(x) for x in texts_or_files if not os.path.isfile(x)]
            if missing:
                raise FileNotFoundError(f"training files not found: {missing[:5]}")
            return [str(x) for x in texts_or_files]
    return None


def train_byte_level_bpe(texts_or_files: Iterable[str] | Iterable[str | os.PathLike] | str | os.PathLike,
                         vocab_size: int = 4096, special_tokens: list[str] | None = None,
                         min_frequency: int = 2) -> BackendTokenizer:
    """Train a GPT-2 style byte-level BPE.

    The initial alphabet is all 256 bytes, so every Unicode string encodes and decodes back
    exactly. Special tokens get the first ids, in the order given.
    """
    specials = list(DEFAULT_SPECIAL_TOKENS if special_tokens is None else special_tokens)
    if len(set(specials)) != len(specials):
        raise ValueError(f"special_tokens has duplicates: {specials}")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(specials):
        raise ValueError(f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least "
                         f"{len(alphabet)} byte tokens + {len(specials)} special tokens = "
                         f"{len(alphabet) + len(specials)}")
    tok = BackendTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                  initial_alphabet=alphabet, show_progress=False)
    _fit(tok, trainer, texts_or_files, f"byte-level BPE (vocab {vocab_size})")
    return tok


def _fit(tok: BackendTokenizer, trainer, texts_or_files, what: str) -> None:
    """Train `tok` with `trainer` on file paths or an iterable of texts."""
    files = _as_files(texts_or_files)
    logger.info("training %s on %s", what, f"{len(files)} file(s)" if files is not None else "an iterable of texts")
    if files is not None:
        tok.train(files, trainer)
    else:
        tok.train_from_iterator(_checked_texts(texts_or_files), trainer)


def train_wordpiece(texts_or_files: Iterable[str] | Iterable[str | os.PathLike] | str | os.PathLike,
                    vocab_size: int = 4096, special_tokens: list[str] | None = None,
                    min_frequency: int = 2) -> tuple[BackendTokenizer, list[str]]:
    """Train a BERT-style uncased WordPiece; returns (backend, extra special tokens).

    [PAD] [UNK] [CLS] [SEP] [MASK] get ids 0-4; `special_tokens` may list them (in any order: the
    ids stay 0-4) and more, which follow. The pipeline is `wordpiece.build_bert`'s, the one
    transformers' BertTokenizer rebuilds from the saved files, so both encode alike.
    """
    given = list(special_tokens or [])
    if len(set(given)) != len(given):
        raise ValueError(f"special_tokens has duplicates: {given}")
    bert = list(wordpiece.BERT_SPECIAL_TOKENS.values())
    extra = [t for t in given if t not in bert]
    specials = bert + extra
    if vocab_size <= len(specials):
        raise ValueError(f"vocab_size={vocab_size} is too small: it must exceed the {len(specials)} special tokens")
    # Train with the same normalizer and pre-tokenizer that will encode, so the pieces fit the text.
    unk = wordpiece.BERT_SPECIAL_TOKENS["unk_token"]
    with _replayable(texts_or_files) as data:
        # The trainer numbers its "##c" pieces in hash order, which differs between processes and breaks ties
        # among merges differently: one pass finds them, a second pass gets them in sorted order up front.
        first = wordpiece.build_bert({}, unk_token=unk)
        _fit(first, trainers.WordPieceTrainer(vocab_size=len(specials) + 1, special_tokens=specials,
                                              continuing_subword_prefix="##", show_progress=False), data, "WordPiece alphabet")
        suffixes = sorted(t for t in first.get_vocab() if t.startswith("##") and len(t) == 3)
        tok = wordpiece.build_bert({}, unk_token=unk)
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=specials + suffixes, continuing_subword_prefix="##",
                                            show_progress=False)
        _fit(tok, trainer, data, f"WordPiece (vocab {vocab_size})")
    # Rebuild from the learnt vocabulary alone, then add the special tokens and the [CLS]/[SEP]
    # template, in the order transformers does when it loads the saved files.
    backend = wordpiece.build_bert(tok.get_vocab(with_added_tokens=False), unk_token=unk)
    backend.add_tokens([AddedToken(t, special=True) for t in specials])
    backend.post_processor = wordpiece.bert_post_processor(backend, wordpiece.BERT_SPECIAL_TOKENS["cls_token"],
                                                           wordpiece.BERT_SPECIAL_TOKENS["sep_token"])
    return backend, extra


def train_t5_unigram(texts_or_files: Iterable[str] | Iterable[str | os.PathLike] | str | os.PathLike,
                     vocab_size: int = 4096, special_tokens: list[str] | None = None,
                     extra_ids: int = unigram.DEFAULT_EXTRA_IDS) -> tuple[BackendTokenizer, list[str]]:
    """Train a T5-style SentencePiece Unigram; returns (backend, extra special tokens: the
    `extra_ids` sentinels, then the other `special_tokens`).

    The vocabulary is laid out as T5's: <pad> </s> <unk> as ids 0-2, the other `special_tokens`
    next, the learnt pieces, then `<extra_id_{extra_ids-1}>` ... `<extra_id_0>`, so `<extra_id_0>`
    is the last id. `vocab_size` counts all of them (the trainer may learn fewer pieces on a small
    corpus). The pipeline is `unigram.build_t5`'s, the one transformers' T5Tokenizer rebuilds from
    the saved files: no normalizer (we have no SentencePiece charsmap to ship), whitespace runs
    collapsed into "▁", "</s>" appended.
    """
    given = list(special_tokens or [])
    if len(set(given)) != len(given):
        raise ValueError(f"special_tokens has duplicates: {given}")
    t5 = list(unigram.T5_SPECIAL_TOKENS.values())
    sentinels = unigram.sentinel_tokens(extra_ids)
    extra = [t for t in given if t not in t5 and t not in sentinels]
    specials = t5 + extra
    if vocab_size <= len(specials) + extra_ids:
        raise ValueError(f"vocab_size={vocab_size} is too small: it must exceed the {len(specials)} special tokens "
                         f"+ {extra_ids} sentinels = {len(specials) + extra_ids}")
    # Train with the pre-tokenizer that will encode, so the pieces fit the words T5 sees.
    tok = unigram.build_t5([(t, 0.0) for t in specials])
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size - extra_ids, special_tokens=specials,
                                      unk_token=unigram.T5_SPECIAL_TOKENS["unk_token"], show_progress=False)
    _fit(tok, trainer, texts_or_files, f"T5 Unigram (vocab {vocab_size})")
    # Rebuild from the learnt pieces plus the sentinels (score 0, last, reversed, as in T5's
    # spiece vocabulary), then add the special tokens and "</s>" template as transformers does.
    pieces = [(p, s) for p, s in json.loads(tok.model.__getstate__())["vocab"]]
    if [p for p, _ in pieces[:len(specials)]] != specials:  # T5Tokenizer hard-codes <unk> as id 2
        raise RuntimeError(f"the Unigram trainer did not put {specials} first: {pieces[:len(specials)]}")
    # A corpus that holds a special token or a sentinel as text may have learnt it as a piece too:
    # keep one entry per string, or the vocabulary would give it two ids.
    reserved = set(sentinels)
    learnt = [(p, s) for i, (p, s) in enumerate(pieces)
              if i < len(specials) or (p not in reserved and p not in specials)]
    backend = unigram.build_t5(learnt + [(t, 0.0) for t in reversed(sentinels)])
    backend.add_tokens([AddedToken(t, special=True) for t in specials + sentinels])
    backend.post_processor = unigram.t5_post_processor(backend.token_to_id(unigram.T5_SPECIAL_TOKENS["eos_token"]))
    return backend, sentinels + extra


@contextlib.contextmanager
def _replayable(texts_or_files):
    """`texts_or_files` in a form that can be trained on twice: files as they are, texts spilled to a
    temporary file (a generator could be read only once)."""
    if _as_files(texts_or_files) is not None or isinstance(texts_or_files, (list, tuple)):
        yield texts_or_files
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "texts.txt"
        with open(path, "w", encoding="utf-8") as f:
            for t in _checked_texts(texts_or_files):
                f.write(t + "\n")  # WordPiece splits on whitespace first: a line break joins no words
        yield [path]


def _checked_texts(texts: Iterable[object]) -> Iterable[str]:
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"training texts must be strings; item {i} is {type(t).__name__}")
        yield t
