"""The train/validation split (by document) and the mixture across sources.

Split: each source's documents are permuted with ``default_rng([seed, source, 0])`` and the
first ``round(val_fraction * n)`` (at least one when there are two or more documents and
val_fraction > 0, never all) go to validation. Near-duplicates were removed before, so no
validation document has a near-duplicate in train.

Mixture (train split only): source s gets the share ``p_s ∝ weight_s × chars_s^(1/T)``; its
target is ``p_s × total train characters``, i.e. ``r_s = target / chars_s`` times its own size.
It contributes ``floor(r_s)`` full passes over its documents plus, for the fraction left,
documents in the order of a seeded permutation until that many characters are reached
(up-sampling repeats documents, down-sampling drops them). All picked documents are then
shuffled together with ``default_rng([seed, 1])``. Validation documents are used once each,
shuffled with ``default_rng([seed, 2])``, so the validation loss weighs every held-out
document once.
"""

from __future__ import annotations

import math

import numpy as np


def split_indices(n: int, val_fraction: float, seed: int, source: int) -> tuple[list[int], list[int]]:
    """(train, val) document indices of a source with `n` documents, each sorted."""
    n_val = round(val_fraction * n)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(1, n_val), n - 1)
    else:
        n_val = 0
    perm = np.random.default_rng([seed, source, 0]).permutation(n)
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


def mixture_proportions(weights: list[float], sizes: list[int], temperature: float) -> list[float]:
    """Normalised shares ``weight × size^(1/T)`` (a source of size 0 gets 0). T = 1 is
    proportional to weight × size; a large T tends to the weights alone (uniform if equal)."""
    raw = [w * (s ** (1.0 / temperature)) if s > 0 else 0.0 for w, s in zip(weights, sizes)]
    total = sum(raw)
    if total <= 0:
        return [0.0 for _ in raw]
    return [r / total for r in raw]


def sample_source(doc_chars: list[int], ratio: float, seed: int, source: int) -> list[int]:
    """Indices of a source's documents for `ratio` times its size (see the module docstring)."""
    n = len(doc_chars)
    if n == 0 or ratio <= 0:
        return []
    ratio = round(ratio, 9)  # so that 0.9999999999 is one full pass, not a partial one
    full = math.floor(ratio)
    picked: list[int] = []
    for copy in range(full):
        picked += np.random.default_rng([seed, source, copy + 1]).permutation(n).tolist()
    remainder = (ratio - full) * sum(doc_chars)
    if remainder > 0:
        acc = 0
        for i in np.random.default_rng([seed, source, full + 1]).permutation(n).tolist():
            if acc >= remainder:
                break
            picked.append(i)
            acc += doc_chars[i]
    return picked


def mix(doc_chars: list[list[int]], proportions: list[float], seed: int) -> list[tuple[int, int]]:
    """(source, document) pairs of the train stream, in order."""
    total = sum(sum(c) for c in doc_chars)
    stream = []
    for s, (chars, p) in enumerate(zip(doc_chars, proportions)):
        size = sum(chars)
        if size:
            stream += [(s, i) for i in sample_source(chars, p * total / size, seed, s)]
    order = np.random.default_rng([seed, 1]).permutation(len(stream))
    return [stream[i] for i in order]


def val_order(val_docs: list[list[int]], seed: int) -> list[tuple[int, int]]:
    """(source, document) pairs of the validation stream: every held-out document once, shuffled."""
    stream = [(s, i) for s, docs in enumerate(val_docs) for i in docs]
    order = np.random.default_rng([seed, 2]).permutation(len(stream))
    return [stream[i] for i in order]
