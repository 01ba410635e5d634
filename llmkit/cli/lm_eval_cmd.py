"""`llmkit lm-eval ARGS`: lm-eval's own command line with the `llmkit` backend registered.

lm-eval 0.4.13 finds backends only in its own registry, so this imports ours and hands the
arguments to lm-eval unchanged, adding `--model llmkit` when no --model is given.
"""

from __future__ import annotations

import sys

HELP = """usage: llmkit lm-eval [lm-eval arguments]

Runs lm-eval's command line with llmkit's backend registered as `llmkit` (the default --model):

  llmkit lm-eval --model_args pretrained=runs/quickstart --tasks hellaswag --batch_size 16
  llmkit lm-eval --model_args pretrained=DIR,max_length=512 --tasks mytask --include_path my_tasks/
  llmkit lm-eval run --help        # every lm-eval option

model_args of the llmkit backend: pretrained (any llmkit model name), batch_size, max_length,
max_gen_toks, device, dtype, add_bos_token. Offline: set HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
and use local task YAMLs (dataset_path: json, dataset_kwargs.data_files).
"""


def run(argv: list[str]) -> int:
    if argv in ([], ["-h"], ["--help"]):
        print(HELP)
        return 0
    try:
        from lm_eval.__main__ import cli_evaluate

        from ..eval import lm_eval_backend  # noqa: F401  (registers the backend)
    except ImportError as e:
        print(f"llmkit lm-eval: error: {e}. Install it with: pip install 'lm-eval>=0.4.8'", file=sys.stderr)
        return 2
    args = list(argv)
    subcommands = ("run", "ls", "validate")
    if "--model" not in args and not any(a.startswith("--model=") for a in args) and not (
            args and args[0] in ("ls", "validate")) and not any(a in ("-h", "--help") for a in args):
        args += ["--model", "llmkit"]
    if args and args[0] not in subcommands and not args[0].startswith("-h"):
        args.insert(0, "run")
    saved = sys.argv
    sys.argv = ["lm-eval", *args]
    try:
        cli_evaluate()
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    finally:
        sys.argv = saved
    return 0
