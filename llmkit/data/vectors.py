"""Word vectors before the transformer: bag-of-words, TF-IDF and word2vec.

Three ways to turn words into vectors, fitted on the embedded corpus (the installed Python
standard library, `corpus.stdlib_texts`) or on given texts, saved in a run directory and queried
by cosine similarity (`neighbours`) and vector arithmetic (`analogy`: a - b + c).

- **Tokenisation** (`tokenize`): the text is lowercased and split into identifier-like words with
  the regex ``[a-z_][a-z0-9_]*``: ``getattr``, ``__init__``, ``max_len`` are words, numbers and
  punctuation are dropped. Simple on purpose, and the same for all three methods and the peers.
- **Vocabulary** (`build_vocab`): words seen at least `min_count` times, the `max_vocab` most
  frequent kept; ordered by descending count, ties alphabetically.
- **Bag-of-words / TF-IDF**: one document per text; the document-term matrix is saved and a
  word's vector is its column (the documents it occurs in). TF-IDF follows scikit-learn's
  `TfidfVectorizer` defaults exactly: raw counts (``sublinear_tf=False``), smooth idf
  ``ln((1 + n) / (1 + df)) + 1``, then each document row scaled to unit l2 norm. A test checks
  the matrix equals scikit-learn's for the same vocabulary and tokeniser.
- **word2vec**: skip-gram with negative sampling (Mikolov et al. 2013), written here in a few
  lines of PyTorch rather than calling gensim: the point is to see the whole algorithm —
  dynamic window, frequent-word subsampling, negatives drawn from unigram^0.75, the logistic
  loss and a linearly decaying learning rate, as in the original C code and gensim. A slow test
  compares it with gensim's `Word2Vec` trained with the same settings.

Run directory: ``vectors.npy`` (one row per word), ``vocab.json`` (the words, in row order, and
their counts), ``docs.npy`` for bow/tfidf (the document-term matrix) and ``config.json`` (the
method and every setting), each written atomically; config.json last, so its presence marks a
complete run.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ..utils import atomic_path, write_json_atomic

METHODS = ("bow", "tfidf", "word2vec")
TOKEN_RE = re.compile(r"[a-z_][a-z0-9_]*")
MAX_SENTENCE = 1000  # a document is cut into sentences of at most this many tokens for word2vec


def tokenize(text: str) -> list[str]:
    """Lowercased identifier-like words of `text` (regex ``[a-z_][a-z0-9_]*``)."""
    return TOKEN_RE.findall(text.lower())


@dataclass
class VectorConfig:
    """Settings of a fit. The word2vec ones are ignored by bow and tfidf."""

    method: str = "word2vec"
    corpus_bytes: int = 2_000_000  # of the embedded corpus, when no texts are given
    min_count: int = 5
    max_vocab: int = 20_000
    # word2vec (skip-gram, negative sampling); defaults train in seconds on 2 CPU cores
    dim: int = 64
    window: int = 5
    negatives: int = 5
    epochs: int = 3
    lr: float = 0.025  # decays linearly to lr * 1e-4, as in word2vec.c and gensim
    sample: float = 1e-3  # frequent-word subsampling threshold (0: off)
    batch_size: int = 1024
    seed: int = 0

    def validate(self) -> None:
        if self.method not in METHODS:
            close = difflib.get_close_matches(self.method, METHODS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown method {self.method!r}{hint} (choose from {', '.join(METHODS)})")
        for name in ("corpus_bytes", "min_count", "max_vocab", "dim", "window", "negatives", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be positive")
        if self.sample < 0:
            raise ValueError(f"sample={self.sample} must be 0 (off) or positive")


def build_vocab(docs: Iterable[Sequence[str]], min_count: int = 1, max_vocab: int | None = None) -> tuple[list[str], list[int]]:
    """The words seen at least `min_count` times, at most `max_vocab` of the most frequent, by
    descending count (ties alphabetical); returns (words, counts)."""
    counts = Counter(w for doc in docs for w in doc)
    kept = sorted(((w, c) for w, c in counts.items() if c >= min_count), key=lambda wc: (-wc[1], wc[0]))
    if max_vocab is not None:
        kept = kept[:max_vocab]
    return [w for w, _ in kept], [c for _, c in kept]


def bow_matrix(docs: Sequence[Sequence[str]], vocab: Sequence[str]) -> np.ndarray:
    """Document-term counts (n_docs x len(vocab)), words outside `vocab` ignored."""
    index = {w: i for i, w in enumerate(vocab)}
    m = np.zeros((len(docs), len(vocab)), dtype=np.float32)
    for d, doc in enumerate(docs):
        for w, c in Counter(doc).items():
            i = index.get(w)
            if i is not None:
                m[d, i] = c
    return m


def idf(counts: np.ndarray) -> np.ndarray:
    """scikit-learn's smoothed inverse document frequency of each column of a document-term count
    matrix: ln((1 + n) / (1 + df)) + 1."""
    df = (counts > 0).sum(axis=0)
    return np.log((1 + counts.shape[0]) / (1 + df)) + 1


def tfidf_matrix(docs: Sequence[Sequence[str]], vocab: Sequence[str]) -> np.ndarray:
    """TF-IDF as scikit-learn's TfidfVectorizer(norm="l2", use_idf=True, smooth_idf=True,
    sublinear_tf=False): raw count x `idf`, rows l2-normalised."""
    counts = bow_matrix(docs, vocab).astype(np.float64)
    m = counts * idf(counts)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return (m / np.where(norms == 0, 1, norms)).astype(np.float32)


def sentences_of(docs: Iterable[Sequence[str]], max_len: int = MAX_SENTENCE) -> list[list[str]]:
    """Each document cut into consecutive pieces of at most `max_len` tokens (gensim cuts at 10,000)."""
    return [list(doc[i:i + max_len]) for doc in docs for i in range(0, len(doc), max_len) if doc[i:i + max_len]]


def train_word2vec(sentences: Sequence[Sequence[str]], vocab: Sequence[str], counts: Sequence[int],
                   config: VectorConfig) -> np.ndarray:
    """Skip-gram with negative sampling; returns the input embeddings (len(vocab) x dim).

    Hand-written in torch on purpose (this module is a lesson): per epoch, each sentence's
    frequent words are randomly dropped (keep probability (sqrt(f/s) + 1) * s/f, f the word's
    frequency, s = `sample`), every remaining word is paired with the words within a window
    drawn uniformly from 1..`window` on each side, and for each (centre, context) pair the
    loss is -log σ(u_ctx·v_centre) - Σ_k log σ(-u_neg_k·v_centre) over `negatives` words drawn
    from the unigram distribution to the power 0.75. Pairs are processed in shuffled
    mini-batches with plain SGD on the summed loss (so each pair moves its rows as much as in
    word2vec.c), the learning rate falling linearly to 1e-4 of its start.
    """
    import torch

    cfg = config
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n_vocab = len(vocab)
    index = {w: i for i, w in enumerate(vocab)}
    ids = [np.array([index[w] for w in s if w in index], dtype=np.int64) for s in sentences]
    ids = [s for s in ids if len(s) > 1]
    freq = np.asarray(counts, dtype=np.float64)
    total = freq.sum()
    if cfg.sample > 0:
        f = freq / total
        keep_prob = np.minimum(1.0, (np.sqrt(f / cfg.sample) + 1) * cfg.sample / f)
    else:
        keep_prob = np.ones(n_vocab)
    noise = torch.tensor(freq ** 0.75, dtype=torch.float64)
    noise /= noise.sum()

    emb_in = torch.empty(n_vocab, cfg.dim).uniform_(-0.5 / cfg.dim, 0.5 / cfg.dim, generator=gen)
    emb_out = torch.zeros(n_vocab, cfg.dim)

    def pairs_of_epoch() -> tuple[np.ndarray, np.ndarray]:
        centres, contexts = [], []
        for s in ids:
            s = s[rng.random(len(s)) < keep_prob[s]]
            n = len(s)
            if n < 2:
                continue
            reach = rng.integers(1, cfg.window + 1, size=n)  # the dynamic window of each position
            for offset in range(1, cfg.window + 1):
                if offset >= n:
                    break
                pos = np.arange(n - offset)
                right = pos[reach[pos] >= offset]  # centre pos, context pos + offset
                centres.append(s[right]); contexts.append(s[right + offset])
                left = pos[reach[pos + offset] >= offset]  # centre pos + offset, context pos
                centres.append(s[left + offset]); contexts.append(s[left])
        if not centres:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        c, x = np.concatenate(centres), np.concatenate(contexts)
        order = rng.permutation(len(c))
        return c[order], x[order]

    est_total = None
    done = 0
    for e in range(cfg.epochs):
        centres, contexts = pairs_of_epoch()
        if est_total is None:
            est_total = max(1, len(centres) * cfg.epochs)
        for start in range(0, len(centres), cfg.batch_size):
            c = torch.from_numpy(centres[start:start + cfg.batch_size])
            x = torch.from_numpy(contexts[start:start + cfg.batch_size])
            lr = cfg.lr * max(1e-4, 1 - done / est_total)
            neg = torch.multinomial(noise, len(c) * cfg.negatives, replacement=True, generator=gen).view(len(c), -1)
            v = emb_in[c]  # (B, d)
            targets = torch.cat([x[:, None], neg], dim=1)  # (B, 1 + K)
            u = emb_out[targets]  # (B, 1 + K, d)
            score = torch.einsum("bd,bkd->bk", v, u)
            label = torch.zeros_like(score)
            label[:, 0] = 1
            # gradient of the logistic loss wrt the score: σ(score) - label
            g = (torch.sigmoid(score) - label) * lr
            grad_v = torch.einsum("bk,bkd->bd", g, u)
            grad_u = g[:, :, None] * v[:, None, :]
            emb_out.index_add_(0, targets.reshape(-1), -grad_u.reshape(-1, cfg.dim))
            emb_in.index_add_(0, c, -grad_v)
            done += len(c)
    return emb_in.numpy().copy()


class WordVectors:
    """Fitted word vectors: `words` (row order), `counts`, `vectors` (n_words x dim), the
    `config` they were fitted with and, for bow/tfidf, the document-term matrix `docs`."""

    def __init__(self, words: Sequence[str], vectors: np.ndarray, config: VectorConfig,
                 counts: Sequence[int] | None = None, docs: np.ndarray | None = None):
        if len(words) != len(vectors):
            raise ValueError(f"{len(words)} words but {len(vectors)} vectors")
        self.words = list(words)
        self.counts = list(counts) if counts is not None else [0] * len(self.words)
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.config = config
        self.docs = docs
        self.index = {w: i for i, w in enumerate(self.words)}
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        self._unit = self.vectors / np.where(norms == 0, 1, norms)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def vector(self, word: str) -> np.ndarray:
        return self.vectors[self.lookup(word)]

    def lookup(self, word: str) -> int:
        """The row of `word`; ValueError naming the closest vocabulary words if it is not there."""
        i = self.index.get(word)
        if i is None:
            close = difflib.get_close_matches(word, self.words, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"{word!r} is not in the vocabulary ({len(self.words)} words, "
                             f"min_count={self.config.min_count}){hint}")
        return i

    def nearest(self, query: np.ndarray, k: int = 10, exclude: Iterable[int] = ()) -> list[tuple[str, float]]:
        """The `k` words whose vectors have the highest cosine with `query`, with the cosines."""
        q = np.asarray(query, dtype=np.float32)
        qn = np.linalg.norm(q)
        sims = self._unit @ (q / qn if qn > 0 else q)
        sims[list(exclude)] = -np.inf
        k = max(0, min(k, len(self.words) - len(set(exclude))))
        top = np.argpartition(-sims, k - 1)[:k] if k else np.zeros(0, int)
        top = top[np.lexsort((top, -sims[top]))]  # by cosine, ties by row
        return [(self.words[i], float(sims[i])) for i in top]

    def neighbours(self, word: str, k: int = 10) -> list[tuple[str, float]]:
        """The `k` words most similar to `word` by cosine, `word` itself excluded."""
        i = self.lookup(word)
        return self.nearest(self._unit[i], k, exclude=[i])

    def analogy(self, a: str, b: str, c: str, k: int = 1) -> list[tuple[str, float]]:
        """The words nearest to a - b + c (unit vectors, as word2vec's `distance` tool and
        gensim's most_similar), the three inputs excluded: analogy("king", "man", "woman")."""
        ia, ib, ic = self.lookup(a), self.lookup(b), self.lookup(c)
        return self.nearest(self._unit[ia] - self._unit[ib] + self._unit[ic], k, exclude=[ia, ib, ic])

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "vectors.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, self.vectors)
        if self.docs is not None:
            with atomic_path(out / "docs.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, self.docs)
        write_json_atomic(out / "vocab.json", {"words": self.words, "counts": self.counts})
        write_json_atomic(out / "config.json", {"kind": "word-vectors", **asdict(self.config)})
        return out

    @classmethod
    def load(cls, path: str | Path) -> WordVectors:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a word-vectors run (no config.json): "
                                    "make one with `llmkit vectors fit --out DIR`")
        raw = json.loads((path / "config.json").read_text())
        if raw.pop("kind", None) != "word-vectors":
            raise ValueError(f"{path}/config.json is not a word-vectors run's config")
        names = {f.name for f in fields(VectorConfig)}
        config = VectorConfig(**{k: v for k, v in raw.items() if k in names})
        vocab = json.loads((path / "vocab.json").read_text())
        docs = np.load(path / "docs.npy") if (path / "docs.npy").is_file() else None
        return cls(vocab["words"], np.load(path / "vectors.npy"), config, vocab.get("counts"), docs)


def fit_vectors(config: VectorConfig | None = None, texts: Iterable[str] | None = None) -> WordVectors:
    """Fit `config.method` on `texts` (one document each) or, without them, on
    `config.corpus_bytes` of the embedded corpus."""
    config = config or VectorConfig()
    config.validate()
    if texts is None:
        from .corpus import stdlib_texts

        texts = stdlib_texts(config.corpus_bytes)
    docs = [tokenize(t) for t in texts]
    docs = [d for d in docs if d]
    words, counts = build_vocab(docs, config.min_count, config.max_vocab)
    if len(words) < 2:
        raise ValueError(f"only {len(words)} words occur at least min_count={config.min_count} times "
                         f"in {len(docs)} documents: give more text or a lower min_count")
    if config.method == "word2vec":
        vectors = train_word2vec(sentences_of(docs), words, counts, config)
        return WordVectors(words, vectors, config, counts)
    m = bow_matrix(docs, words) if config.method == "bow" else tfidf_matrix(docs, words)
    return WordVectors(words, np.ascontiguousarray(m.T), config, counts, docs=m)


def read_analogies(path: str | Path | None = None) -> list[tuple[str, str, str, str]]:
    """The shipped analogy list (`analogies.txt` beside this module) or another file: lines of
    four words ``a b c d`` meaning d ≈ a - b + c; blank lines and # comments skipped."""
    path = Path(path) if path else Path(__file__).with_name("analogies.txt")
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            parts = line.split()
            if len(parts) != 4:
                raise ValueError(f"{path}: {line!r} is not four words a b c d")
            out.append(tuple(parts))
    return out


def analogy_accuracy(model: WordVectors, analogies: Sequence[tuple[str, str, str, str]]) -> tuple[float, int]:
    """Share of the analogies whose four words are all known where the top answer is d, and how
    many were scored."""
    scored = hits = 0
    for a, b, c, d in analogies:
        if all(w in model for w in (a, b, c, d)):
            scored += 1
            hits += model.analogy(a, b, c, k=1)[0][0] == d
    return (hits / scored if scored else math.nan), scored
