"""The evaluation verbs: `llmkit eval`, `llmkit compare`, `llmkit judge`."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from .commands import add_model_arg, comma_list, load_llm, positive_int


# ---------------------------------------------------------------------------------------- eval
def add_eval_args(p: argparse.ArgumentParser) -> None:
    add_model_arg(p, required=False)
    p.add_argument("--tasks", type=comma_list, default=None,
                   help="comma-separated task names, e.g. arith,stdlib-qa,sentiment (see --list)")
    p.add_argument("--list", action="store_true", help="list the known tasks and exit")
    p.add_argument("--shots", type=int, default=0, help="few-shot examples per prompt, drawn from the task's "
                   "training split (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the few-shot draw and bootstrap (default 0)")
    p.add_argument("--split", default="test", choices=["train", "dev", "test", "heldout"],
                   help="split to score (default test; heldout: arith's 1600 further held-out questions)")
    p.add_argument("--limit", type=positive_int, default=None, help="score only the first N examples of each task")
    p.add_argument("--data-dir", default=None,
                   help="folder with the files of a standard-format task (mmlu, hellaswag, arc-*, gsm8k), or for "
                   "the corpus task a prepared data folder (e.g. runs/quickstart/data)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="sequences per forward pass (default 16)")
    p.add_argument("--cot", action="store_true", help="chain-of-thought prompting on generation tasks")
    p.add_argument("--chat", action="store_true",
                   help="ask each question as the user turn of the chat template (for chat fine-tuned models)")
    p.add_argument("--code-samples", type=positive_int, default=1,
                   help="samples per code problem: 1 is greedy pass@1; 10 or more also gives pass@10")
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="generation budget (default: each task's own)")
    p.add_argument("--num-beams", type=positive_int, default=1,
                   help="answer generation tasks by beam search with this many beams (default 1: greedy)")
    p.add_argument("--out", default=None, help="output folder (default runs/eval-DATE-TIME)")


def run_eval(args: argparse.Namespace) -> None:
    from ..data.tasks import get_task, list_tasks
    from ..eval.runner import chart_plan, evaluate, format_summary

    if args.list:
        for name in list_tasks():
            spec = get_task(name)
            where = " (needs --data-dir)" if spec.needs_data_dir else ""
            print(f"{name:16s} {spec.kind:16s} {spec.description}{where}")
        return
    if not args.model or not args.tasks:
        raise ValueError("give --model and --tasks (llmkit eval --list shows the tasks)")
    for name in args.tasks:
        get_task(name)  # unknown names fail before the model loads
    llm = load_llm(args)
    if getattr(llm, "classifier", None) is not None and (args.adapter or args.quantize):
        raise ValueError(f"--model {args.model} is a classifier: --adapter and --quantize apply to language models "
                         "(merge an adapter into the classifier and save it first)")
    run = evaluate(llm, args.tasks, shots=args.shots, seed=args.seed, split=args.split, limit=args.limit,
                   data_dir=args.data_dir, batch_size=args.batch_size, chain_of_thought=args.cot,
                   code_samples=args.code_samples, max_new_tokens=args.max_new_tokens, model_name=str(args.model),
                   progress=sys.stderr.isatty(), chat=args.chat, num_beams=args.num_beams)
    out = Path(args.out or f"runs/eval-{datetime.now():%Y%m%d-%H%M%S}")
    run.write(out)
    print(format_summary(run))
    for rec in run.tasks.values():
        missing = int(rec.metrics.get("no_answer", 0))
        if missing:
            print(f"note: {rec.task}: the answer extractor found nothing in {missing} of "
                  f"{int(rec.metrics['n'])} outputs (scored 0)")
    charts = [str(out / "charts" / f"{kind}.png") for kind in chart_plan(run)]
    print(f"\nwrote {out / 'results.json'}, {out / 'report.md'}" + "".join(f", {c}" for c in charts))


# ------------------------------------------------------------------------------------- compare
def add_compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", help="the baseline: a folder written by `llmkit eval --out` (or its results.json)")
    p.add_argument("b", help="the candidate, compared against the baseline")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="exit with status 1 when a task regressed beyond the noise (for CI)")
    p.add_argument("--resamples", type=positive_int, default=2000, help="bootstrap resamples (default 2000)")


def run_compare(args: argparse.Namespace) -> int:
    from ..eval.runner import compare, format_comparison, load_run

    a, b = load_run(args.a), load_run(args.b)
    if a.settings.split != b.settings.split or a.settings.shots != b.settings.shots:
        print(f"warning: the runs differ in setup (split {a.settings.split}/{b.settings.split}, "
              f"shots {a.settings.shots}/{b.settings.shots})", file=sys.stderr)
    rows = compare(a, b, n_resamples=args.resamples)
    print(format_comparison(rows, Path(args.a).name or "A", Path(args.b).name or "B"))
    regressions = [r.task for r in rows if r.verdict == "regression"]
    if regressions:
        print(f"\nregressions beyond the noise (95% bootstrap CI of Δ excludes 0): {', '.join(regressions)}")
    return 1 if regressions and args.fail_on_regression else 0


# --------------------------------------------------------------------------------------- judge
def add_judge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--a", required=True, help="model A (path, run directory, cache name, or http(s)://…/v1 URL)")
    p.add_argument("--b", required=True, help="model B; the win rate is B's over A")
    p.add_argument("--prompts", required=True,
                   help='JSONL with one prompt per line: {"prompt": "..."} or {"messages": [...]}')
    p.add_argument("--judge", required=True, help="the judge model (local or an OpenAI-compatible URL)")
    p.add_argument("--api-key", default=None, help="API key for URL models (default: $OPENAI_API_KEY)")
    p.add_argument("--device", default=None, help="device for local models")
    p.add_argument("--max-new-tokens", type=positive_int, default=128, help="answer length (default 128)")
    p.add_argument("--no-swap", action="store_true", help="judge each pair in one order only (not recommended)")
    p.add_argument("--rubric", default=None,
                   help="also score each answer from 1 to 10 with this rubric (a sentence for the judge)")
    p.add_argument("--out", default=None, help="folder for judgments.jsonl and summary.json")


def run_judge(args: argparse.Namespace) -> None:
    from ..eval.judge import judge_models

    run = judge_models(args.a, args.b, args.prompts, args.judge, api_key=args.api_key, device=args.device,
                       max_new_tokens=args.max_new_tokens, swap=not args.no_swap, rubric=args.rubric,
                       progress=sys.stderr.isatty())
    print(run.format())
    if args.out:
        summary, judgments = run.write(args.out)
        print(f"wrote {summary} and {judgments}")
