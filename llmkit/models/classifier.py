"""`Classifier`: a transformer's body with one classification head, for every family.

The same module is the reward model (one label, a decoder read at its last real token), a text
classifier (BERT read through its pooler at ``[CLS]``, or a decoder), and a token classifier
(a label per token). Its files are Hugging Face's ``*ForSequenceClassification`` /
``*ForTokenClassification`` layout, so ``transformers.AutoModelFor…Classification`` loads them:

    clf = Classifier(load_pretrained("runs/bert/model"), num_labels=2)
    save_classifier(clf, "runs/clf/model", tokenizer, labels=["negative", "positive"])
    llmkit.load("runs/clf").classify(["great film"])     # a LocalLLM over it, as any model is used
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file
from torch import nn

from ..utils import atomic_path, write_json_atomic
from .hf import CheckpointError, _config_json, _load, config_to_hf, state_dict_to_hf
from .texts import pad_right
from .transformer import Transformer

# family -> HF class name prefix; token classification is offered where the head has one name
_HF_PREFIX = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "gpt2": "GPT2", "bert": "Bert", "mixtral": "Mixtral",
              "qwen2_moe": "Qwen2Moe"}


class Classifier(nn.Module):
    """``model`` (the transformer's body) and ``score``, a (dim -> labels) Linear.

    A sequence is read where its family reads it: an encoder at its first token (``[CLS]``),
    through the pooler when it has one; a decoder at its last real token (right padding), as HF's
    ``*ForSequenceClassification`` does. `per_token` gives a label distribution per token instead."""

    def __init__(self, backbone: Transformer, num_labels: int = 2, per_token: bool = False,
                 labels: Sequence[str] | None = None, head: dict[str, torch.Tensor] | None = None, seed: int = 0):
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels={num_labels} must be at least 1")
        if labels is not None and len(labels) != num_labels:
            raise ValueError(f"{len(labels)} label names were given for num_labels={num_labels}: give one per label")
        self.config = backbone.config
        self.model = backbone.model
        self.per_token = per_token
        if self.config.is_encoder and not per_token and getattr(self.model, "pooler", None) is None:
            self._add_pooler(seed)
        self.labels = list(labels) if labels is not None else [f"LABEL_{i}" for i in range(num_labels)]
        bias = self.config.family == "bert"  # BERT's classifier has a bias, decoders' score does not
        self.score = nn.Linear(self.config.dim, num_labels, bias=bias, device=backbone.device)
        with torch.no_grad():
            if head is not None:
                self.score.weight.copy_(head["weight"])
                if bias:
                    self.score.bias.copy_(head.get("bias", torch.zeros(num_labels)))
            else:  # HF's initialisation of the head, seeded
                g = torch.Generator(device="cpu").manual_seed(seed)
                self.score.weight.copy_(torch.randn(self.score.weight.shape, generator=g) * self.config.init_std)
                if bias:
                    self.score.bias.zero_()

    def _add_pooler(self, seed: int) -> None:
        """A fresh BERT pooler for a body pretrained without one (transformers does the same)."""
        pooler = nn.Linear(self.config.dim, self.config.dim, device=self.model.embed_tokens.weight.device)
        with torch.no_grad():
            g = torch.Generator(device="cpu").manual_seed(seed + 1)
            pooler.weight.copy_(torch.randn(pooler.weight.shape, generator=g) * self.config.init_std)
            pooler.bias.zero_()
        self.model.pooler = pooler
        self.config = self.config.replace(pooler=True)
        self.model.config = self.config

    @property
    def num_labels(self) -> int:
        return self.score.out_features

    @property
    def device(self) -> torch.device:
        return self.score.weight.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch, labels), or (batch, seq, labels) per token; float32."""
        h = self.model(input_ids, attention_mask, token_type_ids=token_type_ids)
        if not self.per_token:
            if self.config.is_encoder:
                h = h[:, 0]
                if getattr(self.model, "pooler", None) is not None:
                    h = torch.tanh(self.model.pooler(h))
            else:
                last = (attention_mask.sum(-1) - 1) if attention_mask is not None else \
                    torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
                h = h[torch.arange(h.shape[0], device=h.device), last.long()]
        return self.score(h.to(self.score.weight.dtype)).float()

    @torch.no_grad()
    def classify_ids(self, rows: Sequence[Sequence[int]], pad_id: int, batch_size: int = 32) -> torch.Tensor:
        """Label probabilities (n, labels) of token-id rows, batched with right padding."""
        was = self.training
        self.eval()
        out = []
        for start in range(0, len(rows), batch_size):
            ids, mask = pad_right(rows[start:start + batch_size], pad_id, self.device)
            out.append(self(ids, mask).softmax(-1).cpu())
        self.train(was)
        return torch.cat(out) if out else torch.zeros(0, self.num_labels)


def save_classifier(clf: Classifier, path: str | os.PathLike, tokenizer=None,
                    extra_config: dict[str, Any] | None = None) -> Path:
    """Write `clf` as an HF ``*ForSequenceClassification`` / ``*ForTokenClassification`` directory."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = clf.config
    body = cfg.replace(head="none") if cfg.family == "bert" else cfg.replace(tie_embeddings=False)
    ours = {f"model.{k}": v for k, v in clf.model.state_dict().items()}
    ours.update({f"score.{k}": v for k, v in clf.score.state_dict().items()})
    hf = state_dict_to_hf(ours, body, prefix=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in hf.items()}
    with atomic_path(path / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    config = config_to_hf(body, torch.float32)
    kind = "TokenClassification" if clf.per_token else "SequenceClassification"
    if cfg.family not in _HF_PREFIX or (clf.per_token and cfg.family != "bert"):
        raise CheckpointError(f"family={cfg.family!r} has no HF *For{kind} class llmkit writes")
    config.update({"architectures": [f"{_HF_PREFIX[cfg.family]}For{kind}"], "num_labels": clf.num_labels,
                   "id2label": {str(i): n for i, n in enumerate(clf.labels)},
                   "label2id": {n: i for i, n in enumerate(clf.labels)}, **(extra_config or {})})
    if config.get("pad_token_id") is None:  # HF decoders find the last real token by the pad id
        config["pad_token_id"] = cfg.eos_token_id if cfg.eos_token_id is not None else 0
    write_json_atomic(path / "config.json", config)
    if tokenizer is not None:
        tokenizer.save(path)
    return path


def is_classifier_dir(path: str | os.PathLike) -> bool:
    """Whether an HF directory holds a *ForSequenceClassification / *ForTokenClassification model."""
    archs = (_config_json(Path(path)).get("architectures") or [""])
    return str(archs[0]).endswith(("ForSequenceClassification", "ForTokenClassification"))


def load_classifier(path: str | os.PathLike, device: str | torch.device | None = None,
                    dtype: str | torch.dtype | None = torch.float32) -> Classifier:
    """A `Classifier` from an HF classification directory (ours, or transformers')."""
    return load_classifier_parts(path, device, dtype)[1]


def load_classifier_parts(path: str | os.PathLike, device: str | torch.device | None = None,
                          dtype: str | torch.dtype | None = torch.float32) -> tuple[Transformer, Classifier]:
    """(the body as a `Transformer` without an output head, the `Classifier` over that same body)
    of an HF classification directory: `llmkit.load` embeds with the one and classifies with the other."""
    path = Path(path)
    if not is_classifier_dir(path):
        raise CheckpointError(f"{path} is not a classification model (config.json architectures should end in "
                              "ForSequenceClassification or ForTokenClassification)")
    config = _config_json(path)
    backbone, head = _load(path, device, dtype, score=True)
    id2label = config.get("id2label") or {}
    n = head["weight"].shape[0]
    labels = [id2label.get(str(i), f"LABEL_{i}") for i in range(n)]
    per_token = str(config["architectures"][0]).endswith("ForTokenClassification")
    return backbone, Classifier(backbone, n, per_token=per_token, labels=labels, head=head).eval()
