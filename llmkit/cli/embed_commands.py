"""`llmkit embed`: one vector per line of a text file, written as a float32 .npy file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .commands import add_model_arg, positive_int

PROGRESS_FROM = 256  # texts: below this a progress bar is noise


def add_embed_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Embed each line of --input (one text per line; '-' reads standard input) with --model and write the "
        "vectors, one row per line in input order, as a float32 NumPy file (numpy.load reads it). A "
        "sentence-transformers directory (e.g. `llmkit pull all-minilm-l6-v2`) embeds as its files say (pooling, "
        "normalisation, max_seq_length); any other model gives the mean of its last hidden states. Texts longer "
        "than the model embeds are cut to that length, with one warning saying how many (--no-truncate: an error "
        "instead). --model may also be an http(s)://…/v1 server, asked through its /v1/embeddings (a server refuses "
        "over-long texts).")
    add_model_arg(p)
    p.add_argument("--input", "-i", required=True, metavar="FILE", help="text file, one text per line ('-': stdin)")
    p.add_argument("--out", "-o", required=True, metavar="FILE.npy",
                   help="where to write the (lines x dimensions) float32 array, atomically")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="texts per forward pass (or per request to a server); default 32")
    p.add_argument("--no-truncate", action="store_true",
                   help="refuse texts longer than the model embeds instead of cutting them")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto (default): bf16 where it is fast (a GPU, a CPU with AMX or AVX512-BF16; cosine to "
                        "fp32's vectors about 0.99997), else fp32; fp32 for vectors exactly as the reference computes")


def read_lines(source: str) -> list[str]:
    """The texts of --input: one per line, line ends removed; a blank line is refused (its row
    would have nothing to embed)."""
    if source == "-":
        text = sys.stdin.read()
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"--input {source}: no such file" + (" (it is a directory)" if path.is_dir() else ""))
        text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"--input {source} is empty: give one text per line")
    blank = next((i for i, line in enumerate(lines) if not line.strip()), None)
    if blank is not None:
        raise ValueError(f"--input {source}: line {blank + 1} is blank; give one text per line, without blank lines "
                         "(each line becomes one row of --out)")
    return lines


def run_embed(args: argparse.Namespace) -> None:
    import numpy as np
    from tqdm import tqdm

    from ..utils import atomic_path
    from .commands import load_llm

    texts = read_lines(args.input)
    out = Path(args.out)
    llm = load_llm(args)
    options = {"truncate": not args.no_truncate, "precision": args.precision}  # a server refuses precision != auto
    with tqdm(total=len(texts), unit="text", desc="embedding", disable=True if len(texts) < PROGRESS_FROM else None,
              file=sys.stderr) as bar:
        vectors = llm.embed(texts, batch_size=args.batch_size, progress=bar.update, **options)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.save(f, vectors.astype(np.float32))  # a file object: np.save would add .npy to a bare temp name
    print(f"embedded {len(texts):,} texts with {llm.name}: {vectors.shape[0]:,} x {vectors.shape[1]:,} float32 -> {out}")
