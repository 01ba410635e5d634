"""Per-token log-probabilities of target ids under a model's logits: the one function behind
prompt scoring and log-likelihood requests (llmkit.infer) and the policy and reference terms of
DPO, PPO and GRPO (llmkit.align).

    logp = token_logprobs(logits, labels)                  # 0 where labels == IGNORE_INDEX
    logp, entropy = token_logprobs(logits, tokens, temperature=0.7, entropy=True)

The softmax runs in fp32 whatever the logits' dtype: in bf16, log-probabilities of unlikely tokens
lose most of their digits, and sums of them (sequence scores, KL terms) drift.
"""

from __future__ import annotations

from typing import Literal, overload

import torch
import torch.nn.functional as F

from .loss import IGNORE_INDEX


@overload
def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = ..., mask: torch.Tensor | None = ...,
                   temperature: float = ..., entropy: Literal[False] = ...) -> torch.Tensor: ...


@overload
def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = ..., mask: torch.Tensor | None = ...,
                   temperature: float = ..., *, entropy: Literal[True]) -> tuple[torch.Tensor, torch.Tensor]: ...


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                   mask: torch.Tensor | None = None, temperature: float = 1.0,
                   entropy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log p(target) at every position, under softmax(logits / temperature), in fp32.

    `logits` is (..., vocab) and `targets` the matching (...) ids, already aligned: targets[t] is
    the token that position t predicts (shift before calling). Positions whose target is
    `ignore_index`, or where the optional boolean `mask` is False, give 0. With `entropy`, returns
    (log-probs, entropy of each position's next-token distribution), the entropy 0 at those
    positions too."""
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"token_logprobs: logits {tuple(logits.shape)} need targets of shape "
                         f"{tuple(logits.shape[:-1])}, got {tuple(targets.shape)}")
    if temperature <= 0:
        raise ValueError(f"token_logprobs: temperature={temperature} must be positive")
    scaled = logits.float()
    if temperature != 1.0:
        scaled = scaled / temperature
    logp_all = F.log_softmax(scaled, dim=-1)
    keep = targets != ignore_index
    if mask is not None:
        keep = keep & mask.bool()
    logp = logp_all.gather(-1, targets.masked_fill(~keep, 0)[..., None]).squeeze(-1) * keep
    if not entropy:
        return logp
    return logp, -(logp_all.exp() * logp_all).sum(-1) * keep
