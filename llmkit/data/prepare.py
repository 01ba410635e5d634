"""`prepare_data`: sources -> clean -> dedup -> split -> (train a tokenizer) -> tokenize -> pack.

The output directory is built in a hidden sibling folder and renamed into place at the end, so
a crash never leaves a half-written one (and a previous one stays as it was until then).

    out/
      index.json        dtype, seq_len, vocab_size, eos_id, tokenizer, config_hash, splits
      stats.json        per source: documents, characters, tokens, removed by each step; mixture
      tokenizer/        Hugging Face tokenizer files
      train_00000.bin   raw uint16/uint32 token ids (numpy memmap), whole sequences
      val_00000.bin
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from llmkit.data import clean as cleaning
from llmkit.data import mixture
from llmkit.data.config import DataConfig, DataError, config_hash
from llmkit.data.clean import StepStats
from llmkit.data.corpus import SourceRead, check_sources, read_source
from llmkit.data.dataset import INDEX_FILE, STATS_FILE, PackedDataset, read_index
from llmkit.data.dedup import exact_duplicates, near_duplicates
from llmkit.data.pack import pack, shard_dtype
from llmkit.data.stats import clean_fix, source_stats
from llmkit.utils import write_json_atomic

if TYPE_CHECKING:
    from llmkit.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"
MIN_TRAINED_VOCAB = 256 + 3  # byte alphabet + <|endoftext|>, <|im_start|>, <|im_end|>


@dataclass
class PreparedData:
    """A prepared data directory: its index, its stats, and datasets of its splits."""

    path: Path
    index: dict[str, Any]
    stats: dict[str, Any]

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / self.index["tokenizer"]

    @classmethod
    def load(cls, path: str | os.PathLike) -> PreparedData:
        """A directory written by `prepare_data` (e.g. for `format_stats(PreparedData.load(d).stats)`)."""
        path = Path(path)
        index = read_index(path)
        stats_file = path / STATS_FILE
        stats = json.loads(stats_file.read_text(encoding="utf-8")) if stats_file.is_file() else {}
        return cls(path, index, stats)

    def dataset(self, split: str = "train") -> PackedDataset:
        return PackedDataset(self.path, split)

    @property
    def proportions(self) -> dict[str, float]:
        """Mixture share of each source (by name)."""
        return {s["name"]: s["mixture"]["proportion"] for s in self.stats["sources"]}


def prepare_data(config: DataConfig, out_dir: str | os.PathLike, tokenizer: "Tokenizer | None" = None) -> PreparedData:
    """Read, clean, dedup, split, tokenize and pack the sources of `config` into `out_dir`.

    With no `tokenizer`, a byte-level BPE of `config.vocab_size` tokens is trained on the train
    split. Either way the tokenizer is saved in ``out_dir/tokenizer/``. An existing prepared
    directory at `out_dir` is replaced (only once the new one is complete); any other non-empty
    directory there is refused. Raises `DataError` with the fix for bad input.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    check_sources(config.sources)
    if tokenizer is not None:
        shard_dtype(tokenizer.vocab_size)
        if tokenizer.eos_token_id is None and getattr(tokenizer, "sep_token_id", None) is None:
            raise DataError("the tokenizer has no eos token (nor a [SEP]), which separates documents in the packed "
                            "stream; give one with an eos_token (or no tokenizer, to train one)")
    else:
        shard_dtype(config.vocab_size)
        if config.tokenizer_kind == "bpe" and config.vocab_size < MIN_TRAINED_VOCAB:
            raise DataError(f"vocab_size={config.vocab_size} is too small for a byte-level BPE: use at least "
                            f"{MIN_TRAINED_VOCAB} (256 bytes + 3 special tokens), e.g. 8192")
    with _staging(out_dir) as tmp:
        index, stats = _prepare(config, tmp, tokenizer)
    return PreparedData(out_dir, index, stats)


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"out_dir {out_dir} is a file; give a directory path for the prepared data")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / INDEX_FILE).is_file():
        raise DataError(f"out_dir {out_dir} is a non-empty directory that is not prepared data (no {INDEX_FILE}); "
                        f"choose a new path or empty it, so that nothing of yours is replaced")


