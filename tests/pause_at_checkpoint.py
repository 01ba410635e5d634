"""Run an llmkit training verb as the CLI would, but pause after each checkpoint (a Trainer
callback), so that a test can kill -9 the process at a known point:

    python tests/pause_at_checkpoint.py SECONDS finetune --model ... --out RUN
"""

from __future__ import annotations

import sys
import time

from llmkit.cli import commands
from llmkit.cli.main import build_parser


class Pause:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_checkpoint(self, trainer, step, path):
        time.sleep(self.seconds)


def main(argv: list[str]) -> None:
    seconds, verb, rest = float(argv[0]), argv[1], argv[2:]
    args, extra = build_parser().parse_known_args([verb, *rest])
    args.overrides = list(args.overrides) + extra
    if verb == "pretrain":
        from llmkit.pipelines.pretrain import pretrain as job
    elif verb == "finetune":
        from llmkit.pipelines.finetune import finetune as job
    else:
        raise SystemExit(f"no pause runner for {verb}")
    recipe = getattr(commands, f"{verb}_recipe")(args)
    job(recipe, resume=args.resume, callbacks=[Pause(seconds)])


if __name__ == "__main__":
    main(sys.argv[1:])
