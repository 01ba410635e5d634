"""Tokenizing in worker processes and packing the token stream into shard files.

Packing: each split is one long stream (every document's tokens followed by eos). Sequence i
covers stream tokens ``[i*L, i*L + L + 1)`` — L inputs and their L next-token targets, so
consecutive sequences overlap by one token and every token after the first is a target exactly
once; the tail that does not fill a sequence is dropped. Shards hold whole sequences: shard k
stores stream tokens ``[k*S*L, (k+1)*S*L + 1)`` for S sequences per shard (its last token is
repeated as the next shard's first), so every sequence is one contiguous slice of one file.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from llmkit.data.config import MAX_VOCAB, DataError

logger = logging.getLogger(__name__)

CHUNK_CHARS = 1 << 18  # characters of text per task sent to a worker (small enough to balance the load)
CHUNK_DOCS = 256

_worker: dict = {}  # the tokenizer of this worker process


def shard_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else uint32; larger is an error."""
    if vocab_size > MAX_VOCAB:
        raise DataError(f"vocabulary of {vocab_size} tokens is larger than the widest shard dtype (uint32) allows "
                        f"({MAX_VOCAB}); use a tokenizer with at most {MAX_VOCAB} tokens")
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def load_for_packing(tokenizer_dir: str | os.PathLike):
    """The saved tokenizer, set to encode special-token strings in documents as plain text, so
    that only the eos we append separates documents."""
    from llmkit.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(tokenizer_dir)
    tok.backend.encode_special_tokens = True
    return tok


def _init_worker(tokenizer_dir: str, dtype: str) -> None:
    # Errors are kept for the first task to raise: an initializer that raises only breaks the pool.
    try:
        _worker["tok"] = load_for_packing(tokenizer_dir)
        _worker["dtype"] = np.dtype(dtype)
    except Exception as e:  # noqa: BLE001 - re-raised in _encode_in_worker
        _worker["error"] = e


def _encode_in_worker(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    if "error" in _worker:
        raise _worker["error"]
    return encode_chunk(_worker["tok"], _worker["dtype"], texts)


def encode_chunk(tok, dtype: np.dtype, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens of every text each followed by eos (or [SEP]), number of tokens per text including it)."""
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id  # BERT separates with [SEP]
    if eos is None:
        raise ValueError("the tokenizer has neither an eos nor a [SEP] token to separate packed documents")
    backend = tok.backend
    if hasattr(backend, "encode_batch_fast"):  # tokenizers >= 0.20: skips computing offsets, ~2-3x faster
        ids = [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    else:
        ids = tok.encode_batch(texts, add_special_tokens=False)
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    out = np.empty(int(lengths.sum()), dtype=dtype)
    pos = 0
    for x in ids:
        out[pos:pos + len(x)] = x
        out[pos + len(x)] = eos
        pos += len(x) + 1
    return out, lengths


def chunks(texts: list[str]) -> Iterator[list[str]]:
    """Consecutive runs of documents of about CHUNK_CHARS characters (at most CHUNK_DOCS)."""
    start, size = 0, 0
    for i, t in enumerate(texts):
        size += len(t)
        if size >= CHUNK_CHARS or i + 1 - start >= CHUNK_DOCS:
            yield texts[start:i + 1]
            start, size = i + 1, 0
    if start < len(texts):
        yield texts[start:]


def tokenize(texts: list[str], tokenizer_dir: str | os.PathLike, dtype: np.dtype,
             workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Encoded chunks of `texts`, in order; `workers` > 1 uses that many processes (forked,
    each loading the tokenizer from `tokenizer_dir` in its initializer)."""
    if workers <= 1:
        tok = load_for_packing(tokenizer_dir)
        for chunk in chunks(texts):
            yield encode_chunk(tok, dtype, chunk)
        return
    with _worker_pool(workers, str(tokenizer_dir), dtype.str) as pool:
        yield from pool.map(_encode_in_worker, chunks(texts))


@contextlib.contextmanager
def _worker_pool(workers: int, tokenizer_dir: str, dtype: str) -> Iterator[ProcessPoolExecutor]:
    """`workers` processes that each load the tokenizer once.

    fork where the platform has it: spawn would re-run the caller's main module in every worker
    (breaking scripts without an ``if __name__ == "__main__"`` guard and stdin scripts). The
    workers never touch torch; TOKENIZERS_PARALLELISM=false, set while they start, gives them
    single-threaded tokenizers (one process per core already) without the fork warning.
    """
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                   initializer=_init_worker, initargs=(tokenizer_dir, dtype))
        for _ in pool.map(abs, range(workers)):  # start the workers now, under this environment
            pass
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