@contextlib.contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """A hidden sibling folder that becomes `out_dir` on success and is removed on failure."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out_dir.parent / f".{out_dir.name}.old-{tag}" if out_dir.exists() else None
    if old is not None:
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        if old is not None:
            os.rename(old, out_dir)  # put the previous output back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="doc", disable=None, leave=False)


def _prepare(config: DataConfig, out: Path, tokenizer: "Tokenizer | None") -> tuple[dict, dict]:
    timer = _Timer()
    names = _names(config)
    reads = _read(config, names)
    timer.lap("read")
    texts, clean_stats = _clean(config, reads)
    timer.lap("clean")
    texts, removed = _dedup(config, texts)
    timer.lap("dedup")
    # split by document, then the mixture of the train split (see llmkit.data.mixture)
    splits = [mixture.split_indices(len(docs), config.val_fraction, config.seed, s) for s, docs in enumerate(texts)]
    train_chars = [[len(texts[s][i]) for i in tr] for s, (tr, _) in enumerate(splits)]
    proportions = mixture.mixture_proportions([src.weight for src in config.sources],
                                              [sum(c) for c in train_chars], config.temperature)
    logger.info("mixture (T=%g): %s", config.temperature, ", ".join(f"{n} {p:.3f}" for n, p in zip(names, proportions)))
    streams = {"train": [(s, splits[s][0][j]) for s, j in mixture.mix(train_chars, proportions, config.seed)],
               "val": mixture.val_order([va for _, va in splits], config.seed)}
    timer.lap("split_mix")
    tok_dir = out / TOKENIZER_DIR
    trained = tokenizer is None
    if tokenizer is None:
        tokenizer = _train_tokenizer(config, [texts[s][i] for s, (tr, _) in enumerate(splits) for i in tr])
    tokenizer.save(tok_dir)
    dtype = shard_dtype(tokenizer.vocab_size)
    timer.lap("tokenizer")
    index_splits, tokens = _pack_splits(config, out, texts, streams, tok_dir, dtype)
    timer.lap("tokenize_pack")

    chash = config_hash(config)
    index = {"format": "llmkit.packed", "version": 1, "dtype": dtype.name, "seq_len": config.seq_len,
             "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_token_id, "tokenizer": TOKENIZER_DIR,
             "config_hash": chash, "splits": index_splits}
    sources = [source_stats(name, src, r, clean_stats[i], {k: v[i] for k, v in removed.items()},
                            texts[i], splits[i], proportions[i], streams["train"], i, tokens)
               for i, (name, src, r) in enumerate(zip(names, config.sources, reads))]
    stats = {"config_hash": chash, "config": dataclasses.asdict(config), "sources": sources,
             "non_utf8_skipped": sum(len(r.non_utf8) for r in reads),
             "mixture": {"temperature": config.temperature, "proportions": dict(zip(names, proportions))},
             "splits": {k: {"documents": v["documents"], "tokens": v["num_tokens"], "sequences": v["num_sequences"],
                            "dropped_tokens": v["dropped_tokens"]} for k, v in index_splits.items()},
             "tokenizer": {"trained": trained, "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_token_id},
             "seconds": round(sum(timer.laps.values()), 3), "stage_seconds": timer.laps}
    write_json_atomic(out / STATS_FILE, stats)
    write_json_atomic(out / INDEX_FILE, index)
    logger.info("prepared %d train / %d val sequences of %d tokens in %.1fs", index_splits["train"]["num_sequences"],
                index_splits["val"]["num_sequences"], config.seq_len, stats["seconds"])
    return index, stats


def _read(config: DataConfig, names: list[str]) -> list[SourceRead]:
    reads = [read_source(src, i, config.max_docs) for i, src in enumerate(config.sources)]
    if not any(r.texts for r in reads):
        detail = "; ".join(f"{n}: {r.files} file(s), {len(r.non_utf8)} not UTF-8, {r.empty} blank, "
                           f"{r.bad_records} bad JSONL record(s)" for n, r in zip(names, reads))
        raise DataError(f"the corpus is empty after reading: no source gave a document ({detail}); add UTF-8 "
                        f"text files, check kind/text_field, or raise max_bytes")
    return reads


def _clean(config: DataConfig, reads: list[SourceRead]) -> tuple[list[list[str]], list[dict[str, StepStats]]]:
    texts, stats = [], []
    for r in reads:
        kept, st = cleaning.clean_texts(r.texts, config.clean)
        texts.append(kept)
        stats.append(st)
    for step in cleaning.STEPS:  # the first step after which no source has a document left
        if step in stats[0] and sum(st[step].docs_after for st in stats) == 0:
            raise DataError(f"the corpus is empty after cleaning: step {step!r} removed every remaining document "
                            f"(of {sum(len(r.texts) for r in reads)} read); {clean_fix(step)}")
    return texts, stats


def _dedup(config: DataConfig, texts: list[list[str]]) -> tuple[list[list[str]], dict[str, list[list[int]]]]:
    """Exact then near dedup over all sources in order; returns the kept texts per source and,
    per step and source, [documents, characters] removed."""
    flat = [(s, t) for s, docs in enumerate(texts) for t in docs]
    removed = {step: [[0, 0] for _ in texts] for step in ("exact_dedup", "near_dedup")}
    for step, enabled, find in (("exact_dedup", config.dedup.exact, exact_duplicates),
                                ("near_dedup", config.dedup.near, lambda ts: near_duplicates(ts, config.dedup))):
        if not enabled:
            continue
        dup = find([t for _, t in flat])
        for (s, t), d in zip(flat, dup):
            if d:
                removed[step][s][0] += 1
                removed[step][s][1] += len(t)
        flat = [x for x, d in zip(flat, dup) if not d]
    kept: list[list[str]] = [[] for _ in texts]
    for s, t in flat:
        kept[s].append(t)
    return kept, removed


def _train_tokenizer(config: DataConfig, texts: list[str]) -> "Tokenizer":
    from llmkit.tokenizer import Tokenizer

    logger.info("training a %s tokenizer (vocab %d) on %d train documents", config.tokenizer_kind,
                config.vocab_size, len(texts))
    return Tokenizer.train(texts, vocab_size=config.vocab_size, kind=config.tokenizer_kind)


def _pack_splits(config: DataConfig, out: Path, texts: list[list[str]], streams: dict[str, list[tuple[int, int]]],
                 tok_dir: Path, dtype: np.dtype) -> tuple[dict, dict[str, list[int]]]:
    """Tokenize and pack each split; returns the index entries and the tokens per source."""
    index_splits, tokens = {}, {}
    for split, stream in streams.items():
        docs = [texts[s][i] for s, i in stream]
        with _progress(len(docs), f"tokenize {split}") as bar:
            entry, lengths = pack(docs, out, split, tok_dir, dtype, config.seq_len, config.shard_tokens,
                                  config.workers, bar)
        entry["documents"] = len(docs)
        index_splits[split] = entry
        sources = np.asarray([s for s, _ in stream], dtype=np.int64)
        tokens[split] = np.bincount(sources, weights=lengths, minlength=len(texts)).astype(np.int64).tolist()
    if index_splits["train"]["num_sequences"] == 0:
        n = index_splits["train"]["num_tokens"]
        raise DataError(f"the train split has only {n} tokens, fewer than seq_len + 1 = {config.seq_len + 1}, so "
                        f"no training sequence fits; lower seq_len or add data")
    if config.val_fraction > 0 and index_splits["val"]["num_sequences"] == 0:
        logger.warning("the validation split has no full sequence of %d tokens; raise val_fraction or lower seq_len",
                       config.seq_len)
    return index_splits, tokens


class _Timer:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = round(now - self._t, 3)
        self._t = now
        logger.info("data: %s took %.2fs", stage, self.laps[stage])


def _names(config: DataConfig) -> list[str]:
    """Unique labels of the sources (a repeated label gets #2, #3, ...)."""
    names: list[str] = []
    for src in config.sources:
        name, k = src.label, 2
        while name in names:
            name, k = f"{src.label}#{k}", k + 1
        names.append(name)
    return names
