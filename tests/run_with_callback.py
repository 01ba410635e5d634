"""Run an llmkit training verb as the CLI would (its recipe from the same flags and overrides),
through the Python API with a Trainer callback, so that a test can watch a run from inside:

    python tests/run_with_callback.py pause=30 finetune --model ... --out RUN
    torchrun --nproc_per_node 2 tests/run_with_callback.py weights=1 align ppo --model ... --out RUN

Callbacks (CALLBACK=VALUE):
  pause=SECONDS  linger after each checkpoint (a test kills the process there: `kill_at_checkpoint`)
  weights=STEP   after step STEP, each rank writes its model's trainable weights to
                 RUN/rank{r}-step{STEP}.safetensors (tiny models: the whole tensors, not a checksum)
Verbs: pretrain, finetune, align dpo|reward|ppo|grpo.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


class Pause:
    def __init__(self, seconds: str):
        self.seconds = float(seconds)

    def on_checkpoint(self, trainer, step, path):
        time.sleep(self.seconds)


class SaveWeights:
    def __init__(self, step: str):
        self.step = int(step)

    def on_step(self, trainer, step, metrics):
        if step != self.step:
            return
        from safetensors.torch import save_file

        from llmkit.train.distributed import unwrap

        model = unwrap(trainer.model)
        weights = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
        out = Path(trainer.run_dir) / f"rank{trainer.info.rank}-step{step}.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(weights, str(out))


CALLBACKS = {"pause": Pause, "weights": SaveWeights}


def job_and_recipe(verb: list[str], args):
    """The job function of a training verb and its recipe, built from the parsed CLI arguments by
    the same functions the CLI uses."""
    from llmkit.cli import align_commands, commands

    if verb == ["pretrain"]:
        from llmkit.pipelines.pretrain import pretrain

        return pretrain, commands.pretrain_recipe(args)
    if verb == ["finetune"]:
        from llmkit.pipelines.finetune import finetune

        return finetune, commands.finetune_recipe(args)
    if verb == ["align", "dpo"]:
        from llmkit.pipelines.dpo import dpo

        return dpo, align_commands.dpo_recipe(args)
    if verb == ["align", "reward"]:
        from llmkit.pipelines.reward import RewardRecipe, reward

        return reward, commands.recipe_from_args(RewardRecipe, args)
    if verb in (["align", "ppo"], ["align", "grpo"]):
        from llmkit.pipelines.rl import GRPORecipe, PPORecipe, rl

        cls = PPORecipe if verb[1] == "ppo" else GRPORecipe
        return rl, commands.recipe_from_args(cls, args, data="prompts")
    raise SystemExit(f"run_with_callback: no runner for {' '.join(verb)}")


def main(argv: list[str]) -> None:
    from llmkit.cli.main import build_parser

    spec, argv = argv[0], argv[1:]
    name, _, value = spec.partition("=")
    if name not in CALLBACKS:
        raise SystemExit(f"run_with_callback: unknown callback {spec!r} (choose from {', '.join(CALLBACKS)})")
    verb = argv[:2] if argv[:1] == ["align"] else argv[:1]
    args, extra = build_parser().parse_known_args(argv)
    args.overrides = list(args.overrides) + extra
    job, recipe = job_and_recipe(verb, args)
    job(recipe, resume=args.resume, callbacks=[CALLBACKS[name](value)])


if __name__ == "__main__":
    main(sys.argv[1:])
