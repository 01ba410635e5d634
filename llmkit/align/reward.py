"""Reward models: the transformer with a scalar head, trained on preference pairs with the
Bradley-Terry loss (`RewardObjective`; the job is `llmkit.pipelines.reward`, `llmkit align reward`).

    rm = load_reward_model("runs/rm/model"); rm.score_texts(tokenizer, [(prompt, answer), ...])

The head reads the final hidden state of each sequence's last real token (right padding), as
Hugging Face's `*ForSequenceClassification` with ``num_labels=1`` does, and the checkpoint is
written in that layout (`score.weight`), so `AutoModelForSequenceClassification` loads it too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..data.instruct import encode_conversation
from ..models.classifier import Classifier, save_classifier
from ..models.hf import CheckpointError, _load
from ..models.transformer import Transformer
from .losses import bradley_terry_loss

log = logging.getLogger(__name__)


class RewardModel(Classifier):
    """A `Classifier` with one label: ``model`` (the body) and ``score``, a (dim -> 1) Linear read
    at the last real token; its forward gives (batch,) rewards."""

    def __init__(self, backbone: Transformer, score_weight: torch.Tensor | None = None, seed: int = 0,
                 head: dict[str, torch.Tensor] | None = None):
        if score_weight is not None:
            head = {"weight": score_weight}
        super().__init__(backbone, num_labels=1, head=head, seed=seed)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(batch,) rewards."""
        return super().forward(input_ids, attention_mask).squeeze(-1)

    @torch.no_grad()
    def score_texts(self, tokenizer, items: Sequence[tuple[str, str]], batch_size: int = 16) -> list[float]:
        """Rewards of (prompt, answer) pairs, rendered with the chat template as in training."""
        was = self.training
        self.eval()
        out: list[float] = []
        for start in range(0, len(items), batch_size):
            rows = [encode_conversation(tokenizer, [{"role": "user", "content": p},
                                                    {"role": "assistant", "content": a}])[0]
                    for p, a in items[start:start + batch_size]]
            width = max(len(r) for r in rows)
            pad = tokenizer.padding_id
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
            out.extend(self(ids, mask).tolist())
        self.train(was)
        return out


def save_reward_model(rm: RewardModel, path: str | os.PathLike, tokenizer=None) -> Path:
    """Write `rm` as an HF `*ForSequenceClassification` (num_labels=1) directory (one shard)."""
    return save_classifier(rm, path, tokenizer)


def load_reward_model(path: str | os.PathLike, device: str | torch.device | None = None) -> RewardModel:
    backbone, head = _load(Path(path), device, torch.float32, score=True)
    if head["weight"].shape[0] != 1:
        raise CheckpointError(f"{path} is a classifier with {head['weight'].shape[0]} labels, not a reward model "
                              "(one score): load it with llmkit.models.load_classifier")
    return RewardModel(backbone, head=head).eval()


# ---------------------------------------------------------------------------------- training
class RewardObjective:
    """Bradley-Terry on a batch of 2B rows (B chosen, then B rejected; `collate_pairs(full=True)`)."""

    accuracy_key, margin_key = "reward/accuracy", "reward/margin"  # what `pair_accuracy` reads

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        r = model(batch["input_ids"], batch["attention_mask"])
        b = r.shape[0] // 2
        margin = r[:b] - r[b:]
        return bradley_terry_loss(r[:b], r[b:]).mean(), {"reward/margin": margin.mean().detach(),
                                                        "reward/accuracy": (margin > 0).float().mean()}

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[0] // 2  # the loss is the mean over pairs
