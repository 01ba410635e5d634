"""`llmkit ablate`: variants of a pretraining recipe over several seeds on the same data, compared
(`llmkit.pipelines.ablate`); this verb parses, calls `ablate` and prints a line per run."""

from __future__ import annotations

import argparse
from pathlib import Path

from .commands import add_recipe_args, resolve_recipe, typed_overrides


def add_ablate_args(p: argparse.ArgumentParser) -> None:
    add_recipe_args(p)
    p.add_argument("--out", "-o", default=None,
                   help="sweep directory: the prepared data, runs/<variant>-s<seed>, results.json and report.md "
                        "(default: the recipe's `out`); rerunning into it continues an interrupted sweep")
    p.epilog = ("A recipe has `base` (a pretrain recipe, or the path of its YAML), `variants` (name -> overrides "
                "of base, e.g. {moe: {model: {preset: tiny-mixtral}}}), `seeds` and `out`; overrides reach into "
                "them: seeds=[0,1,2,3] base.train.steps=600 variants.moe.model.overrides.n_experts=8")


def format_run(event: dict) -> str:
    """One progress line: `[2/6] moe-s0 trained: validation loss 4.1234, 13,200 tokens/s -> DIR`."""
    return (f"[{event['index']}/{event['total']}] {event['variant']}-s{event['seed']} {event['status']}: "
            f"validation loss {event['val_loss']:.4f}, {event['tokens_per_s']:,.0f} tokens/s -> {event['run_dir']}")


def run_ablate(args: argparse.Namespace) -> None:
    from ..pipelines.ablate import AblationRecipe, ablate

    overrides = typed_overrides(args)
    if args.out:
        overrides.append((f"out={args.out}", "--out"))
    recipe = resolve_recipe(AblationRecipe, args, overrides, args.config)
    if recipe is None:
        return
    print(f"ablate: {len(recipe.variants)} variants × {len(recipe.seeds)} seeds = "
          f"{len(recipe.variants) * len(recipe.seeds)} runs into {recipe.out}", flush=True)
    result = ablate(recipe, progress=lambda e: print(format_run(e), flush=True))
    for p in result["paired"].values():
        print(p["sentence"])
    print(f"report: {Path(recipe.out) / 'report.md'}")
