"""Fine-tuning all-MiniLM-L6-v2 on a shipped labelled set for the learned guards' tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit.pipelines.finetune import FinetuneRecipe, finetune
from llmkit.recipe import from_dict


def train_classifier(minilm: Any, data: str, out: Path, steps: int, max_len: int, **train: Any) -> dict[str, Any]:
    """`llmkit finetune --model all-minilm-l6-v2 --data DATA --method full objective=classify` with
    `steps` steps of 16 texts cut to `max_len` tokens (and any other `train.` settings): the report of its
    held-out test file."""
    recipe = from_dict(FinetuneRecipe, {
        "model": str(minilm.path), "method": "full", "objective": "classify",
        "data": {"path": data, "max_len": max_len},
        "train": {"steps": steps, "micro_batch": 16, "eval_every": 0, "save_every": 0, **train}, "out": str(out)})
    return finetune(recipe)["classify"]
