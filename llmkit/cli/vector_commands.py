"""`llmkit vectors fit|neighbours|analogy`: word vectors before the transformer (bag-of-words,
TF-IDF, word2vec) fitted on the embedded corpus and queried by cosine."""

from __future__ import annotations

import argparse
from pathlib import Path


def _defaults():
    from ..data.vectors import VectorConfig

    return VectorConfig()


def add_vectors_args(p: argparse.ArgumentParser) -> None:
    d = _defaults()
    sub = p.add_subparsers(dest="vectors_verb", metavar="ACTION", required=True)
    f = sub.add_parser("fit", help="fit bag-of-words, TF-IDF or word2vec vectors and save them in a run directory",
                       description="Fit word vectors on the embedded corpus (the installed Python standard library) "
                                   "or on --texts, and save them in --out (vectors.npy, vocab.json, config.json). "
                                   "Words are lowercased identifiers ([a-z_][a-z0-9_]*). word2vec is skip-gram "
                                   "with negative sampling, hand-written in PyTorch.")
    f.add_argument("--method", choices=["bow", "tfidf", "word2vec"], default=d.method, help=f"default {d.method}")
    f.add_argument("--out", "-o", required=True, help="run directory to write")
    f.add_argument("--texts", action="append", default=None, metavar="PATH",
                   help="a text file (one document) or a folder of .txt/.py files, repeatable; default the embedded corpus")
    f.add_argument("--corpus-bytes", type=int, default=d.corpus_bytes,
                   help=f"bytes of the embedded corpus to use (default {d.corpus_bytes:,})")
    f.add_argument("--min-count", type=int, default=d.min_count, help=f"drop rarer words (default {d.min_count})")
    f.add_argument("--max-vocab", type=int, default=d.max_vocab, help=f"keep the most frequent words (default {d.max_vocab})")
    f.add_argument("--dim", type=int, default=d.dim, help=f"word2vec vector size (default {d.dim})")
    f.add_argument("--window", type=int, default=d.window, help=f"word2vec context window (default {d.window})")
    f.add_argument("--negatives", type=int, default=d.negatives, help=f"word2vec negative samples (default {d.negatives})")
    f.add_argument("--epochs", type=int, default=d.epochs, help=f"word2vec epochs (default {d.epochs})")
    f.add_argument("--lr", type=float, default=d.lr, help=f"word2vec starting learning rate (default {d.lr})")
    f.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    f.add_argument("-v", "--verbose", action="store_true", help="show progress logs")
    n = sub.add_parser("neighbours", aliases=["neighbors"], help="the words nearest to a word by cosine",
                       description="Print the K words whose vectors are nearest (cosine) to WORD.")
    n.add_argument("--model", "-m", required=True, help="a run directory of `llmkit vectors fit`")
    n.add_argument("word")
    n.add_argument("-k", type=int, default=10, help="how many (default 10)")
    n.add_argument("-v", "--verbose", action="store_true", help="show progress logs")
    a = sub.add_parser("analogy", help="the words nearest to A - B + C (king man woman -> queen)",
                       description="Print the words nearest to A - B + C, the three excluded.")
    a.add_argument("--model", "-m", required=True, help="a run directory of `llmkit vectors fit`")
    a.add_argument("a")
    a.add_argument("b")
    a.add_argument("c")
    a.add_argument("-k", type=int, default=5, help="how many (default 5)")
    a.add_argument("-v", "--verbose", action="store_true", help="show progress logs")


def _read_texts(paths: list[str]) -> list[str]:
    texts = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".txt", ".py", ".md"))
        elif p.is_file():
            files = [p]
        else:
            raise FileNotFoundError(f"--texts {p}: no such file or folder")
        texts += [f.read_text(encoding="utf-8", errors="replace") for f in files]
    return texts


def _print(pairs: list[tuple[str, float]]) -> None:
    width = max((len(w) for w, _ in pairs), default=0)
    for w, s in pairs:
        print(f"{w:<{width}}  {s:.3f}")


def run_vectors(args: argparse.Namespace) -> None:
    from ..data.vectors import VectorConfig, WordVectors, fit_vectors

    if args.vectors_verb == "fit":
        config = VectorConfig(method=args.method, corpus_bytes=args.corpus_bytes, min_count=args.min_count,
                              max_vocab=args.max_vocab, dim=args.dim, window=args.window, negatives=args.negatives,
                              epochs=args.epochs, lr=args.lr, seed=args.seed)
        texts = _read_texts(args.texts) if args.texts else None
        model = fit_vectors(config, texts)
        model.save(args.out)
        print(f"{args.method}: {len(model):,} words x {model.vectors.shape[1]:,} dims; wrote {args.out}")
        return
    if args.k < 1:
        raise ValueError(f"-k {args.k} must be at least 1")
    model = WordVectors.load(args.model)
    if args.vectors_verb in ("neighbours", "neighbors"):
        _print(model.neighbours(args.word, args.k))
    else:
        _print(model.analogy(args.a, args.b, args.c, args.k))
