"""AdamW with the usual parameter groups (the learning-rate schedules are in `schedule`)."""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on norms, biases or embeddings."""
    decay, no_decay = [], []
    seen: set[int] = set()
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.ndim < 2 or id(p) in embedding_params or "norm" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1, betas=(0.9, 0.95),
                    eps: float = 1e-8) -> torch.optim.AdamW:
    params = list(model.parameters())
    # the fused kernel (CUDA, and CPU since torch 2.4) is ~3x faster than the per-tensor loops;
    # sharded DTensor parameters (FSDP) take the default implementation
    fused = all(p.device.type in ("cuda", "cpu") and p.is_floating_point() and type(p).__name__ != "DTensor"
                and not hasattr(p, "_local_tensor") for p in params)
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps,
                             fused=fused or None)
