"""`llmkit align dpo`: Direct Preference Optimisation (and IPO) on the one Trainer.

    llmkit align dpo --model runs/sft --data prefs.jsonl --out runs/dpo beta=0.1      # loss=ipo for IPO
    llmkit align dpo --model runs/sft --data builtin --method lora --out runs/dpo     # the embedded pairs

The reference is the starting model, frozen. Its log-probabilities of every pair are computed
once before training (`precompute_ref`, the default: no second model in memory and no second
forward per step); `precompute_ref=false` keeps a frozen copy and scores each batch with it.
The run dir is a fine-tuning run dir: metrics.jsonl (loss, implicit rewards of the chosen and
rejected answers, their margin and how often it is positive), report.md, summary.json, and the
result in `model/` (and `adapter/` for LoRA / QLoRA).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.instruct import IGNORE_INDEX, is_builtin, split_validation
from ..peft import LoRAConfig, trainable_parameters
from ..train import distributed as D
from ..train.finetune import (EvalSection, FinetuneTrain, apply_method, held_out, held_out_change, load_base,
                              save_result, setting_up)
from ..train.precision import autocast, choose_precision
from ..train.trainer import Trainer
from ..utils import write_json_atomic, write_text_atomic
from .losses import DPO_LOSSES, dpo_loss, sequence_logps
from .prefs import (Pair, PairExample, PairValidation, builtin_pref_tasks, builtin_preferences,
                    collate_pairs, encode_pairs, pair_loader, read_preferences)

log = logging.getLogger(__name__)

ALIGN_METHODS = ("full", "lora", "qlora")
DEFAULT_LR = {"full": 5e-5, "lora": 5e-4, "qlora": 5e-4}


@dataclass
class PrefDataSection:
    path: str = "builtin"  # preference JSONL, or builtin[:arith,sorting,...] (the embedded pairs)
    val_path: str | None = None  # held-out pairs; default: builtin's dev split, or val_fraction of the file
    val_fraction: float = 0.05
    max_len: int = 256  # tokens per side (prompt + answer); pairs with no room for the answer are dropped
    skip_bad_rows: bool = False


@dataclass
class AlignTrain(FinetuneTrain):
    steps: int = 200
    micro_batch: int = 8  # pairs per forward (each is two sequences)


@dataclass
class DPORecipe:
    model: str = ""  # the starting (SFT) model, also the frozen reference
    method: str = "full"  # full | lora | qlora
    data: PrefDataSection = field(default_factory=PrefDataSection)
    beta: float = 0.1  # strength of the pull towards the reference (higher: stay closer)
    loss: str = "sigmoid"  # sigmoid (DPO) | ipo
    label_smoothing: float = 0.0  # conservative DPO: the chance a label is flipped
    sft_weight: float = 0.0  # RPO: + this times the chosen answers' NLL, so their likelihood cannot sink (1.0 in the paper)
    precompute_ref: bool = True  # reference log-probs once, before training
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    qlora_double_quant: bool = True
    eval: EvalSection = field(default_factory=EvalSection)
    train: AlignTrain = field(default_factory=AlignTrain)
    out: str = "runs/dpo"

    def __post_init__(self) -> None:
        if self.method not in ALIGN_METHODS:
            raise ValueError(f"method={self.method!r}: alignment runs with {', '.join(ALIGN_METHODS)}")
        if self.loss not in DPO_LOSSES:
            raise ValueError(f"loss={self.loss!r} is not known: use one of {', '.join(DPO_LOSSES)}")
        if self.beta <= 0:
            raise ValueError(f"beta={self.beta} must be positive (0.1 is usual)")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing={self.label_smoothing} must be in [0, 0.5)")
        if self.sft_weight < 0:
            raise ValueError(f"sft_weight={self.sft_weight} must be 0 or more (1.0 for RPO)")


class DPOObjective:
    """The Trainer objective: a batch of 2B rows (B chosen, then B rejected; see `collate_pairs`)
    with ``ref_logps`` precomputed, or a frozen `reference` model that scores it."""

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


@torch.no_grad()
def preference_accuracy(objective: DPOObjective, model: torch.nn.Module, examples: list[PairExample],
                        pad_id: int, precision: str = "fp32", batch_size: int = 16) -> dict[str, float]:
    """On held-out pairs: how often the implicit reward ranks the chosen answer higher, the mean
    margin, and the DPO loss (scored at the `precision` their reference log-probs were)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    wins = total = 0
    margin_sum = loss_sum = 0.0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id).items()}
        with autocast(precision, device):
            loss, m = objective.loss(model, batch)
        wins += float(m["rewards/accuracy"]) * len(chunk)
        margin_sum += float(m["rewards/margin"]) * len(chunk)
        loss_sum += float(loss) * len(chunk)
        total += len(chunk)
    model.train(was)
    return {"accuracy": wins / total, "margin": margin_sum / total, "loss": loss_sum / total, "pairs": total}


def read_pairs(recipe: DPORecipe, seed: int) -> tuple[list[Pair], list[Pair], dict[str, Any]]:
    d = recipe.data
    train, stats = read_preferences(d.path, d.skip_bad_rows)
    if d.val_path:
        val, _ = read_preferences(d.val_path, d.skip_bad_rows)
    elif is_builtin(d.path):
        val = builtin_preferences("dev", builtin_pref_tasks(d.path))
    else:
        train, val = split_validation(train, d.val_fraction, seed)
    info = {"train": len(train), "val": len(val), "identical_skipped": stats.identical,
            "bad_rows": len(stats.bad or []), "bad": [str(b) for b in (stats.bad or [])[:50]]}
    return train, val, info


