"""`llmkit generate` and `llmkit chat`."""

from __future__ import annotations

import argparse
import sys
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
    prompt = args.prompt
    if args.prompt_file:
        prompt = Path(args.prompt_file).read_text(encoding="utf-8")
    elif prompt == "-":
        prompt = sys.stdin.read()
    llm = load_llm(args)
    gen = generation_config(args)
    if args.draft:
        from ..infer.speculative import speculative_generate

        ids = llm.chat_prompt([{"role": "user", "content": prompt}]) if args.chat else prompt
        r = speculative_generate(llm, ids, gen, draft=args.draft, k=args.speculate)
        print(("" if args.chat else prompt) + r.completion.text, flush=True)
        print(r.summary(), file=sys.stderr)
        return
    if args.chat:
        pieces = llm.chat([{"role": "user", "content": prompt}], gen, stream=True)
        print_stream(pieces)
        return
    if args.no_stream:
        print(prompt + llm.generate(prompt, gen))
        return
    pieces = llm.stream(prompt, gen)  # validates before anything is printed
    sys.stdout.write(prompt)
    print_stream(pieces)


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
    add_model_arg(p)
    p.add_argument("--system", default=None, help="system message")
    add_generation_args(p, max_new_tokens=0)


def run_chat(args: argparse.Namespace) -> None:
    llm = load_llm(args)
    if not args.max_new_tokens:
        args.max_new_tokens = min(512, llm.config.context_window // 4)
    gen = generation_config(args)
    interactive = sys.stdin.isatty()
    messages = [{"role": "system", "content": args.system}] if args.system else []
    if interactive:
        print(f"chatting with {llm.name} — /reset clears the conversation, /exit (or Ctrl-D) quits")
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        if not line.strip():
            continue
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            messages = messages[:1] if args.system else []
            continue
        messages.append({"role": "user", "content": line})
        messages = llm.fit_history(messages, gen.max_new_tokens)  # forget the oldest turns when full
        reply = print_stream(llm.chat(messages, gen, stream=True))
        messages.append({"role": "assistant", "content": reply})
