"""`llmkit agent-traces`: write ReAct and PAL training traces for the arithmetic tasks, made by code
(`llmkit.apps.agent_traces`), as a JSONL chat dataset that `llmkit finetune --data FILE` reads."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from .commands import comma_list, positive_int


def add_agent_traces_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Write training traces for agents, made by code from the train questions of the arithmetic tasks (never "
        "a dev, test or heldout question of any task named): ReAct trajectories (Thought, Action: calculator, "
        "Action Input, the calculator's real Observation, Final Answer) rendered exactly as `llmkit agent "
        "--tools calculator` prompts, and PAL programs (a ```python block that prints the answer) as `llmkit agent "
        "--pal` expects them. Each line is {\"messages\": [...], \"meta\": {...}}: fine-tune on it with "
        "`llmkit finetune --config recipes/agents-lora.yaml --data FILE`. A sample of the programs is run in the "
        "sandbox first (--check). Example: llmkit agent-traces --tasks arith,arith-small --kinds react,pal --n 600 "
        "--out runs/agent-traces.jsonl")
    p.add_argument("--out", "-o", required=True, help="the JSONL file to write (replaced atomically)")
    p.add_argument("--tasks", default="arith,arith-small", metavar="NAMES",
                   help="built-in arithmetic tasks, comma-separated (default arith,arith-small)")
    p.add_argument("--kinds", default="react,pal", metavar="KINDS",
                   help="trace kinds, comma-separated: react, pal (default both)")
    p.add_argument("--n", type=positive_int, default=None,
                   help="questions per task, drawn with --seed (default: every train question)")
    p.add_argument("--seed", type=int, default=0, help="draws the questions and the wordings (default 0)")
    p.add_argument("--tools", default="calculator", metavar="NAMES",
                   help="the tools the ReAct system message lists, as the agent will be given them; must include "
                        "calculator (default calculator)")
    p.add_argument("--check", type=int, default=8, metavar="K",
                   help="run K of the PAL programs in the sandbox and refuse to write if one prints a wrong answer "
                        "(default 8; 0 = skip)")


def run_agent_traces(args: argparse.Namespace) -> int:
    from ..apps.agent_traces import agent_traces, check_pal, write_traces

    if args.check < 0:
        raise ValueError(f"--check {args.check} must be 0 or more (0 skips the check)")
    records = agent_traces(tasks=comma_list(args.tasks), kinds=comma_list(args.kinds), n=args.n, seed=args.seed,
                           tools=args.tools)
    if args.check and any(r["meta"]["kind"] == "pal" for r in records):
        problems = check_pal(records, args.check, args.seed)
        if problems:
            raise RuntimeError(f"{len(problems)} of {args.check} PAL programs checked in the sandbox went wrong, "
                               f"nothing written: " + "; ".join(problems[:3]))
    write_traces(args.out, records)
    counts = Counter((r["meta"]["task"], r["meta"]["kind"]) for r in records)
    detail = ", ".join(f"{task} {kind}: {c}" for (task, kind), c in sorted(counts.items()))
    print(f"wrote {len(records)} traces to {args.out} ({detail})")
    checked = min(args.check, sum(kind == "pal" for _, kind in counts.elements()))
    if checked:
        print(f"checked {checked} PAL programs in the sandbox: each printed its gold answer", file=sys.stderr)
    return 0
