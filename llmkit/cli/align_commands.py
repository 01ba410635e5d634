"""`llmkit align ...`: preference optimisation and RL from feedback (DPO / IPO now)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .commands import add_recipe_args, recipe_from_args


def _common(d: argparse.ArgumentParser, model_help: str, methods: list[str], out: str) -> None:
    add_recipe_args(d)
    d.add_argument("--model", "-m", default=None, help=model_help)
    d.add_argument("--data", default=None, help="preference JSONL, or builtin[:arith,sorting,...] (default builtin)")
    d.add_argument("--method", default=None, choices=methods, help="default full")
    d.add_argument("--out", "-o", default=None, help=f"run directory (default {out})")
    d.add_argument("--skip-bad-rows", action="store_true", help="train on the good rows, reporting the bad ones")
    d.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    d.add_argument("-v", "--verbose", action="store_true", help="show progress logs")


def add_align_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="align_verb", metavar="METHOD", required=True)
    r = sub.add_parser("reward", help="train a reward model (scalar head, Bradley-Terry loss) on preference pairs",
                       description="Train a reward model on preference pairs: the model with a scalar head on the "
                                   "last token, loss -log sigmoid(r_chosen - r_rejected). Reports held-out pairwise "
                                   "accuracy; RUN/model is a Hugging Face *ForSequenceClassification directory.")
    _common(r, "the model the reward model starts from (usually the SFT model)", ["full", "lora"], "runs/rm")
    d = sub.add_parser("dpo", help="Direct Preference Optimisation (loss=ipo for IPO) against the frozen start model",
                       description="Train a model on preference pairs with DPO (or IPO: loss=ipo) against a frozen "
                                   "copy of itself. Pairs are JSONL rows of prompt / chosen / rejected (or chat "
                                   "forms, or ranked lists); --data builtin is the embedded set made from the "
                                   "checkable tasks. Overrides: beta=0.1 loss=ipo label_smoothing=0.1 "
                                   "precompute_ref=false train.steps=300 lora.r=16 ...")
    _common(d, "the starting (SFT) model, also the reference", ["full", "lora", "qlora"], "runs/dpo")


def dpo_recipe(args: argparse.Namespace):
    from ..align.dpo import DPORecipe

    return recipe_from_args(DPORecipe, args)


def run_align(args: argparse.Namespace) -> None:
    if args.align_verb == "reward":
        from ..align.reward import RewardRecipe, reward

        recipe = recipe_from_args(RewardRecipe, args)
        summary = reward(recipe, resume=args.resume)
        what = "reward model"
    else:
        from ..align.dpo import dpo

        recipe = dpo_recipe(args)
        summary = dpo(recipe, resume=args.resume)
        what = recipe.loss
    if int(os.environ.get("RANK", "0")) != 0:
        return
    d = summary["data"]
    print(f"run {recipe.out}: {what} ({recipe.method}), {summary['steps']} steps on {d['train']} pairs"
          + (f"; skipped {d['identical_skipped']} identical pair(s)" if d["identical_skipped"] else "")
          + (f"; {d['bad_rows']} bad row(s)" if d["bad_rows"] else ""))
    p, b = summary.get("preferences"), summary.get("preferences_before")
    if p:
        was = f"{b['accuracy']:.1%} -> " if b else ""
        print(f"  held-out pairs: chosen ranked first {was}{p['accuracy']:.1%} (margin {p['margin']:.3f}, "
              f"loss {p['loss']:.4f})")
    for name, after in summary["after"].items():
        before = summary["before"].get(name, {}).get("value")
        was = f"{before:.4g} -> " if before is not None else ""
        print(f"  {name:12s} {after['metric']:12s} {was}{after['value']:.4g}")
    print(f"report: {Path(recipe.out) / 'report.md'}")
