"""The losses of alignment, as plain functions of log-probabilities and rewards, each checked in
the tests against hand-computed values and, where trl has the same loss, against trl.

    dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta=0.1)     # DPO (sigmoid) / IPO
    bradley_terry_loss(r_chosen, r_rejected)                                 # reward models
    sequence_logps(logits, labels)                                           # sum of log p per sequence

Every function returns per-example values (the caller averages), so that metrics and masking
stay in the caller's hands.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..models.logprobs import token_logprobs
from ..models.loss import IGNORE_INDEX

DPO_LOSSES = ("sigmoid", "ipo")


class DPOOutput(NamedTuple):
    loss: torch.Tensor  # (batch,) per pair
    chosen_rewards: torch.Tensor  # beta * (log pi - log ref) of the chosen answers, detached
    rejected_rewards: torch.Tensor


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1, loss: str = "sigmoid",
             label_smoothing: float = 0.0) -> DPOOutput:
    """Direct Preference Optimisation (Rafailov et al. 2023) on per-pair sequence log-probs.

    With h = (log π(y_w) − log π(y_l)) − (log π_ref(y_w) − log π_ref(y_l)):
      sigmoid: −(1−ε)·log σ(β·h) − ε·log σ(−β·h)   (ε = label_smoothing: conservative DPO)
      ipo:     (h − 1/(2β))²                         (Azar et al. 2023; pass length-averaged log-probs)
    The implicit rewards are β·(log π − log π_ref) of each answer."""
    if beta <= 0:
        raise ValueError(f"beta={beta} must be positive")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 0.5)")
    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    if loss == "sigmoid":
        value = -F.logsigmoid(beta * h) * (1 - label_smoothing) - F.logsigmoid(-beta * h) * label_smoothing
    elif loss == "ipo":
        value = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss={loss!r}: use one of {', '.join(DPO_LOSSES)}")
    return DPOOutput(value, (beta * (policy_chosen - ref_chosen)).detach(),
                     (beta * (policy_rejected - ref_rejected)).detach())


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                       margin: torch.Tensor | float | None = None) -> torch.Tensor:
    """−log σ(r_chosen − r_rejected [− margin]) per pair: the negative log-likelihood that the
    chosen answer wins under the Bradley-Terry model (InstructGPT's reward-model loss; `margin`
    as in Llama 2's, for pairs rated by how much better the chosen one is)."""
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Sum (or mean, with `average`) of log p over each sequence's counted labels: (batch,)."""
    lp = token_logprobs(logits, labels).sum(-1)
    if average:
        lp = lp / (labels != IGNORE_INDEX).sum(-1).clamp_min(1)
    return lp


# ------------------------------------------------------------------------------- RL (PPO, GRPO)
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1)


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π || π_ref) from the sampled tokens' log-probs: k1 = log π − log
    π_ref (unbiased, can be negative), k3 = exp(r) − r − 1 with r = log π_ref − log π (unbiased,
    never negative; what GRPO uses)."""
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k3":
        r = ref_logp - logp
        return torch.exp(r) - r - 1
    raise ValueError(f"kl estimator {estimator!r}: use k1 or k3")


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over (batch, T) per-token rewards
    and values; `mask` marks the response tokens (a contiguous run from position 0, as the
    rollout code lays them out). After the last response token the value is 0 (the episode ends).
    Returns (advantages, returns = advantages + values), 0 outside the mask."""
    mask = mask.to(values.dtype)
    T = rewards.shape[1]
    adv = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        adv[:, t] = running
    return adv, (adv + values) * mask


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped surrogate objective, negated for minimisation and averaged over the masked
    tokens: −min(ρ·A, clip(ρ, 1−ε, 1+ε)·A) with ρ = π/π_old. Returns (loss, clip fraction)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip) * advantages
    loss = masked_mean(-torch.minimum(unclipped, clipped), mask)
    frac = masked_mean((clipped < unclipped).float(), mask)
    return loss, frac.detach()


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """½·max((V − R)², (V_clipped − R)²) averaged over the masked tokens, V_clipped within ε of
    the rollout's value. Returns (loss, fraction of tokens where the clipped term was larger)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    a, b = (values - returns) ** 2, (clipped - returns) ** 2
    return 0.5 * masked_mean(torch.maximum(a, b), mask), masked_mean((b > a).float(), mask).detach()


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, scale: bool = True,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """GRPO (Shao et al. 2024): rewards (prompts, group) to advantages normalised within each
    prompt's group, (r − mean) / (std + eps); `scale=False` only centres them (Dr. GRPO). A group
    whose answers all scored the same gets advantage 0: it teaches nothing. With `valid` (same
    shape, bool) only those members count towards their group's mean and (unbiased) std, and the
    others get advantage 0."""
    if valid is None:
        valid = torch.ones_like(rewards, dtype=torch.bool)
    w = valid.to(rewards.dtype)
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    n = w.sum(dim=1, keepdim=True)
    mean = r.sum(dim=1, keepdim=True) / n.clamp_min(1)
    centred = (r - mean) * w
    if not scale:
        return centred
    std = ((centred ** 2).sum(dim=1, keepdim=True) / (n - 1).clamp_min(1)).sqrt()
    return torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))
