"""Response caches for temperature-0 calls: exact (the same request) and semantic (a question
whose embedding is close to one asked before, in the same context).

A request is split into its *context* and its *query*. The context is everything that shapes the
answer besides the question: the kind of call, the models, every generation setting, the system
prompt and the earlier turns. The query is the last user message (or the completion prompt).
Both caches look only among entries of the same context, so an answer made under another system
prompt or other settings is never served. A semantic hit needs cosine similarity ≥ `threshold`
*and* the same specifics (`same_specifics`: numbers in order, negations, named entities, and the
order of the content words), because sentence embeddings put "What is 2+2?" and "What is 2+3?"
closer than most paraphrases (all-MiniLM-L6-v2: 0.89), and "Convert 5 km to miles" and "Convert 5
miles to km" closer still (0.986); the shipped near-miss pairs (`cache_pairs`) measure both rates.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

# chosen on the shipped dev pairs with all-MiniLM-L6-v2 (`cache_pairs.choose_threshold`): the
# lowest threshold at which no dev near miss hits; see cache_pairs for the held-out figures
DEFAULT_THRESHOLD = 0.955

_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[A-Za-z][A-Za-z'’]*")
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_NEGATIONS = {"not", "no", "never", "none", "nothing", "nobody", "neither", "nor", "without", "cannot"}
_WORD = re.compile(r"[A-Za-z][A-Za-z'’]*")
# words that carry no content of their own: their order says nothing ("How do I ..." / "What's the way to ...")
_STOPWORDS = set("""a an the and or but if so as at by for from in into of on onto to with about than then
    i me my mine you your yours we us our he him his she her it its they them their this that these those there
    is are was were be been being am do does did done have has had will would shall should can could may might
    must what what's whats which who whom whose why when where how please tell give some any""".split())


def _words(text: str) -> list[str]:
    """The words and numbers of `text`, lower-cased, in order."""
    return [t.lower().replace("’", "'") for t in _TOKEN.findall(text)]


def specifics(text: str) -> tuple[tuple[str, ...], int, tuple[str, ...]]:
    """What a paraphrase keeps and a near miss changes: the numbers (digits or number words, in
    the order they come: "10 divided by 2" is not "2 divided by 10"), the count of negations
    ("not", "never", "n't", ...) and the named entities (words capitalised inside a sentence,
    lower-cased, in order of first appearance)."""
    numbers: list[str] = []
    for token in _TOKEN.findall(text):
        low = token.lower()
        if token[0].isdigit():
            numbers.append(token.replace(",", ""))
        elif low in _NUMBER_WORDS:
            numbers.append(_NUMBER_WORDS[low])
    entities: list[str] = []
    negations = 0
    for sentence in re.split(r"[.?!]\s+", text):
        for i, m in enumerate(_WORD.finditer(sentence)):
            word = m.group()
            low = word.lower()
            if low in _NEGATIONS or low.endswith(("n't", "n’t")):
                negations += 1
            if i > 0 and word[0].isupper() and low not in entities and low != "i":
                entities.append(low)
    return tuple(numbers), negations, tuple(entities)


def _content(words: list[str]) -> list[str]:
    return [w for w in words if w not in _STOPWORDS and w not in _NUMBER_WORDS and not w[0].isdigit()
            and w not in _NEGATIONS and not w.endswith("n't")]


def same_order(a: str, b: str) -> bool:
    """Whether the content words `a` and `b` share come in the same order (case-insensitive), so
    that "convert Celsius to Fahrenheit" is never "convert Fahrenheit to Celsius", nor "grams in 3
    kilograms" "kilograms in 3 grams". One reordering is let through: a compound on one side and
    a phrase on the other ("a Python list" / "a list in Python", "a history book" / "a book about
    history"), told by the two words standing next to each other on exactly one side; swapped on
    both sides alike ("milk chocolate" / "chocolate milk", "celsius to fahrenheit" / "fahrenheit
    to celsius") they are a different question."""
    wa, wb = _words(a), _words(b)
    first_a: dict[str, int] = {}
    first_b: dict[str, int] = {}
    for i, w in enumerate(wa):
        first_a.setdefault(w, i)
    for i, w in enumerate(wb):
        first_b.setdefault(w, i)
    shared = [w for w in dict.fromkeys(_content(wa)) if w in first_b]
    for i, u in enumerate(shared):
        for v in shared[i + 1:]:
            if first_b[u] > first_b[v]:  # u before v in a, after it in b
                compound_a = abs(first_a[u] - first_a[v]) == 1
                compound_b = abs(first_b[u] - first_b[v]) == 1
                if compound_a == compound_b:
                    return False
    return True


def same_specifics(a: str, b: str) -> bool:
    """Whether `a` and `b` agree on numbers (in order) and negations, on their named entities
    (each entity of one appears as a word of the other, in the same order), and on the order of
    the content words they share (`same_order`)."""
    na, ga, ea = specifics(a)
    nb, gb, eb = specifics(b)
    if na != nb or ga != gb:
        return False
    words_a = {w.lower() for w in _WORD.findall(a)}
    words_b = {w.lower() for w in _WORD.findall(b)}
    if not (set(ea) <= words_b and set(eb) <= words_a):
        return False
    shared = [e for e in ea if e in eb]
    if shared != [e for e in eb if e in ea]:
        return False
    return same_order(a, b)


def context_key(**parts: Any) -> str:
    """A stable hash of everything that shapes an answer besides the query."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class CacheEntry:
    """A cached answer and what it cost to make (so a hit can report the tokens it saved)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None
    created: float = 0.0


