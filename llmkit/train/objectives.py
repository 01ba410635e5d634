"""Objectives: what a training step minimises. The Trainer loop never changes; an objective is
``loss(model, batch) -> (loss, metrics)`` where `loss` is a scalar tensor averaged over the
batch's items and `metrics` holds extra numbers to log (plain floats or 0-dim tensors).

Here: next-token prediction (`CausalLM`, pretraining and SFT alike: SFT labels mask everything
but the assistant's turns). The alignment objectives (reward model, DPO, PPO/GRPO) live in
`llmkit.align` and follow the same protocol.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ..models.loss import IGNORE_INDEX, cross_entropy
from ..models.transformer import Transformer


def _fuses_loss(model: torch.nn.Module) -> bool:
    """Whether `model` (perhaps inside DDP / torch.compile wrappers) is a `Transformer`, whose
    forward takes `labels`."""
    for _ in range(4):
        if isinstance(model, Transformer):
            return True
        model = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if model is None:
            return False
    return False


class Objective(Protocol):
    """What the Trainer minimises. An objective may also define ``units(batch) -> int``, how many
    items `loss` averages over (target tokens, pairs): the Trainer then weights micro-batches and
    ranks by it, so that a step minimises the mean over its whole global batch however the batch is
    split; without it micro-batches weigh the same."""

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]: ...

    def tokens(self, batch: Any) -> int:
        """How many tokens of `batch` count towards throughput (tokens/s, MFU)."""
        ...


class CausalLM:
    """Next-token prediction. A batch is either a LongTensor (batch, seq+1) of packed tokens,
    inputs ``[:, :-1]`` and targets ``[:, 1:]``, or a dict with ``input_ids`` and ``labels``
    (labels already aligned with inputs; ``-100`` marks positions that do not count) and an
    optional ``attention_mask`` or ``segment_ids`` (packed examples)."""

    def split(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if isinstance(batch, torch.Tensor):
            return batch[:, :-1], batch[:, 1:], None
        ids, labels = batch["input_ids"], batch["labels"]
        return ids, labels, batch.get("attention_mask")

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        inputs, targets, mask = self.split(batch)
        kwargs = {}
        if mask is not None:
            kwargs["attention_mask"] = mask
        if isinstance(batch, dict) and batch.get("segment_ids") is not None:
            kwargs["segment_ids"] = batch["segment_ids"]  # packed examples
        if _fuses_loss(model):  # the model's own head + loss, without the (tokens, vocab) logits
            return model(inputs, labels=targets, **kwargs), {}
        return cross_entropy(model(inputs, **kwargs), targets), {}

    def tokens(self, batch: Any) -> int:
        _, targets, _ = self.split(batch)
        return int((targets != IGNORE_INDEX).sum()) if not isinstance(batch, torch.Tensor) else targets.numel()

    units = tokens  # the loss is the mean over target tokens
