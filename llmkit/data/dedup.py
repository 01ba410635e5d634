"""Deduplication: exact (a hash of the normalised text) and near-duplicate (MinHash + LSH from
`datasketch` on word shingles). Both keep the first occurrence, in source order."""

from __future__ import annotations

import hashlib
import logging
import re
import zlib

from llmkit.data.config import DedupConfig

logger = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")
# LSH banding tuned for recall (false-positive weight 0.05, false-negative weight 0.95): at the
# default threshold 0.8 and 128 permutations that is 16 bands of 8 rows, which proposes a pair
# of Jaccard 0.9 with probability 0.9999 (datasketch's equal weights: 0.93). Candidates are
# confirmed with the MinHash estimate, so the extra false positives cost only time.
LSH_WEIGHTS = (0.05, 0.95)


def normalized_key(text: str) -> bytes:
    """Hash of the text case-folded with whitespace runs collapsed: copies that differ only in
    case or spacing get the same key."""
    return hashlib.blake2b(" ".join(text.casefold().split()).encode("utf-8"), digest_size=16).digest()


def exact_duplicates(texts: list[str]) -> list[bool]:
    """For each text, whether an earlier text has the same normalised form."""
    seen: set[bytes] = set()
    dup = []
    for text in texts:
        key = normalized_key(text)
        dup.append(key in seen)
        seen.add(key)
    return dup


def shingles(text: str, size: int) -> set[str]:
    """The set of `size`-word windows of the case-folded words of `text` (a shorter text is one
    shingle of all its words; a text without words is one shingle of its characters)."""
    words = _WORD.findall(text.casefold())
    if len(words) <= size:
        return {" ".join(words) if words else text}
    return {" ".join(words[i:i + size]) for i in range(len(words) - size + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    """Exact Jaccard similarity of two shingle sets."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicates(texts: list[str], cfg: DedupConfig, seed: int = 1) -> list[bool]:
    """For each text, whether an earlier kept text has estimated Jaccard similarity >= the
    threshold. LSH proposes candidates; each is confirmed with the MinHash estimate, so banding
    false positives do not remove documents."""
    from datasketch import MinHash, MinHashLSH
    from tqdm.auto import tqdm

    # zlib.crc32: a fast deterministic 32-bit hash (the affine32 scheme mixes it with murmur's finaliser)
    sets = ([s.encode("utf-8") for s in shingles(t, cfg.shingle_size)] for t in texts)
    hashes = MinHash.generator(sets, num_perm=cfg.num_perm, seed=seed, hashfunc=zlib.crc32)
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, weights=LSH_WEIGHTS)
    kept: dict[int, MinHash] = {}
    dup = []
    for i, mh in enumerate(tqdm(hashes, total=len(texts), desc="near dedup", unit="doc", disable=None, leave=False)):
        is_dup = any(mh.jaccard(kept[j]) >= cfg.threshold for j in lsh.query(mh))
        if not is_dup:
            lsh.insert(i, mh)
            kept[i] = mh
        dup.append(is_dup)
    return dup
