"""Reward models: the transformer with a scalar head, trained on preference pairs with the
Bradley-Terry loss; `llmkit align reward`.

    llmkit align reward --model runs/sft --data prefs.jsonl --out runs/rm
    rm = load_reward_model("runs/rm/model"); rm.score_texts(tokenizer, [(prompt, answer), ...])

The head reads the final hidden state of each sequence's last real token (right padding), as
Hugging Face's `*ForSequenceClassification` with ``num_labels=1`` does, and the checkpoint is
written in that layout (`score.weight`), so `AutoModelForSequenceClassification` loads it too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file
from torch import nn

from ..data.instruct import encode_conversation
from ..models.hf import _load, config_to_hf, state_dict_to_hf
from ..models.transformer import Transformer
from ..peft import LoRAConfig, apply_lora, merge_and_unload, trainable_parameters
from ..train import distributed as D
from ..train.finetune import EvalSection, load_base, setting_up
from ..train.precision import autocast, choose_precision
from ..train.trainer import Trainer
from ..utils import atomic_path, write_json_atomic
from .dpo import AlignTrain, PrefDataSection, read_pairs, write_align_report
from .losses import bradley_terry_loss
from .prefs import PairExample, PairValidation, collate_pairs, encode_pairs, pair_loader

log = logging.getLogger(__name__)

_HF_CLASS = {"llama": "LlamaForSequenceClassification", "mistral": "MistralForSequenceClassification",
             "qwen2": "Qwen2ForSequenceClassification", "gpt2": "GPT2ForSequenceClassification"}


class RewardModel(nn.Module):
    """A decoder (``model``, the `Transformer`'s) and ``score``, a (dim -> 1) Linear read at the
    last real token."""

    def __init__(self, backbone: Transformer, score_weight: torch.Tensor | None = None, seed: int = 0):
        super().__init__()
        self.config = backbone.config
        self.model = backbone.model
        self.score = nn.Linear(self.config.dim, 1, bias=False, device=backbone.device)
        with torch.no_grad():
            if score_weight is not None:
                self.score.weight.copy_(score_weight)
            else:  # HF's initialisation of the head, seeded
                g = torch.Generator(device="cpu").manual_seed(seed)
                self.score.weight.copy_(torch.randn(self.score.weight.shape, generator=g) * self.config.init_std)

    @property
    def device(self) -> torch.device:
        return self.score.weight.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(batch,) rewards."""
        h = self.model(input_ids, attention_mask)
        last = (attention_mask.sum(-1) - 1) if attention_mask is not None else \
            torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
        picked = h[torch.arange(h.shape[0], device=h.device), last.long()]
        return self.score(picked.to(self.score.weight.dtype)).squeeze(-1).float()

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
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = rm.config
    ours = {f"model.{k}": v for k, v in rm.model.state_dict().items()}
    hf = state_dict_to_hf({**ours, "lm_head.weight": rm.score.weight}, cfg.replace(tie_embeddings=False))
    hf.pop("lm_head.weight")
    hf["score.weight"] = rm.score.weight
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in hf.items()}
    with atomic_path(path / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    config = config_to_hf(cfg, torch.float32)
    config.update({"architectures": [_HF_CLASS[cfg.family]], "num_labels": 1, "id2label": {"0": "LABEL_0"},
                   "label2id": {"LABEL_0": 0}})
    if config.get("pad_token_id") is None:  # HF finds the last real token by the pad id
        config["pad_token_id"] = cfg.eos_token_id if cfg.eos_token_id is not None else 0
    write_json_atomic(path / "config.json", config)
    if tokenizer is not None:
        tokenizer.save(path)
    return path


def load_reward_model(path: str | os.PathLike, device: str | torch.device | None = None) -> RewardModel:
    backbone, score = _load(Path(path), device, torch.float32, score=True)
    return RewardModel(backbone, score_weight=score).eval()


# ---------------------------------------------------------------------------------- training
class RewardObjective:
    """Bradley-Terry on a batch of 2B rows (B chosen, then B rejected; `collate_pairs(full=True)`)."""

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        r = model(batch["input_ids"], batch["attention_mask"])
        b = r.shape[0] // 2
        margin = r[:b] - r[b:]
        return bradley_terry_loss(r[:b], r[b:]).mean(), {"reward/margin": margin.mean().detach(),
                                                        "reward/accuracy": (margin > 0).float().mean()}

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())


