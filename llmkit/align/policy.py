"""The policy of the rollout methods and what it minimises: the language model with, for PPO, a
value head on its last hidden state (shared trunk), and the clipped surrogate objective
(`RolloutObjective`) on rollout micro-batches, plus PPO's clipped value loss or GRPO's β·KL."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.logprobs import token_logprobs
from ..models.transformer import Transformer
from .losses import kl_per_token, masked_mean, ppo_policy_loss, ppo_value_loss


class PolicyWithValue(nn.Module):
    """The language model (``lm``) and, for PPO, ``value_head``: a (dim -> 1) Linear on the final
    hidden state of every position (zero-initialised, so values start at 0). With `trunk_grad`
    the value loss trains the shared trunk too; by default the head learns on the hidden states
    alone, so that fitting the values cannot pull the policy away from what the reward asks."""

    def __init__(self, lm: Transformer, value_head: bool, trunk_grad: bool = False):
        super().__init__()
        self.lm, self.trunk_grad = lm, trunk_grad
        self.value_head = nn.Linear(lm.config.dim, 1, device=lm.device) if value_head else None
        if self.value_head is not None:
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, index: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (batch, T, vocab) and values (batch, T) at the positions `index` (batch, T) only:
        the LM head runs on the response positions, not on every prompt token."""
        h = hidden_at(self.lm, input_ids, attention_mask, index)
        logits = self.lm.lm_head(h)
        if self.value_head is None:
            return logits, None
        values = self.value_head(h if self.trunk_grad else h.detach()).squeeze(-1).float()
        return logits, values


def hidden_at(lm: Transformer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              index: torch.Tensor) -> torch.Tensor:
    """`lm`'s final hidden states (batch, T, dim) at positions `index` (batch, T)."""
    h = lm.hidden_states(input_ids, attention_mask)
    return h.gather(1, index[..., None].expand(-1, -1, h.shape[-1]))


class RolloutObjective:
    """The clipped surrogate on a rollout micro-batch (see the module doc); `kind` ppo or grpo."""

    def __init__(self, kind: str, clip: float = 0.2, temperature: float = 1.0, vf_coef: float = 0.1,
                 vf_clip: float = 0.2, beta: float = 0.0, entropy_coef: float = 0.0):
        self.kind, self.clip, self.temperature = kind, clip, temperature
        self.vf_coef, self.vf_clip, self.beta, self.entropy_coef = vf_coef, vf_clip, beta, entropy_coef

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        logits, values = model(batch["input_ids"], batch["attention_mask"], batch["resp_index"])
        mask = batch["resp_mask"]
        logp, entropy = token_logprobs(logits, batch["resp_tokens"], temperature=self.temperature, entropy=True)
        pg, clip_frac = ppo_policy_loss(logp, batch["old_logp"], batch["advantages"], mask, self.clip)
        ent = masked_mean(entropy, mask)
        loss = pg - self.entropy_coef * ent
        metrics: dict[str, Any] = dict(batch.get("stats", {}))
        metrics.update({"policy/loss": pg.detach(), "policy/clip_frac": clip_frac, "policy/entropy": ent.detach(),
                        "policy/approx_kl": masked_mean(0.5 * (logp.detach() - batch["old_logp"]) ** 2, mask)})
        if self.kind == "ppo":
            vl, vclip = ppo_value_loss(values, batch["old_values"], batch["returns"], mask, self.vf_clip)
            loss = loss + self.vf_coef * vl
            metrics.update({"value/loss": vl.detach(), "value/clip_frac": vclip})
        elif self.beta:
            kl = masked_mean(kl_per_token(logp, batch["ref_logp"], "k3"), mask)
            loss = loss + self.beta * kl
            metrics["policy/kl_ref"] = kl.detach()
        return loss, metrics

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["resp_mask"].sum())

    units = tokens  # every term is a mean over the counted response tokens
