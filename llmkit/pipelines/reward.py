"""`llmkit align reward`: a reward model (the transformer with a scalar head, `llmkit.align.reward`)
trained on preference pairs with the Bradley-Terry loss.

    llmkit align reward --model runs/sft --data prefs.jsonl --out runs/rm

RUN/model is a Hugging Face `*ForSequenceClassification` directory (num_labels=1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..align.measure import pair_accuracy
from ..align.prefs import PairValidation, encode_pairs, pair_loader
from ..align.reward import RewardModel, RewardObjective, save_reward_model
from ..models.transformer import Transformer
from ..peft import LoRAConfig, merge_and_unload
from ..train.precision import choose_precision
from ..train.trainer import Trainer
from .dpo import AlignTrain, PrefDataSection, pair_rows, preference_section, read_pairs
from .job import EvalSection, Job, apply_method

DEFAULT_LR = {"full": 5e-5, "lora": 5e-4}


@dataclass
class RewardRecipe:
    model: str = ""  # the model the reward model starts from (usually the SFT model)
    method: str = "full"  # full | lora (the score head always trains)
    data: PrefDataSection = field(default_factory=PrefDataSection)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    eval: EvalSection = field(default_factory=lambda: EvalSection(tasks=[], perplexity=False))
    train: AlignTrain = field(default_factory=AlignTrain)
    out: str = "runs/rm"

    def __post_init__(self) -> None:
        if self.method not in ("full", "lora"):
            raise ValueError(f"method={self.method!r}: a reward model trains with full or lora")


def reward(recipe: RewardRecipe, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train (or resume) a reward model; returns its summary (also in RUN/summary.json)."""
    job = Job(recipe, resume, DEFAULT_LR, callbacks)
    cfg = job.train
    with job.setting_up():
        backbone, tokenizer = job.load_base(decoder_job="reward modelling")
        train_pairs, val_pairs, data_info = read_pairs(recipe, cfg.seed)
        max_len = min(recipe.data.max_len, backbone.config.context_window)
        train_ex, dropped = encode_pairs(tokenizer, train_pairs, max_len - 1)
        val_ex, _ = encode_pairs(tokenizer, val_pairs, max_len - 1)
        if not train_ex:
            raise ValueError(f"no training pair fits within data.max_len={max_len} tokens")
    data_info["dropped_too_long"] = dropped
    pad = tokenizer.padding_id
    model = RewardModel(backbone.to(job.info.device), seed=cfg.seed)
    objective = RewardObjective()
    precision = choose_precision(cfg.precision, job.info.device)
    before = pair_accuracy(objective, model, val_ex, pad, precision, full=True) if val_ex else {}
    job.apply_method(model, tokenizer)
    model.score.requires_grad_(True)  # the head always trains, LoRA or not
    loader = pair_loader(train_ex, cfg.micro_batch, pad, seed=cfg.seed, rank=job.info.rank,
                         world_size=job.info.world_size, full=True)
    compat = {"model": model.config.to_dict(), "method": recipe.method, "max_len": max_len, "kind": "reward"}
    trainer = Trainer(model, objective, loader, cfg, job.run_dir, val_data=PairValidation(val_ex, pad, full=True),
                      compat=compat, info=job.info, callbacks=job.callbacks)
    summary = job.fit(trainer)
    summary["data"] = data_info
    final = job.final_model(trainer, lambda: _rebuild(model.config, recipe, tokenizer))
    if job.is_main:
        summary["before"], summary["after"] = {}, {}
        summary["preferences_before"] = before
        summary["preferences"] = pair_accuracy(objective, final, val_ex, pad, precision, full=True) if val_ex else {}

    def save() -> None:
        save_reward_model(merge_and_unload(final) if recipe.method == "lora" else final, job.run_dir / "model",
                          tokenizer)

    return job.finish(summary, f"Reward model {job.run_dir.name} ({recipe.method})", pair_rows(summary),
                      [preference_section(summary)], save=save)


def _rebuild(config, recipe: RewardRecipe, tokenizer) -> RewardModel:
    """The reward model's shape (a `rebuild_with_method` with a score head), for gathering FSDP shards into."""
    model = RewardModel(Transformer(config))
    apply_method(model, recipe, tokenizer)
    return model


__all__ = ["RewardRecipe", "reward"]
