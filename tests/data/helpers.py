"""Helpers for the data room's tests: synthetic corpora with known near- and exact duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmkit.data import CleanConfig, DataConfig, SourceConfig

LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def words(n: int, seed: int) -> list[str]:
    """`n` pseudo-words, distinct for different seeds with high probability."""
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(LETTERS, size=rng.integers(3, 9))) for _ in range(n)]


def make_docs(n: int, length: int = 120, seed: int = 0) -> list[str]:
    """`n` distinct documents of `length` words from a 3000-word vocabulary, a few lines each
    (pairwise Jaccard of their 5-word shingles is ~0)."""
    vocab = words(3000, seed + 10_000)
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        ws = list(rng.choice(vocab, size=length))
        lines = [" ".join(ws[i:i + 12]) for i in range(0, length, 12)]
        docs.append("\n".join(lines) + "\n")
    return docs


def one_word_edit(doc: str, seed: int = 0) -> str:
    """`doc` with one word replaced (a near-duplicate)."""
    ws = doc.split(" ")
    i = np.random.default_rng(seed).integers(1, len(ws) - 1)
    ws[i] = "zzzedited"
    return " ".join(ws)


def write_docs(folder: Path, docs: list[str], suffix: str = ".txt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(docs):
        (folder / f"doc{i:04d}{suffix}").write_text(d, encoding="utf-8")
    return folder


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return path


NO_CLEAN = CleanConfig(unicode_nfc=False, strip_html=False, pii=False, whitespace=False, boilerplate=False,
                       quality=False)


def config(*paths: str | Path, **kw) -> DataConfig:
    """A quick DataConfig: small vocab, short sequences, no validation unless asked."""
    kw.setdefault("vocab_size", 300)
    kw.setdefault("seq_len", 16)
    kw.setdefault("val_fraction", 0.0)
    sources = kw.pop("sources", None) or [SourceConfig(path=str(p)) for p in paths]
    return DataConfig(sources=sources, **kw)


def stream(ds) -> np.ndarray:
    """The token stream a PackedDataset covers, rebuilt from its overlapping sequences."""
    if len(ds) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([ds[0]] + [ds[i][1:] for i in range(1, len(ds))])


def decoded_docs(ds, tokenizer) -> list[str]:
    """The documents of a split (seq_len=1 keeps every token), split at eos."""
    ids = stream(ds).tolist()
    docs, cur = [], []
    for t in ids:
        if t == ds.eos_id:
            docs.append(tokenizer.decode(cur))
            cur = []
        else:
            cur.append(t)
    assert not cur, "a seq_len=1 stream ends with eos"
    return docs