def eval_tasks(recipe: DPORecipe) -> list[str]:
    if recipe.eval.tasks is not None:
        return list(recipe.eval.tasks)
    d = recipe.data.path
    return list(builtin_pref_tasks(d)) if is_builtin(d) else []


def dpo(recipe: DPORecipe, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) a DPO / IPO job; returns its summary (also in RUN/summary.json)."""
    info = D.init_distributed(recipe.train.device)
    run_dir = Path(recipe.out)
    train_cfg = dataclasses.replace(recipe.train, lr=recipe.train.lr or DEFAULT_LR[recipe.method])
    with setting_up(run_dir, resume, info, recipe):
        base_path, model, tokenizer = load_base(recipe)
        train_pairs, val_pairs, data_info = read_pairs(recipe, train_cfg.seed)
        max_len = min(recipe.data.max_len, model.config.context_window - 1)
        train_ex, dropped = encode_pairs(tokenizer, train_pairs, max_len)
        val_ex, _ = encode_pairs(tokenizer, val_pairs, max_len)
        if not train_ex:
            raise ValueError(f"no training pair fits within data.max_len={max_len} tokens")
        tasks = eval_tasks(recipe)
    data_info["dropped_too_long"] = dropped
    pad = tokenizer.padding_id
    device = info.device
    model.to(device)
    average = recipe.loss == "ipo"
    precision = choose_precision(train_cfg.precision, device)
    disable_dropout(model)
    reference = None
    log.info("scoring %d + %d pairs with the reference model", len(train_ex), len(val_ex))
    attach_reference_logps(model, val_ex, pad, average, precision)  # held-out pairs are always scored once
    if recipe.precompute_ref:
        attach_reference_logps(model, train_ex, pad, average, precision)
    else:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    objective = DPOObjective(recipe.beta, recipe.loss, recipe.label_smoothing, reference, recipe.sft_weight)
    before = held_out(model, tokenizer, tasks, recipe) if info.is_main else {}
    torch.manual_seed(train_cfg.seed)
    apply_method(model, recipe, tokenizer)
    report = trainable_parameters(model)
    loader = pair_loader(train_ex, train_cfg.micro_batch, pad, seed=train_cfg.seed, rank=info.rank,
                         world_size=info.world_size)
    compat = {"model": model.config.to_dict(), "method": recipe.method, "max_len": max_len, "loss": recipe.loss}
    trainer = Trainer(model, objective, loader, train_cfg, run_dir, val_data=PairValidation(val_ex, pad),
                      compat=compat, info=info)
    summary = trainer.fit(resume=resume)
    final = D.unwrap(trainer.base_model).eval()
    summary.update({"method": recipe.method, "lr": train_cfg.lr, "beta": recipe.beta, "loss": recipe.loss,
                    "trainable": {"trainable": report.trainable, "total": report.total, "percent": report.percent},
                    "data": data_info})
    if info.is_main:
        summary["preferences"] = preference_accuracy(objective, final, val_ex, pad, precision) if val_ex else {}
        summary["before"] = before
        summary["after"] = held_out(final, tokenizer, tasks, recipe)
        summary["change"] = held_out_change(before, summary["after"], train_cfg.seed)
        save_result(final, tokenizer, recipe, base_path, run_dir)
        write_json_atomic(run_dir / "summary.json", summary)
        write_align_report(run_dir, f"DPO run {run_dir.name} ({recipe.loss}, {recipe.method})", recipe, summary)
    D.barrier()
    return summary


def write_align_report(run_dir: Path, title: str, recipe: Any, summary: dict[str, Any]) -> None:
    from ..train.report import write_report

    t = summary["trainable"]
    d = summary["data"]
    extra = [("method", recipe.method), ("starting model", str(recipe.model)),
             ("trainable parameters", f"{t['trainable']:,} of {t['total']:,} ({t['percent']:.3f}%)"),
             ("training pairs", d["train"]), ("validation pairs", d["val"]),
             ("identical pairs skipped", d["identical_skipped"]), ("bad rows skipped", d["bad_rows"]),
             ("pairs too long", d["dropped_too_long"])]
    write_report(run_dir, title, summary, extra)
    lines = []
    prefs = summary.get("preferences")
    if prefs:
        start = summary.get("preferences_before")
        was = (f"{start['accuracy']:.1%}, margin {start['margin']:.3f}, loss {start['loss']:.4f} before training"
               if start else "margin 0 and loss log 2 = 0.6931 at the start")
        lines += ["", "## Held-out preference pairs", "",
                  f"The {'reward' if start else 'implicit reward'} ranks the chosen answer first in "
                  f"{prefs['accuracy']:.1%} of {prefs['pairs']} held-out pairs (mean margin {prefs['margin']:.3f}, "
                  f"loss {prefs['loss']:.4f}; {was}).", ""]
    lines += task_table(summary)
    report = run_dir / "report.md"
    write_text_atomic(report, report.read_text(encoding="utf-8") + "\n".join(lines))


def task_table(summary: dict[str, Any]) -> list[str]:
    """The held-out task scores before and after, with the interval after, as markdown lines."""
    after, before = summary.get("after", {}), summary.get("before", {})
    if not after:
        return []
    lines = ["## Held-out tasks (test split, chat prompts)", "", "| task | metric | before | 95% CI before | after | "
             "95% CI after |", "|---|---|---|---|---|---|"]
    for name, a in after.items():
        b = before.get(name, {})
        was = f"{b['value']:.4g} | [{b['ci'][0]:.3g}, {b['ci'][1]:.3g}]" if b else " | "
        lines.append(f"| {name} | {a['metric']} | {was} | {a['value']:.4g} | [{a['ci'][0]:.3g}, {a['ci'][1]:.3g}] |")
    return lines + [""]
