"""DPO (and IPO) as a Trainer objective: the loss of `llmkit.align.losses.dpo_loss` on batches of
preference pairs, against reference log-probabilities computed once before training
(`attach_reference_logps`: no second model in memory, no second forward per step) or by a frozen
reference model on the fly. The job itself is `llmkit.pipelines.dpo`."""

from __future__ import annotations

from typing import Any

import torch

from ..models.loss import IGNORE_INDEX
from ..train.precision import autocast
from .losses import dpo_loss, sequence_logps
from .prefs import PairExample, collate_pairs


class DPOObjective:
    """The Trainer objective: a batch of 2B rows (B chosen, then B rejected; see `collate_pairs`)
    with ``ref_logps`` precomputed, or a frozen `reference` model that scores it."""

    accuracy_key, margin_key = "rewards/accuracy", "rewards/margin"  # what `pair_accuracy` reads

    def __init__(self, beta: float = 0.1, loss: str = "sigmoid", label_smoothing: float = 0.0,
                 reference: torch.nn.Module | None = None, sft_weight: float = 0.0):
        self.beta, self.kind, self.label_smoothing, self.reference = beta, loss, label_smoothing, reference
        self.sft_weight = sft_weight

    def logps(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each row's log-probability of its answer (mean per token for IPO, as trl)."""
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])
        return sequence_logps(logits, batch["labels"], average=self.kind == "ipo")

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        lp = self.logps(model, batch)
        if "ref_logps" in batch:
            ref = batch["ref_logps"].to(lp.dtype)
        elif self.reference is not None:
            with torch.no_grad():
                ref = self.logps(self.reference, batch)
        else:
            raise ValueError("DPO needs reference log-probs: precompute them (ref_logps) or give a reference model")
        b = lp.shape[0] // 2
        out = dpo_loss(lp[:b], lp[b:], ref[:b], ref[b:], beta=self.beta, loss=self.kind,
                       label_smoothing=self.label_smoothing)
        margin = out.chosen_rewards - out.rejected_rewards
        loss = out.loss.mean()
        extra: dict[str, Any] = {}
        if self.sft_weight:  # RPO: + the mean NLL per token of the chosen answers (trl's loss_type "sft")
            counts = (batch["labels"][:b] != IGNORE_INDEX).sum(-1)
            sums = lp[:b] * counts if self.kind == "ipo" else lp[:b]
            nll = -sums.sum() / counts.sum().clamp_min(1)
            loss = loss + self.sft_weight * nll
            extra["nll/chosen"] = nll.detach()
        return loss, {**extra, "rewards/chosen": out.chosen_rewards.mean(), "rewards/rejected":
                                 out.rejected_rewards.mean(), "rewards/margin": margin.mean(),
                                 "rewards/accuracy": (margin > 0).float().mean()}

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[0] // 2  # the loss is the mean over pairs


def disable_dropout(model: torch.nn.Module) -> None:
    """Policy and reference must score alike, so no dropout (trl's default too)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


@torch.no_grad()
def attach_reference_logps(model: torch.nn.Module, examples: list[PairExample], pad_id: int, average: bool,
                           precision: str = "fp32", batch_size: int = 16) -> None:
    """Score every pair with `model` (the reference) once and keep the log-probs on the examples.
    `precision` must be the training run's: the policy's log-probs at step 0 are then exactly
    these (bf16 autocast against an fp32 reference would start DPO off log 2)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    scorer = DPOObjective(loss="ipo" if average else "sigmoid")
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id).items()}
        with autocast(precision, device):
            lp = scorer.logps(model, batch).double().cpu()
        for i, e in enumerate(chunk):
            e.ref_chosen, e.ref_rejected = float(lp[i]), float(lp[len(chunk) + i])
    model.train(was)
