"""The data recipe: `DataConfig` and its sections, as plain dataclasses that
`llmkit.recipe.from_dict(DataConfig, yaml_dict)` fills in and checks.

    data:
      sources:
        - {path: stdlib, max_bytes: 2000000}
        - {path: "corpus/**/*.jsonl", kind: jsonl, text_field: body, weight: 2.0}
      temperature: 1.0
      clean: {pii: true, min_chars: 50}
      dedup: {near: true, threshold: 0.8}
      seq_len: 256
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

STDLIB = "stdlib"
KINDS = ("auto", "text", "jsonl")
MAX_VOCAB = 2**32  # the widest shard dtype is uint32


class DataError(ValueError):
    """Bad data input (a missing path, an empty corpus, an impossible setting); the message says
    what is wrong and how to fix it."""


@dataclass
class SourceConfig:
    """One input of the mixture.

    `path` is a file, a folder (read recursively, hidden files skipped), a glob pattern
    (``**`` allowed), or ``"stdlib"``: the installed Python standard library's ``.py`` sources
    plus the ``pydoc_data`` topics text. `kind` ``auto`` reads ``*.jsonl`` / ``*.ndjson`` files as
    JSON lines (one document per record, its `text_field`) and anything else as text (one
    document per file). `max_bytes` caps the UTF-8 bytes read from this source (whole documents,
    in order; reading stops at the first document that would cross the cap).
    """

    path: str = STDLIB
    kind: str = "auto"
    text_field: str = "text"
    weight: float = 1.0
    max_bytes: int | None = None
    name: str | None = None  # label in the stats; defaults to the path

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"kind={self.kind!r} is not one of {', '.join(KINDS)}")
        if not self.weight > 0:
            raise DataError(f"weight={self.weight!r} must be > 0 (leave the source out to drop it)")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise DataError(f"max_bytes={self.max_bytes!r} must be >= 1 or null (no cap)")

    @property
    def label(self) -> str:
        return self.name or self.path


@dataclass
class CleanConfig:
    """Cleaning steps, applied in this order, each switchable: Unicode NFC, HTML stripping,
    PII scrubbing, whitespace, boilerplate, quality filter."""

    unicode_nfc: bool = True
    strip_html: bool = True  # only documents that look like HTML (see clean.looks_like_html)
    pii: bool = True  # e-mails, phone numbers, IPv4/IPv6 -> <EMAIL>, <PHONE>, <IP>
    whitespace: bool = True  # line endings, trailing spaces, runs of blank lines (indentation kept)
    boilerplate: bool = True  # license headers; lines repeated across many documents of a source
    boilerplate_doc_fraction: float = 0.3  # a line in more than this fraction of a source's documents...
    boilerplate_min_docs: int = 5  # ...and in at least this many is boilerplate
    quality: bool = True
    min_chars: int = 32
    max_symbol_ratio: float = 0.6  # characters neither alphanumeric nor whitespace
    max_repetition_ratio: float = 0.6  # max(duplicate-line char fraction, top word-3-gram coverage)

    def __post_init__(self) -> None:
        for name in ("max_symbol_ratio", "max_repetition_ratio", "boilerplate_doc_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise DataError(f"{name}={value!r} must be between 0 and 1")
        if self.min_chars < 0:
            raise DataError(f"min_chars={self.min_chars!r} must be >= 0")


@dataclass
class DedupConfig:
    """Exact dedup (hash of the normalised text), then near dedup (MinHash + LSH on word
    shingles): a document whose estimated Jaccard similarity to an earlier kept one is at least
    `threshold` is dropped."""

    exact: bool = True
    near: bool = True
    threshold: float = 0.8
    num_perm: int = 128
    shingle_size: int = 5  # words per shingle

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise DataError(f"threshold={self.threshold!r} must be in (0, 1]")
        if self.num_perm < 2:
            raise DataError(f"num_perm={self.num_perm!r} must be >= 2")
        if self.shingle_size < 1:
            raise DataError(f"shingle_size={self.shingle_size!r} must be >= 1")


@dataclass
class DataConfig:
    """Everything `prepare_data` needs. The defaults prepare the embedded stdlib corpus."""

    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    temperature: float = 1.0  # mixture share ∝ weight × size^(1/T); large T -> uniform over sources
    clean: CleanConfig = field(default_factory=CleanConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    val_fraction: float = 0.05
    seq_len: int = 256
    seed: int = 0
    workers: int = 0  # tokenizer processes; 0 or 1 tokenizes in this process
    vocab_size: int = 8192  # for the tokenizer trained when none is given
    tokenizer_kind: str = "bpe"  # that tokenizer: bpe (byte-level, decoders) | wordpiece (BERT's) | unigram (T5's)
    max_docs: int | None = None  # per source, for quick runs
    shard_tokens: int = 50_000_000  # tokens per shard file (rounded down to whole sequences)

    def __post_init__(self) -> None:
        if not self.sources:
            raise DataError("sources is empty: give at least one source, e.g. [{path: stdlib}]")
        if self.seq_len < 1:
            raise DataError(f"seq_len={self.seq_len!r} must be >= 1 (tokens per training sequence, e.g. 256)")
        if not self.temperature > 0:
            raise DataError(f"temperature={self.temperature!r} must be > 0 (1 = proportional to size)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataError(f"val_fraction={self.val_fraction!r} must be in [0, 1)")
        if self.vocab_size > MAX_VOCAB:
            raise DataError(f"vocab_size={self.vocab_size} is larger than the uint32 shards allow "
                             f"({MAX_VOCAB}); use a vocabulary of at most {MAX_VOCAB} tokens")
        if self.tokenizer_kind not in ("bpe", "wordpiece", "unigram"):
            raise DataError(f"tokenizer_kind={self.tokenizer_kind!r} is not known: use bpe, wordpiece or unigram")
        if self.workers < 0:
            raise DataError(f"workers={self.workers!r} must be >= 0")
        if self.max_docs is not None and self.max_docs < 1:
            raise DataError(f"max_docs={self.max_docs!r} must be >= 1 or null")
        if self.shard_tokens < 2:
            raise DataError(f"shard_tokens={self.shard_tokens!r} must be >= 2")


def config_hash(config: DataConfig) -> str:
    """A short hash of everything in `config` that changes the prepared data (`workers` does not)."""
    d: dict[str, Any] = dataclasses.asdict(config)
    d.pop("workers")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
