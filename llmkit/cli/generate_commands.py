"""`llmkit generate` and `llmkit chat`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .commands import add_generation_args, add_model_arg, generation_config, load_llm, positive_int


# ------------------------------------------------------------------------------ generate
def add_generate_args(p: argparse.ArgumentParser) -> None:
    add_model_arg(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", "-p", help="prompt text ('-' reads standard input)")
    src.add_argument("--prompt-file", help="file holding the prompt")
    p.add_argument("--no-stream", action="store_true", help="print the text only when it is complete")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as one user message in the chat template")
    p.add_argument("--draft", default=None, metavar="MODEL|prompt-lookup",
                   help="speculative decoding: a small draft model with the same tokenizer, or 'prompt-lookup' "
                        "(drafts copied from the context); the output keeps the model's distribution")
    p.add_argument("--speculate", type=positive_int, default=4, metavar="K", help="draft tokens per step (default 4)")
    add_generation_args(p)


def run_generate(args: argparse.Namespace) -> None:
    from ..infer.generate import Timings
    from .chat import format_timings

    prompt = args.prompt
    if args.prompt_file:
        prompt = Path(args.prompt_file).read_text(encoding="utf-8")
    elif prompt == "-":
        prompt = sys.stdin.read()
    t0 = time.perf_counter()
    llm = load_llm(args)
    load_s = time.perf_counter() - t0
    gen = generation_config(args, llm)
    if args.draft:
        from ..infer.speculative import speculative_generate

        ids = llm.chat_prompt([{"role": "user", "content": prompt}]) if args.chat else prompt
        r = speculative_generate(llm, ids, gen, draft=args.draft, k=args.speculate)
        print(("" if args.chat else prompt) + r.completion.text, flush=True)
        print(r.summary(), file=sys.stderr)
        return
    timings = Timings()
    if args.chat:
        pieces = llm.chat([{"role": "user", "content": prompt}], gen, stream=True, timings=timings)
    else:
        pieces = llm.stream(prompt, gen, timings=timings)  # validates before anything is printed
    echo = "" if args.chat or getattr(llm, "seq2seq", False) else prompt  # a T5's output follows no prompt
    if args.no_stream:
        print(echo + "".join(pieces))
    else:
        sys.stdout.write(echo)
        print_stream(pieces)
    if args.stats:
        print(format_timings(timings, load_s), file=sys.stderr)


def print_stream(pieces) -> str:
    text = []
    for piece in pieces:
        text.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return "".join(text)


# ---------------------------------------------------------------------------------- chat
def add_chat_args(p: argparse.ArgumentParser) -> None:
    from .chat import HELP, history_file
    from .chat_memory import add_memory_args

    p.description = ("Chat interactively using the model's chat template. Ctrl-C stops a reply and keeps the "
                     "conversation; Ctrl-D or /exit leaves. With stdin piped, each line is one message.")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = f"{HELP}\n\nThe input history is kept in {history_file()}."
    add_model_arg(p)
    p.add_argument("--system", default=None, help="system message")
    add_generation_args(p, max_new_tokens=0)
    add_memory_args(p)


def run_chat(args: argparse.Namespace) -> None:
    from .chat import run_chat as chat

    chat(args)