class ShardWriter:
    """Writes one split's stream into ``{prefix}_{k:05d}.bin`` files of whole sequences."""

    def __init__(self, folder: Path, prefix: str, dtype: np.dtype, seq_len: int, shard_tokens: int) -> None:
        self.folder, self.prefix, self.dtype, self.seq_len = folder, prefix, dtype, seq_len
        self.per_shard = max(1, shard_tokens // seq_len) * seq_len  # stream tokens per shard, overlap excluded
        self.stream_tokens = 0
        self.shards: list[dict] = []
        self._file = None
        self._count = 0
        self._open()

    def _open(self, first: np.ndarray | None = None) -> None:
        name = f"{self.prefix}_{len(self.shards):05d}.bin"
        self.shards.append({"file": name, "num_tokens": 0, "num_sequences": 0})
        self._file = open(self.folder / name, "wb")
        self._count = 0
        if first is not None:
            self._file.write(first.tobytes())
            self._count = 1

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens, dtype=self.dtype)
        self.stream_tokens += len(tokens)
        while len(tokens):
            room = self.per_shard + 1 - self._count
            part, tokens = tokens[:room], tokens[room:]
            self._file.write(part.tobytes())
            self._count += len(part)
            if self._count == self.per_shard + 1:
                self._finish_shard(self.per_shard // self.seq_len)
                self._open(first=part[-1:])

    def _finish_shard(self, sequences: int) -> None:
        self._file.close()
        self.shards[-1].update(num_tokens=self._count, num_sequences=sequences)

    def abort(self) -> None:
        """Close the open file after a failure (the staging folder is removed by the caller)."""
        self._file.close()

    def close(self) -> dict:
        """Trim the last shard to whole sequences (dropping it if it holds none); returns the
        split's index entry."""
        sequences = (self._count - 1) // self.seq_len if self._count else 0
        keep = sequences * self.seq_len + 1 if sequences else 0
        self._file.truncate(keep * self.dtype.itemsize)
        self._count = keep
        self._finish_shard(sequences)
        if not sequences:
            os.unlink(self.folder / self.shards.pop()["file"])
        num_sequences = sum(s["num_sequences"] for s in self.shards)
        return {"num_tokens": self.stream_tokens, "num_sequences": num_sequences,
                "dropped_tokens": self.stream_tokens - (num_sequences * self.seq_len + 1 if num_sequences else 0),
                "shards": self.shards}


def pack(texts: list[str], folder: Path, prefix: str, tokenizer_dir: Path, dtype: np.dtype, seq_len: int,
         shard_tokens: int, workers: int, progress: Iterable | None = None) -> tuple[dict, np.ndarray]:
    """Tokenize `texts` and write the split's shards; returns (index entry, tokens per document)."""
    writer = ShardWriter(folder, prefix, dtype, seq_len, shard_tokens)
    lengths = []
    try:
        for tokens, lens in tokenize(texts, tokenizer_dir, dtype, workers):
            writer.write(tokens)
            lengths.append(lens)
            if progress is not None:
                progress.update(len(lens))
    except BaseException:
        writer.abort()
        raise
    return writer.close(), (np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64))
