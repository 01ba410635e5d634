"""`llmkit align ...`: reward models, preference optimisation (DPO / IPO), RL from feedback
(PPO, GRPO) and AI-feedback labelling."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .commands import add_recipe_args, recipe_from_args


def _common(d: argparse.ArgumentParser, model_help: str, methods: list[str], out: str, rollouts: bool = False) -> None:
    add_recipe_args(d)
    d.add_argument("--model", "-m", default=None, help=model_help)
    if rollouts:
        d.add_argument("--prompts", default=None, help="prompt JSONL (prompt, optional answer and task), or "
                                                       "builtin[:arith,sorting] (default builtin:arith)")
        d.add_argument("--reward", default=None,
                       help="a reward-model directory (llmkit align reward), built-in rewards joined with + and "
                            "weighted with * (arith-exact, sorting-exact, format, length*-0.01), or module:function")
        d.add_argument("--reference", default=None, help="the KL reference model (default: the starting model)")
    else:
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
    p = sub.add_parser("ppo", help="PPO against a reward model (or reward functions) with a KL penalty to the SFT model",
                       description="Proximal Policy Optimisation: sample completions of the prompts from the policy, "
                                   "score them (reward model or functions) minus kl * KL(policy || SFT) per token, "
                                   "GAE with a value head, the clipped surrogate and value losses over rollout.epochs "
                                   "passes. Overrides: kl=0.05 kl_target=6 (adaptive KL) clip=0.2 vf_coef=0.1 "
                                   "rollout.prompts_per_batch=16 rollout.max_new_tokens=32 train.steps=100 ...")
    _common(p, "the starting (SFT) model; a frozen copy is the KL reference", ["full", "lora", "qlora"], "runs/ppo",
            rollouts=True)
    g = sub.add_parser("grpo", help="GRPO: groups of samples per prompt, advantages from group-normalised rewards",
                       description="Group Relative Policy Optimisation: rollout.samples_per_prompt completions per "
                                   "prompt, each one's advantage its reward normalised within the group (no value "
                                   "head), the clipped surrogate plus beta * KL(policy || SFT). Verifiable rewards: "
                                   "--reward arith-exact (or sorting-exact, format, length, module:function, a "
                                   "reward model). Overrides: beta=0.04 rollout.samples_per_prompt=8 "
                                   "scale_rewards=false train.steps=100 ...")
    _common(g, "the starting (SFT) model; a frozen copy is the KL reference", ["full", "lora", "qlora"], "runs/grpo",
            rollouts=True)
    lab = sub.add_parser("label", help="AI feedback: a judge model labels pairs of the model's answers into preference JSONL",
                         description="Sample two answers per prompt from --model, have --judge (a local model or an "
                                     "OpenAI-compatible URL) pick the better one in both orders (an order-dependent "
                                     "verdict is a tie), and write the decided pairs as preference JSONL for "
                                     "`llmkit align dpo` and `llmkit align reward`. Ties, verdict-less replies and "
                                     "identical samples are counted and left out. With a reward as the judge "
                                     "(--judge arith-exact), each prompt gets --samples answers and the best-scored "
                                     "is chosen over the worst: on-policy pairs for DPO (iterative RPO).")
    lab.add_argument("--model", "-m", required=True, help="the model whose answers are labelled (usually the SFT model)")
    lab.add_argument("--judge", required=True,
                     help="the judge: a model path / run dir / cache name or an http(s)://…/v1 URL (pairwise "
                          "verdicts), or a reward: arith-exact, module:function, a reward-model dir (best of "
                          "--samples answers over the worst)")
    lab.add_argument("--samples", type=int, default=4, help="answers per prompt when the judge is a reward (default 4)")
    lab.add_argument("--prompts", required=True, help="prompt JSONL ({\"prompt\": ...} rows), or builtin[:arith,sorting]")
    lab.add_argument("--out", "-o", required=True, help="the preference JSONL to write (and OUT.summary.json)")
    lab.add_argument("--limit", type=int, default=None, help="label only the first N prompts")
    lab.add_argument("--builtin-train-size", type=int, default=None,
                     help="--prompts builtin: this many fresh training questions per task instead of the train split")
    lab.add_argument("--max-new-tokens", type=int, default=64, help="answer length (default 64)")
    lab.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the answers (default 1)")
    lab.add_argument("--seed", type=int, default=0)
    lab.add_argument("--no-swap", action="store_true", help="judge each pair in one order only (not recommended)")
    lab.add_argument("--api-key", default=None, help="API key for URL models (default: $OPENAI_API_KEY)")
    lab.add_argument("--device", default=None, help="device for local models")
    rec = sub.add_parser("recipe", help="the whole story on arith: SFT -> reward model -> PPO, DPO and GRPO, each "
                                        "measured against SFT",
                         description="From a base model (e.g. runs/quickstart): SFT on a checkable task, a reward "
                                     "model, then from the SFT model PPO (the task's checker plus the reward model, "
                                     "KL penalty to SFT), DPO on the SFT model's own right-vs-wrong answers (with "
                                     "the chosen answers' NLL: RPO) and GRPO (exact-answer reward). Every model is "
                                     "scored on the task's held-out splits (arith: dev, test and heldout, 2000 questions) with a "
                                     "paired bootstrap interval of its change "
                                     "from SFT, the reward model's win rate against SFT and the KL to SFT, in "
                                     "OUT/report.md. Finished stages are reused. Overrides name their stage: "
                                     "ppo.kl=0.1 grpo.train.steps=800 sft.train.steps=5000 pairs.samples=8")
    rec.add_argument("--model", "-m", required=True, help="the base model (an HF directory or run directory)")
    rec.add_argument("--out", "-o", default="runs/align", help="the recipe's directory (default runs/align)")
    rec.add_argument("--task", default="arith", choices=["arith", "sorting"], help="default arith")
    rec.add_argument("--stages", default="sft,rm,ppo,pairs,dpo,grpo",
                     help="stages to run, comma-separated (default sft,rm,ppo,pairs,dpo,grpo; add ppo-rm for PPO "
                          "against the reward model alone, which shows reward hacking at this size)")
    rec.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")
    rec.add_argument("--limit", type=int, default=None, help="score only the first N test questions (quick checks)")
    rec.add_argument("-v", "--verbose", action="store_true", help="show progress logs")
    rec.add_argument("overrides", nargs="*", metavar="STAGE.KEY=VALUE", help="settings of one stage")


def run_recipe(args: argparse.Namespace) -> None:
    from ..pipelines.align import align_recipe

    result = align_recipe(args.model, args.out, args.task, args.overrides,
                          [s.strip() for s in args.stages.split(",") if s.strip()], args.device, args.limit)
    sft = result["models"]["sft"]
    print(f"{result['task']} {' + '.join(result['splits'])} splits ({result['examples']} held-out questions), "
          "exact match:")
    print(f"  sft   {sft['value']:.3f} [{sft['ci'][0]:.3f}, {sft['ci'][1]:.3f}]")
    for name, m in result["models"].items():
        if name == "sft":
            continue
        w = m.get("win_rate")
        print(f"  {name:5s} {m['value']:.3f} (change {m['delta']:+.3f}, 95% CI [{m['delta_ci'][0]:+.3f}, "
              f"{m['delta_ci'][1]:+.3f}]: {m['verdict']}); KL to SFT {m['kl_to_sft']['kl']:.3f}"
              + (f"; RM win rate vs SFT {w['win_rate']:.1%}" if w else ""))
    print(f"report: {Path(args.out) / 'report.md'}")


def run_label(args: argparse.Namespace) -> None:
    import sys

    from ..align.feedback import label

    stats = label(args.model, args.judge, args.prompts, args.out, limit=args.limit, max_new_tokens=args.max_new_tokens,
                  temperature=args.temperature, seed=args.seed, swap=not args.no_swap, device=args.device,
                  api_key=args.api_key, progress=sys.stderr.isatty(), samples=args.samples,
                  train_size=args.builtin_train_size)
    print(f"wrote {stats.pairs} preference pair(s) to {args.out} from {stats.prompts} prompts "
          f"({stats.ties} ties, {stats.invalid} without a verdict, {stats.identical} with identical and {stats.empty} with "
          "empty answers left out)")
    if stats.verdicts:
        print(f"  the judge favoured the answer shown first in {stats.first_position_wins / stats.verdicts:.0%} of "
              f"{stats.verdicts} single-order verdicts (50% is unbiased)")


def dpo_recipe(args: argparse.Namespace):
    from ..pipelines.dpo import DPORecipe

    return recipe_from_args(DPORecipe, args)


def run_align(args: argparse.Namespace) -> None:
    if args.align_verb in ("ppo", "grpo"):
        return run_rollouts(args)
    if args.align_verb == "label":
        return run_label(args)
    if args.align_verb == "recipe":
        return run_recipe(args)
    if args.align_verb == "reward":
        from ..pipelines.reward import RewardRecipe, reward

        recipe = recipe_from_args(RewardRecipe, args)
        if recipe is None:
            return
        summary = reward(recipe, resume=args.resume)
        what = "reward model"
    else:
        from ..pipelines.dpo import dpo

        recipe = dpo_recipe(args)
        if recipe is None:
            return
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
    _print_tasks(summary)
    print(f"report: {Path(recipe.out) / 'report.md'}")


def _print_tasks(summary: dict) -> None:
    for name, after in summary["after"].items():
        before = summary["before"].get(name, {}).get("value")
        was = f"{before:.4g} -> " if before is not None else ""
        print(f"  {name:12s} {after['metric']:12s} {was}{after['value']:.4g}  (95% CI after "
              f"[{after['ci'][0]:.3g}, {after['ci'][1]:.3g}])")


def run_rollouts(args: argparse.Namespace) -> None:
    from ..pipelines.rl import GRPORecipe, PPORecipe, rl

    recipe = recipe_from_args(PPORecipe if args.align_verb == "ppo" else GRPORecipe, args, data="prompts")
    if recipe is None:
        return
    summary = rl(recipe, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    d = summary["data"]
    print(f"run {recipe.out}: {recipe.kind} ({recipe.method}), {summary['steps']} steps over {summary['rollouts']} "
          f"rollout batches on {d['train']} prompts, reward {summary['reward']}"
          + (f"; skipped {d['too_long']} prompt(s) too long" if d["too_long"] else ""))
    kl, w = summary.get("kl_to_sft"), summary.get("win_rate")
    if kl:
        print(f"  KL to the SFT model: {kl['kl']:.3f} nats per completion on {kl['prompts']} held-out prompts")
    if w:
        print(f"  reward-model win rate against the SFT model: {w['win_rate']:.1%} "
              f"[{w['ci'][0]:.1%}, {w['ci'][1]:.1%}]")
    _print_tasks(summary)
    print(f"report: {Path(recipe.out) / 'report.md'}")