@torch.no_grad()
def pair_accuracy(model: RewardModel, examples: list[PairExample], pad_id: int, precision: str = "fp32",
                  batch_size: int = 16) -> dict[str, float]:
    """Held-out pairwise accuracy (chosen scored above rejected), mean margin and loss."""
    was = model.training
    model.eval()
    objective = RewardObjective()
    wins = margin = loss_sum = 0.0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = {k: v.to(model.device) for k, v in collate_pairs(chunk, pad_id, full=True).items()}
        with autocast(precision, model.device):
            loss, m = objective.loss(model, batch)
        wins += float(m["reward/accuracy"]) * len(chunk)
        margin += float(m["reward/margin"]) * len(chunk)
        loss_sum += float(loss) * len(chunk)
    model.train(was)
    n = max(1, len(examples))
    return {"accuracy": wins / n, "margin": margin / n, "loss": loss_sum / n, "pairs": len(examples)}


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


DEFAULT_LR = {"full": 5e-5, "lora": 5e-4}


def reward(recipe: RewardRecipe, resume: bool = False) -> dict[str, Any]:
    """Train (or resume) a reward model; returns its summary (also in RUN/summary.json)."""
    info = D.init_distributed(recipe.train.device)
    run_dir = Path(recipe.out)
    train_cfg = dataclasses.replace(recipe.train, lr=recipe.train.lr or DEFAULT_LR[recipe.method])
    with setting_up(run_dir, resume, info, recipe):
        base_path, backbone, tokenizer = load_base(recipe)
        train_pairs, val_pairs, data_info = read_pairs(recipe, train_cfg.seed)
        max_len = min(recipe.data.max_len, backbone.config.context_window)
        train_ex, dropped = encode_pairs(tokenizer, train_pairs, max_len - 1)
        val_ex, _ = encode_pairs(tokenizer, val_pairs, max_len - 1)
        if not train_ex:
            raise ValueError(f"no training pair fits within data.max_len={max_len} tokens")
    data_info["dropped_too_long"] = dropped
    pad = tokenizer.padding_id
    model = RewardModel(backbone.to(info.device), seed=train_cfg.seed)
    precision = choose_precision(train_cfg.precision, info.device)
    before = pair_accuracy(model, val_ex, pad, precision) if val_ex else {}
    if recipe.method == "lora":
        torch.manual_seed(train_cfg.seed)
        apply_lora(model, recipe.lora)
        model.score.requires_grad_(True)
    report = trainable_parameters(model)
    loader = pair_loader(train_ex, train_cfg.micro_batch, pad, seed=train_cfg.seed, rank=info.rank,
                         world_size=info.world_size, full=True)
    compat = {"model": model.config.to_dict(), "method": recipe.method, "max_len": max_len, "kind": "reward"}
    trainer = Trainer(model, RewardObjective(), loader, train_cfg, run_dir,
                      val_data=PairValidation(val_ex, pad, full=True), compat=compat, info=info)
    summary = trainer.fit(resume=resume)
    final = D.unwrap(trainer.base_model).eval()
    summary.update({"method": recipe.method, "lr": train_cfg.lr, "data": data_info,
                    "trainable": {"trainable": report.trainable, "total": report.total, "percent": report.percent}})
    if info.is_main:
        summary["before"], summary["after"] = {}, {}
        summary["preferences_before"] = before
        summary["preferences"] = pair_accuracy(final, val_ex, pad, precision) if val_ex else {}
        if recipe.method == "lora":
            final = merge_and_unload(final)
        save_reward_model(final, run_dir / "model", tokenizer)
        write_json_atomic(run_dir / "summary.json", summary)
        write_align_report(run_dir, f"Reward model {run_dir.name} ({recipe.method})", recipe, summary)
    D.barrier()
    return summary