@dataclass
class CacheStats:
    """Lookups and hits (exact and semantic) and the tokens the hits saved."""

    lookups: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    saved_tokens: int = 0

    @property
    def hits(self) -> int:
        """Exact and semantic hits."""
        return self.exact_hits + self.semantic_hits

    @property
    def hit_rate(self) -> float:
        """Hits per lookup (0 before the first lookup)."""
        return self.hits / self.lookups if self.lookups else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The counts and the hit rate, for reports."""
        return {"lookups": self.lookups, "hits": self.hits, "exact_hits": self.exact_hits,
                "semantic_hits": self.semantic_hits, "hit_rate": self.hit_rate, "saved_tokens": self.saved_tokens}


@dataclass
class _Slot:
    entry: CacheEntry
    query: str
    vector: np.ndarray | None = field(default=None, repr=False)


class ExactCache:
    """Answers by (context, query), at most `max_entries` (the oldest go first), each for `ttl`
    seconds (None: until evicted). `clock` is injectable for tests."""

    kind = "exact"

    def __init__(self, ttl: float | None = None, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        if ttl is not None and ttl <= 0:
            raise ValueError(f"cache ttl={ttl}: give seconds > 0, or None to keep entries until evicted")
        if max_entries < 1:
            raise ValueError(f"cache max_entries={max_entries}: must be 1 or more")
        self.ttl, self.max_entries, self.clock = ttl, max_entries, clock
        self.stats = CacheStats()
        self._slots: OrderedDict[tuple[str, str], _Slot] = OrderedDict()
        self._lock = threading.RLock()  # SemanticCache.get calls ExactCache.get under it

    def _fresh(self, slot: _Slot) -> bool:
        return self.ttl is None or self.clock() - slot.entry.created < self.ttl

    def get(self, context: str, query: str) -> tuple[CacheEntry, str] | None:
        """(entry, "exact" or "semantic") for a hit, else None; counted in `stats`."""
        with self._lock:
            self.stats.lookups += 1
            found = self._find(context, query)
            if found is not None:
                entry, how = found
                if how == "exact":
                    self.stats.exact_hits += 1
                else:
                    self.stats.semantic_hits += 1
                self.stats.saved_tokens += entry.prompt_tokens + entry.completion_tokens
            return found

    def _find(self, context: str, query: str) -> tuple[CacheEntry, str] | None:
        slot = self._slots.get((context, query))
        if slot is not None and self._fresh(slot):
            return slot.entry, "exact"
        if slot is not None:
            del self._slots[(context, query)]
        return None

    def put(self, context: str, query: str, entry: CacheEntry) -> None:
        """Keep `entry` as the answer to `query` in `context` (stamped with the clock)."""
        entry.created = self.clock()
        slot = _Slot(entry, query, self._vector(query))
        with self._lock:
            self._slots[(context, query)] = slot
            self._slots.move_to_end((context, query))
            while len(self._slots) > self.max_entries:
                self._slots.popitem(last=False)

    def _vector(self, query: str) -> np.ndarray | None:
        return None

    def __len__(self) -> int:
        return len(self._slots)


class SemanticCache(ExactCache):
    """An `ExactCache` that also answers a query close to a cached one of the same context: cosine
    similarity of `embedder`'s vectors (any `LLM` with ``embed``) ≥ `threshold`, and
    `same_specifics`. Entries live `ttl` seconds (default an hour): a semantic answer should not
    outlive the facts it was made from."""

    kind = "semantic"

    def __init__(self, embedder: Any, threshold: float = DEFAULT_THRESHOLD, ttl: float | None = 3600.0,
                 max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        super().__init__(ttl, max_entries, clock)
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold={threshold}: a cosine similarity in (0, 1]; {DEFAULT_THRESHOLD} keeps "
                             "false hits on near misses rare (see llmkit.apps.production.cache_pairs)")
        if not callable(getattr(embedder, "embed", None)):
            raise TypeError(f"embedder={embedder!r} has no embed(texts): pass an LLM that embeds "
                            "(e.g. llmkit.load('all-minilm-l6-v2'))")
        self.embedder, self.threshold = embedder, threshold

    def _vector(self, query: str) -> np.ndarray:
        v = np.asarray(self.embedder.embed([query]), dtype=np.float32)[0]
        return v / (np.linalg.norm(v) or 1.0)

    def get(self, context: str, query: str) -> tuple[CacheEntry, str] | None:
        """An exact hit, else the most similar fresh entry of `context` at or over the threshold
        that passes `same_specifics`."""
        with self._lock:
            if (context, query) in self._slots:  # exact hits need no embedding
                return super().get(context, query)
            candidates = [s for (c, _), s in self._slots.items() if c == context and self._fresh(s)]
        vector = self._vector(query) if candidates else None  # embedded outside the lock
        with self._lock:
            self.stats.lookups += 1
            best, best_sim = None, self.threshold
            for slot in candidates:
                sim = float(slot.vector @ vector)
                if sim >= best_sim and same_specifics(query, slot.query):
                    best, best_sim = slot, sim
            if best is None:
                return None
            self.stats.semantic_hits += 1
            self.stats.saved_tokens += best.entry.prompt_tokens + best.entry.completion_tokens
            return best.entry, "semantic"


def similarities(embedder: Any, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """Cosine similarity of each pair (a[i], b[i]) under `embedder`."""
    va = np.asarray(embedder.embed(list(a)), dtype=np.float32)
    vb = np.asarray(embedder.embed(list(b)), dtype=np.float32)
    va /= np.linalg.norm(va, axis=1, keepdims=True).clip(1e-12)
    vb /= np.linalg.norm(vb, axis=1, keepdims=True).clip(1e-12)
    return (va * vb).sum(axis=1)
