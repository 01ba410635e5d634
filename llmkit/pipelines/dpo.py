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
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence


from ..align.dpo import DPOObjective, attach_reference_logps, disable_dropout
from ..align.losses import DPO_LOSSES
from ..align.measure import pair_accuracy
from ..align.prefs import (Pair, PairValidation, builtin_pref_tasks, builtin_preferences, encode_pairs, pair_loader,
                           read_preferences)
from ..data.instruct import is_builtin, split_validation
from ..peft import LoRAConfig
from ..train.precision import choose_precision
from ..train.trainer import Trainer
from .finetune import FinetuneTrain
from .job import EvalSection, Job, eval_tasks, rebuild_with_method
from .report import task_table

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


def read_pairs(recipe: Any, seed: int) -> tuple[list[Pair], list[Pair], dict[str, Any]]:
    """(training pairs, held-out pairs, counts) of the recipe's `data` section."""
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


def pair_rows(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """The report rows of a job trained on preference pairs."""
    d = summary["data"]
    return [("training pairs", d["train"]), ("validation pairs", d["val"]),
            ("identical pairs skipped", d["identical_skipped"]), ("bad rows skipped", d["bad_rows"]),
            ("pairs too long", d["dropped_too_long"])]


def preference_section(summary: dict[str, Any]) -> list[str]:
    """How often held-out pairs are ranked right after training (and before, when measured)."""
    prefs = summary.get("preferences")
    if not prefs:
        return []
    start = summary.get("preferences_before")
    was = (f"{start['accuracy']:.1%}, margin {start['margin']:.3f}, loss {start['loss']:.4f} before training"
           if start else "margin 0 and loss log 2 = 0.6931 at the start")
    return ["## Held-out preference pairs", "",
            f"The {'reward' if start else 'implicit reward'} ranks the chosen answer first in "
            f"{prefs['accuracy']:.1%} of {prefs['pairs']} held-out pairs (mean margin {prefs['margin']:.3f}, "
            f"loss {prefs['loss']:.4f}; {was}).", ""]


def dpo(recipe: DPORecipe, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Run (or resume) a DPO / IPO job; returns its summary (also in RUN/summary.json)."""
    job = Job(recipe, resume, DEFAULT_LR, callbacks)
    cfg = job.train
    with job.setting_up():
        model, tokenizer = job.load_base(decoder_job="DPO")
        train_pairs, val_pairs, data_info = read_pairs(recipe, cfg.seed)
        max_len = min(recipe.data.max_len, model.config.context_window - 1)
        train_ex, dropped = encode_pairs(tokenizer, train_pairs, max_len)
        val_ex, _ = encode_pairs(tokenizer, val_pairs, max_len)
        if not train_ex:
            raise ValueError(f"no training pair fits within data.max_len={max_len} tokens")
        tasks = eval_tasks(recipe.eval, recipe.data.path, builtin_pref_tasks)
    data_info["dropped_too_long"] = dropped
    pad = tokenizer.padding_id
    model.to(job.info.device)
    average = recipe.loss == "ipo"
    precision = choose_precision(cfg.precision, job.info.device)
    disable_dropout(model)
    reference = None
    log.info("scoring %d + %d pairs with the reference model", len(train_ex), len(val_ex))
    attach_reference_logps(model, val_ex, pad, average, precision)  # held-out pairs are always scored once
    if recipe.precompute_ref:
        attach_reference_logps(model, train_ex, pad, average, precision)
    else:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    objective = DPOObjective(recipe.beta, recipe.loss, recipe.label_smoothing, reference, recipe.sft_weight)
    before = job.evaluate_before(model, tokenizer, tasks)
    job.apply_method(model, tokenizer)
    loader = pair_loader(train_ex, cfg.micro_batch, pad, seed=cfg.seed, rank=job.info.rank,
                         world_size=job.info.world_size)
    compat = {"model": model.config.to_dict(), "method": recipe.method, "max_len": max_len, "loss": recipe.loss}
    trainer = Trainer(model, objective, loader, cfg, job.run_dir, val_data=PairValidation(val_ex, pad),
                      compat=compat, info=job.info, callbacks=job.callbacks)
    summary = job.fit(trainer)
    summary.update({"beta": recipe.beta, "loss": recipe.loss, "data": data_info})
    final = job.final_model(trainer, lambda: rebuild_with_method(model.config, recipe, tokenizer))
    if job.is_main:
        summary["preferences"] = pair_accuracy(objective, final, val_ex, pad, precision) if val_ex else {}
        job.evaluate_after(final, tokenizer, tasks, before, summary)
    return job.finish(summary, f"DPO run {job.run_dir.name} ({recipe.loss}, {recipe.method})", pair_rows(summary),
                      [preference_section(summary), task_table(summary, "Held-out tasks (test split, chat prompts)")],
                      save=lambda: job.save_model(final, tokenizer))


__all__ = ["AlignTrain", "DPORecipe", "PrefDataSection", "dpo", "read_pairs"]
