"""`llmkit prompt-eval`: prompting strategies measured side by side on the harness's tasks."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from .commands import add_model_arg, comma_list, load_llm, positive_int


def add_prompt_eval_args(p: argparse.ArgumentParser) -> None:
    from ..apps.prompting import SELECTIONS, STRATEGIES

    add_model_arg(p)
    p.add_argument("--tasks", type=comma_list, required=True,
                   help="comma-separated generation tasks, e.g. arith-small,arith (llmkit eval --list shows them)")
    p.add_argument("--strategies", type=comma_list, default=["zero-shot", "few-shot", "cot"],
                   help=f"comma-separated, from {', '.join(STRATEGIES)}; the first is the baseline the others are "
                        "compared with (default zero-shot,few-shot,cot)")
    p.add_argument("--split", default="test", choices=["train", "dev", "test", "heldout"],
                   help="split to answer (default test; tune choices such as the task's difficulty on dev)")
    p.add_argument("--limit", type=positive_int, default=None, help="answer only the first N questions of each task")
    p.add_argument("--shots", type=positive_int, default=3, help="few-shot examples per question (default 3)")
    p.add_argument("--select", choices=SELECTIONS, default="random",
                   help="how few-shot examples are chosen: the first ones (fixed), a seeded draw per question "
                        "(random, the default), or the nearest by --embedder (nearest)")
    p.add_argument("--embedder", default=None,
                   help="a model with embeddings for --select nearest, e.g. all-minilm-l6-v2 or an http(s) URL")
    p.add_argument("--k", type=positive_int, default=5, help="self-consistency samples per question (default 5)")
    p.add_argument("--temperature", type=float, default=0.7, help="self-consistency's sampling temperature (0.7)")
    p.add_argument("--seed", type=int, default=0, help="seed of the few-shot draw, samples and bootstrap (default 0)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="generation budget per model call (default: each strategy's own; cot and pal 192, "
                        "react 128 per step)")
    p.add_argument("--tools", default="calculator", metavar="NAMES",
                   help="comma-separated built-in tools of the react strategy (default calculator; llmkit agent "
                        "--help lists them)")
    p.add_argument("--batch-size", type=positive_int, default=16,
                   help="requests decoded together by the inference engine (default 16)")
    p.add_argument("--out", default=None, help="output folder (default runs/prompt-eval-DATE-TIME)")


def run_prompt_eval(args: argparse.Namespace) -> None:
    import logging
    import time

    from ..apps.prompt_eval import prompt_eval, strategy_table, write_prompt_eval
    from ..data.tasks import get_task
    from ..eval.runner import format_summary

    if args.temperature <= 0:
        raise ValueError(f"--temperature {args.temperature}: self-consistency samples, so give a temperature > 0")
    for name in args.tasks:
        get_task(name)  # unknown names fail before the model loads
    if "react" in args.strategies:
        from ..apps.toolbox import builtin_tools

        builtin_tools(args.tools)  # so do unknown tools
    embedder = None
    if args.select == "nearest":
        if not args.embedder:
            raise ValueError("--select nearest needs --embedder (a model with embeddings, e.g. all-minilm-l6-v2)")
        from ..infer.llm import load

        embedder = load(args.embedder, api_key=getattr(args, "api_key", None))
    llm = load_llm(args)
    start = time.perf_counter()
    run = prompt_eval(llm, args.tasks, args.strategies, split=args.split, limit=args.limit, shots=args.shots,
                      select=args.select, k=args.k, temperature=args.temperature, seed=args.seed,
                      batch_size=args.batch_size, embedder=embedder, max_new_tokens=args.max_new_tokens,
                      model_name=str(args.model), progress=sys.stderr.isatty(), tools=args.tools)
    out = Path(args.out or f"runs/prompt-eval-{datetime.now():%Y%m%d-%H%M%S}")
    write_prompt_eval(run, out)
    logging.getLogger(__name__).info("prompt-eval took %.0f s", time.perf_counter() - start)
    print(format_summary(run))
    print()
    print(strategy_table(run))
    print(f"\nwrote {out / 'results.json'}, {out / 'report.md'}, {out / 'charts'}")
