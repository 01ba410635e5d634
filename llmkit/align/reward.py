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
from safetensors.torch import save_file
from torch import nn

from ..data.instruct import encode_conversation
from ..models.hf import _load, config_to_hf, state_dict_to_hf
from ..models.transformer import Transformer
from ..utils import atomic_path, write_json_atomic
from .losses import bradley_terry_loss

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
