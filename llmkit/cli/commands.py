"""The `llmkit` verbs' shared options (model, generation, recipes) and the training verbs (data,
pretrain, quickstart, scale, finetune). Model-file verbs are in model_commands, generation in
generate_commands, and the align, eval and serve verbs in their own modules; each runner parses,
calls one library function and prints."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path


def version() -> str:
    from .. import __version__

    return __version__


# ---------------------------------------------------------------------------- shared options
def _int_at_least(text: str, low: int, wording: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} must be {wording}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "at least 1")


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "0 or more")


def comma_list(text: str) -> list[str]:
    """The names of a comma-separated option ("a, b,,c" -> ["a", "b", "c"])."""
    return [t.strip() for t in text.split(",") if t.strip()]


def add_model_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", "-m", required=required,
                   help="HF model directory, .gguf file, run directory, or a name in the model cache")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--dtype", default=None, choices=["auto", "fp32", "bf16", "fp16"],
                   help="weight dtype (default auto: fp32 on CPU, bf16/fp16 on GPU)")
    p.add_argument("--api-key", default=None,
                   help="API key when --model is an http(s)://…/v1 URL (default: $OPENAI_API_KEY)")
    p.add_argument("--adapter", action="append", default=[], metavar="[NAME=]DIR",
                   help="an adapter directory (LoRA, prefix/prompt tuning, bottleneck; PEFT or llmkit files) to "
                        "put on the model; repeatable")
    add_quantize_arg(p)


def add_quantize_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", default=None, choices=["int8", "int4"],
                   help="quantise the weights on load (weight-only: int8 per channel, int4 in groups of 64); "
                        "`llmkit quantize` saves a quantised copy and reports its perplexity change")


# what a sampling option is when neither the command line nor the model's own settings give it
SAMPLING_FALLBACKS = {"temperature": 0.7, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0}


def add_generation_args(p: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    g = p.add_argument_group(
        "generation", "Sampling options left unset take the model's own settings (its generation_config.json, or "
                      "the settings `llmkit pull` ships for a packaged GGUF), then the defaults below.")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"default {max_new_tokens}" if max_new_tokens else
                   "default: a quarter of the context window, at most 512")
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy (default 0.7)")
    g.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (default 0 = off)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (default 1 = off)")
    g.add_argument("--min-p", type=float, default=None, help="drop tokens below min-p × p(best) (default 0 = off)")
    g.add_argument("--repetition-penalty", type=float, default=None, help="CTRL-style penalty (default 1 = off)")
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--frequency-penalty", type=float, default=0.0)
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    g.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    g.add_argument("--num-beams", type=int, default=1,
                   help="beam search over this many beams (deterministic; default 1 = off): the most likely "
                        "output as transformers' num_beams finds it; sampling options do not apply")
    g.add_argument("--length-penalty", type=float, default=1.0,
                   help="beam search: a finished beam scores log p / length ** this (default 1; > 1 favours longer)")
    g.add_argument("--early-stopping", choices=["true", "false", "never"], default="false",
                   help="beam search: stop once num_beams beams finished (true), when no running beam can win "
                        "(false, the default), or only at the budget's end (never)")
    g.add_argument("--truncate-prompt", action="store_true",
                   help="drop the oldest prompt tokens instead of failing when the prompt is too long")
    g.add_argument("--stats", action="store_true",
                   help="print load time, prompt tokens and prefill tokens/s, new tokens and decode tokens/s")
    p.set_defaults(default_max_new_tokens=max_new_tokens)


def generation_config(args: argparse.Namespace, llm=None):
    """The `GenerationConfig` of the command line: each option given wins, then the model's own
    setting (`llm.generation_defaults`), then `SAMPLING_FALLBACKS` (`layered_sampling`)."""
    from ..infer.sampling import GenerationConfig, layered_sampling

    own = dict(getattr(llm, "generation_defaults", None) or {})
    beams = getattr(args, "num_beams", 1)
    given = {name: getattr(args, name) for name in SAMPLING_FALLBACKS} | {"num_beams": beams}
    sampling = layered_sampling(given, own, SAMPLING_FALLBACKS)
    max_new = args.max_new_tokens if args.max_new_tokens is not None else own.get(
        "max_new_tokens", getattr(args, "default_max_new_tokens", 256))
    return GenerationConfig(
        max_new_tokens=max_new, **sampling, presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty, stop=args.stop, seed=args.seed, truncate_prompt=args.truncate_prompt,
        num_beams=beams, length_penalty=getattr(args, "length_penalty", 1.0),
        early_stopping={"true": True, "false": False}.get(getattr(args, "early_stopping", "false"), "never"),
    )


def load_llm(args: argparse.Namespace):
    from ..pipelines.adapters import load_with_adapters
    from ..utils import default_device

    return load_with_adapters(args.model, getattr(args, "adapter", []), device=args.device or default_device(),
                              dtype=args.dtype, api_key=getattr(args, "api_key", None),
                              quantize=getattr(args, "quantize", None))


# ------------------------------------------------------------------------------ recipes
def add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=None, help="YAML recipe (see recipes/)")
    p.add_argument("--print-config", action="store_true",
                   help="print every recipe value and where it came from (default, the YAML file, a key=value "
                        "override or a flag), then exit without running")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides of recipe values, e.g. train.lr=3e-4 train.steps=500")


def resolve_recipe(cls, args: argparse.Namespace, overrides: list[tuple[str, str]], path: str | None = None,
                   base: dict | None = None):
    """Recipe `cls` from the YAML at `path` (or `base`, a section of --config), then `overrides`:
    (key=value, flag) pairs, the flag "" where the user typed the key=value. With --print-config
    it prints every value with its source and returns None, and the verb stops there."""
    from ..recipe import explain_recipe, load_recipe

    texts = [text for text, _ in overrides]
    if not getattr(args, "print_config", False):
        return load_recipe(cls, path, texts, base=base)
    _, settings = explain_recipe(cls, path, texts, base, base_origin=args.config or "",
                                 flags=[flag for _, flag in overrides])
    print(format_settings(settings))
    return None


def format_settings(settings) -> str:
    """`key = value   (source)` lines, aligned; values in YAML, so each can be pasted back as an override."""
    import yaml

    def show(value) -> str:
        return yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix("\n...")

    def where(s) -> str:
        return f"{s.source} {s.origin}" if s.origin else s.source

    rows = [(s.key, show(s.value), where(s)) for s in settings]
    key_w = max((len(k) for k, _, _ in rows), default=0)
    value_w = min(max((len(v) for _, v, _ in rows), default=0), 40)  # one long list must not push every source far right
    lines = ["# the resolved recipe: later sources win (default < yaml < override < flag)"]
    lines += [f"{k:<{key_w}} = {v:<{value_w}}   ({w})" for k, v, w in rows]
    return "\n".join(lines)


def typed_overrides(args: argparse.Namespace) -> list[tuple[str, str]]:
    return [(text, "") for text in args.overrides]


# -------------------------------------------------------------------------- data prepare
def add_data_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_verb", metavar="ACTION", required=True)
    prep = sub.add_parser("prepare", help="clean, dedup, split, tokenize and pack a corpus into token shards",
                          description="Clean, deduplicate, split, tokenize and pack a corpus into memory-mapped "
                                      "token shards with an index and a stats report. With no --data, the "
                                      "embedded corpus (the installed Python standard library) is used.")
    add_recipe_args(prep)
    prep.add_argument("--data", action="append", default=None, metavar="PATH",
                      help="a text file, folder, glob or JSONL file (repeatable); 'stdlib' for the embedded corpus")
    # not required by argparse, so that --print-config works without it; run_data asks for it
    prep.add_argument("--out", "-o", default=None, help="output directory (written atomically; required)")
    prep.add_argument("--tokenizer", default=None, help="tokenize with this HF tokenizer/model directory "
                                                        "instead of training a BPE")
    prep.add_argument("-v", "--verbose", action="store_true", help="show progress logs")


def run_data(args: argparse.Namespace) -> None:
    from ..data import DataConfig, format_stats, prepare_data
    from ..recipe import read_yaml

    base = {}
    if args.config:
        raw = read_yaml(args.config)
        base = raw.get("data", raw) if isinstance(raw.get("data"), dict) else raw
    overrides = [(o.removeprefix("data."), "") for o in args.overrides]
    if args.data:
        overrides.append(("sources=" + json.dumps([{"path": d} for d in args.data]), "--data"))
    config = resolve_recipe(DataConfig, args, overrides, base=base)
    if config is None:
        return
    if not args.out:
        raise ValueError("--out is missing: name the directory to write the token shards to, e.g. --out data/prepared")
    tokenizer = None
    if args.tokenizer:
        from ..models.resolve import resolve_model
        from ..tokenizer import Tokenizer

        tokenizer = Tokenizer.from_dir(resolve_model(args.tokenizer))
    prepared = prepare_data(config, args.out, tokenizer=tokenizer)
    print(format_stats(prepared.stats))
    print(f"wrote {args.out}")


# ------------------------------------------------------------------------------ pretrain
def add_pretrain_args(p: argparse.ArgumentParser) -> None:
    add_recipe_args(p)
    p.add_argument("--model", "-m", default=None,
                   help="a preset name (random init) or a model to continue from (HF dir, run dir, cache name)")
    p.add_argument("--data", default=None,
                   help="a prepared data directory (from `llmkit data prepare`) or a corpus path to prepare")
    p.add_argument("--out", "-o", default=None, help="run directory (default: the recipe's `out`)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")


def pretrain_recipe(args: argparse.Namespace):
    """The pretraining recipe of the command line (None after --print-config printed it)."""
    from ..models.config import list_presets
    from ..pipelines.pretrain import PretrainRecipe

    overrides = typed_overrides(args)
    if args.model:
        key = "model.preset" if args.model.lower() in list_presets() else "model.init"
        overrides.append((f"{key}={args.model}", "--model"))
    if args.data:
        if (Path(args.data) / "index.json").exists():
            overrides.append((f"data_dir={args.data}", "--data"))
        else:
            overrides.append(("data.sources=" + json.dumps([{"path": args.data}]), "--data"))
    if args.out:
        overrides.append((f"out={args.out}", "--out"))
    return resolve_recipe(PretrainRecipe, args, overrides, args.config)


def run_pretrain(args: argparse.Namespace) -> None:
    from ..pipelines.pretrain import pretrain

    recipe = pretrain_recipe(args)
    if recipe is None:
        return
    summary = pretrain(recipe, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        val = summary.get("final_val_loss")
        print(f"run {recipe.out}: {summary['steps']} steps, {summary['tokens']:,} tokens, "
              f"validation loss {val:.4f}" if val is not None else f"run {recipe.out}: {summary['steps']} steps")
        print(f"report: {Path(recipe.out) / 'report.md'}")
        masked = summary.get("masked_lm")
        if masked:
            print(f"masked-token accuracy {masked['accuracy']:.3f} (most-frequent-token baseline "
                  f"{masked['baseline']['accuracy']:.3f})")
            print(f"try: llmkit embed --model {recipe.out} --input FILE --out vectors.npy")
        elif recipe.objective == "causal":
            print(f"try: llmkit generate --model {recipe.out} --prompt 'def ' --max-new-tokens 64")


# ---------------------------------------------------------------------------- quickstart
def add_quickstart_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=5.0, help="time budget for the whole job (default 5)")
    p.add_argument("--out", "-o", default="runs/quickstart", help="run directory (default runs/quickstart)")
    p.add_argument("--vocab-size", type=positive_int, default=2048, help="tokenizer size (default 2048)")
    p.add_argument("--seq-len", type=positive_int, default=128, help="training sequence length (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")


class ProgressLines(logging.Handler):
    """Prints log records as console lines stamped with the seconds since `start`: the quickstart's
    stages (and the tokenizer's and Trainer's news) as they happen; warnings say so."""

    def __init__(self, start: float):
        super().__init__(logging.INFO)
        self.start = start

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        kind = "warning: " if record.levelno >= logging.WARNING else ""
        # through tqdm, so that a progress bar on the terminal is redrawn below the line, not cut by it
        tqdm.write(f"[{time.perf_counter() - self.start:5.1f}s] {kind}{record.getMessage()}", file=sys.stdout)


# what `llmkit quickstart` shows as it goes: its stages, the tokenizer's training, the Trainer's
# evaluations and re-plans (other llmkit loggers show only their warnings)
QUICKSTART_PROGRESS = ("llmkit.pipelines.quickstart", "llmkit.tokenizer.train", "llmkit.train.trainer")


@contextlib.contextmanager
def progress_lines(start: float, names: tuple[str, ...] = QUICKSTART_PROGRESS, verbose: bool = False):
    """Route llmkit's log records through `ProgressLines` while the block runs: INFO from `names`,
    warnings from every llmkit logger. With -v (every log line shown already) nothing changes."""
    if verbose:
        yield
        return
    root = logging.getLogger("llmkit")
    handler = ProgressLines(start)
    saved = [(root, root.level, root.propagate)] + [(logging.getLogger(n), logging.getLogger(n).level, None)
                                                    for n in names]
    root.addHandler(handler)
    root.propagate = False  # these lines replace the plain log format
    root.setLevel(logging.WARNING)
    for name in names:
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for logger, level, propagate in saved:
            logger.setLevel(level)
            if propagate is not None:
                logger.propagate = propagate


def run_quickstart(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    # said before the job's code (data, training) is imported, which takes seconds: the console answers at once
    print(f"[{time.perf_counter() - start:5.1f}s] quickstart: a language model trained from scratch on this machine "
          f"in about {args.minutes:g} minute{'s' if args.minutes != 1 else ''}, into {args.out}", flush=True)
    with progress_lines(start, verbose=getattr(args, "verbose", False)):
        from ..pipelines.quickstart import quickstart

        s = quickstart(args.minutes, args.out, seed=args.seed, vocab_size=args.vocab_size, seq_len=args.seq_len,
                       overwrite=args.overwrite)
    print(f"trained {s['params_total']:,} parameters on {s['tokens']:,} tokens in {s['steps']:,} steps, "
          f"{s['total_s']:.0f} s (budget {s['budget_s']:.0f} s)")
    print(f"validation loss {s['final_val_loss']:.3f} nats/token; unigram entropy {s['unigram_entropy']:.3f}; "
          f"bigram cross-entropy {s['bigram_cross_entropy']:.3f}")
    for sample in s.get("samples", [])[:1]:
        print("sample:\n" + sample["prompt"] + sample["text"])
    print(f"report: {Path(args.out) / 'report.md'}")
    print(f"next:   llmkit chat --model {args.out}")
    print(f"        llmkit generate --model {args.out} --prompt 'def ' --max-new-tokens 64")
    print(s["verdict"])


# --------------------------------------------------------------------------------- scale
def add_scale_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="scale_verb", metavar="ACTION", required=True)
    opt = sub.add_parser("optimal", help="Chinchilla compute-optimal parameters and tokens (and Kaplan's law)",
                         description="Give exactly one of --flops, --params, --tokens, or --gpu-hours with --flops-per-second.")
    opt.add_argument("--flops", type=float, default=None, help="compute budget in FLOPs, e.g. 1e21")
    opt.add_argument("--params", type=float, default=None, help="model size N")
    opt.add_argument("--tokens", type=float, default=None, help="training tokens D")
    opt.add_argument("--gpu-hours", type=float, default=None, help="time budget in device hours")
    opt.add_argument("--flops-per-second", type=float, default=None, help="sustained throughput per device")
    mem = sub.add_parser("memory", help="memory estimate for inference or training by dtype and method")
    mem.add_argument("--preset", default=None, help="a preset name")
    mem.add_argument("--model", default=None, help="a model directory")
    mem.add_argument("--params", type=float, default=None, help="a bare parameter count (weights only)")
    mem.add_argument("--method", default="inference", choices=["inference", "full", "lora", "qlora"])
    mem.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16", "int8", "int4"])
    mem.add_argument("--batch-size", type=positive_int, default=1)
    mem.add_argument("--seq-len", type=positive_int, default=2048)
    fit = sub.add_parser("fit", help="fit L(N, D) = E + A/N^a + B/D^b to your runs and project a bigger one")
    fit.add_argument("runs", nargs="+", help="run directories (with summary.json)")
    fit.add_argument("--predict-params", type=float, default=None, help="project the loss at this N ...")
    fit.add_argument("--predict-tokens", type=float, default=None, help="... and this D")
    fit.add_argument("--plot", default="scaling_fit.png", help="where to write the plot of the fit")


def run_scale(args: argparse.Namespace) -> None:
    from .. import scaling

    if args.scale_verb == "optimal":
        flops = args.flops
        if args.gpu_hours is not None:
            if not args.flops_per_second:
                raise ValueError("--gpu-hours needs --flops-per-second (sustained FLOP/s per device)")
            flops = scaling.flops_from_time(args.gpu_hours * 3600, args.flops_per_second)
        plan = scaling.compute_optimal(flops=flops, params=args.params, tokens=args.tokens)
        print(f"Chinchilla: {plan.params:.4g} parameters, {plan.tokens:.4g} tokens, {plan.flops:.4g} FLOPs")
        kaplan = scaling.kaplan_optimal(plan.flops)
        print(f"Kaplan 2020 at the same compute: {kaplan.params:.4g} parameters, {kaplan.tokens:.4g} tokens")
    elif args.scale_verb == "memory":
        from ..models.config import preset as get_preset
        from ..models.resolve import model_config

        if args.preset:
            model = get_preset(args.preset)
        elif args.model:
            model = model_config(args.model)
        elif args.params:
            model = int(args.params)
        else:
            raise ValueError("give --preset, --model or --params")
        est = scaling.estimate_memory(model, method=args.method, dtype=args.dtype, batch_size=args.batch_size,
                                      seq_len=args.seq_len)
        print(est.table())
    else:
        points = scaling.load_runs(args.runs)
        fit = scaling.fit_law(points)
        print(fit.summary())
        if args.predict_params and args.predict_tokens:
            print(f"projected loss at N={args.predict_params:.3g}, D={args.predict_tokens:.3g}: "
                  f"{fit.predict(args.predict_params, args.predict_tokens):.4f}")
        scaling.plot_fit(fit, points, args.plot)
        print(f"plot: {args.plot}")


# ------------------------------------------------------------------------------ finetune
def add_finetune_args(p: argparse.ArgumentParser) -> None:
    from ..peft import METHODS

    add_recipe_args(p)
    p.add_argument("--model", "-m", default=None, help="the base model: HF dir, run dir or cached name")
    p.add_argument("--data", default=None,
                   help="JSONL of messages / Alpaca / prompt-completion rows, or builtin[:arith,sorting,...] "
                        "(the embedded instruction set; default)")
    p.add_argument("--method", default=None, choices=METHODS, help="default lora")
    p.add_argument("--out", "-o", default=None, help="run directory (default runs/finetune)")
    p.add_argument("--skip-bad-rows", action="store_true", help="train on the good rows, reporting the bad ones")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")


def recipe_from_args(cls, args: argparse.Namespace, data: str = "data"):
    """A training recipe from --config, the key=value overrides and the --model / --data /
    --method / --out flags (overrides win over the file, flags over both). `data` names the
    section the data flags fill (``prompts`` for the rollout methods: --prompts, --reward).
    None after --print-config printed it."""
    overrides = typed_overrides(args)
    for flag, key in (("model", "model"), ("data", f"{data}.path"), ("prompts", f"{data}.path"), ("method", "method"),
                      ("reward", "reward"), ("reference", "reference"), ("out", "out")):
        value = getattr(args, flag, None)
        if value:
            overrides.append((f"{key}={value}", f"--{flag}"))
    if getattr(args, "skip_bad_rows", False):
        overrides.append((f"{data}.skip_bad_rows=true", "--skip-bad-rows"))
    return resolve_recipe(cls, args, overrides, args.config)


def finetune_recipe(args: argparse.Namespace):
    from ..pipelines.finetune import FinetuneRecipe

    return recipe_from_args(FinetuneRecipe, args)


def run_finetune(args: argparse.Namespace) -> None:
    from ..data.labelled import LABELLED_SETS
    from ..pipelines.finetune import finetune

    recipe = finetune_recipe(args)
    if recipe is None:
        return
    summary = finetune(recipe, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    t = summary["trainable"]
    print(f"run {recipe.out}: {recipe.method}, {summary['steps']} steps, trainable {t['trainable']:,} of "
          f"{t['total']:,} parameters ({t['percent']:.2f}%)")
    if "classify" in summary:
        c, m = summary["classify"], summary["classify"]["majority"]
        print(f"  held-out accuracy {summary['classify_before']['accuracy']:.3f} -> {c['accuracy']:.3f}, macro-F1 "
              f"{c['macro_f1']:.3f} (majority class {m['label']!r}: accuracy {m['accuracy']:.3f}, "
              f"macro-F1 {m['macro_f1']:.3f})")
        for label, pr in c.get("per_label", {}).items():
            print(f"  {label}: precision {pr['precision']:.3f} [{pr['precision_ci'][0]:.3f}, {pr['precision_ci'][1]:.3f}]"
                  f", recall {pr['recall']:.3f} [{pr['recall_ci'][0]:.3f}, {pr['recall_ci'][1]:.3f}] "
                  f"({pr['support']} held out)")
        print(f"report: {Path(recipe.out) / 'report.md'}")
        task = recipe.data.path.split(":", 1)[1] if recipe.data.path.startswith("builtin:") else None
        if task and task not in LABELLED_SETS:
            print(f"try: llmkit eval --model {Path(recipe.out)} --tasks {task}")
        print(f"in Python: llmkit.load({str(Path(recipe.out))!r}).classify([\"some text\"])")
        return
    if summary["data"]["bad_rows"]:
        print(f"skipped {summary['data']['bad_rows']} bad row(s): " + "; ".join(summary["data"]["bad"][:5]))
    for name, after in summary["after"].items():
        before = summary["before"].get(name, {}).get("value")
        was = f"{before:.4g} -> " if before is not None else ""
        print(f"  {name:12s} {after['metric']:12s} {was}{after['value']:.4g}")
    out = Path(recipe.out)
    print(f"report: {out / 'report.md'}")
    print(f"try: llmkit chat --model {out}")
