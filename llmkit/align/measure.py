"""How an aligned model is measured against where it started: held-out preference pairs ranked
right, the reward model's win rate against the SFT model's answers, and the KL to the reference
on held-out prompts."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.transformer import Transformer
from ..train.precision import autocast
from .policy import PolicyWithValue
from .prefs import PairExample, collate_pairs
from .prompts import Prompt
from .rewards import ModelReward, WeightedReward
from .rollouts import Advantages, RolloutCollector, RolloutSection


@torch.no_grad()
def pair_accuracy(objective: Any, model: nn.Module, examples: list[PairExample], pad_id: int,
                  precision: str = "fp32", full: bool = False, batch_size: int = 16) -> dict[str, float]:
    """On held-out pairs: how often `objective` (DPO's implicit reward or a reward model's
    Bradley-Terry) ranks the chosen answer first, the mean margin, and the loss, scored at the
    `precision` of training. `full` pairs are whole sequences (a reward model's)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    wins = margin = loss_sum = 0.0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id, full=full).items()}
        with autocast(precision, device):
            loss, m = objective.loss(model, batch)
        wins += float(m[objective.accuracy_key]) * len(chunk)
        margin += float(m[objective.margin_key]) * len(chunk)
        loss_sum += float(loss) * len(chunk)
    model.train(was)
    n = max(1, len(examples))
    return {"accuracy": wins / n, "margin": margin / n, "loss": loss_sum / n, "pairs": len(examples)}


@torch.no_grad()
def answers(lm: Transformer, tokenizer, prompts: list[Prompt], max_new_tokens: int, temperature: float = 0.0,
            seed: int = 0, batch_size: int = 32) -> list[str]:
    """`lm`'s answers to chat prompts (greedy by default)."""
    from ..infer.llm import LocalLLM

    llm = LocalLLM(lm, tokenizer)
    out = []
    for start in range(0, len(prompts), batch_size):
        ids = [llm.chat_prompt(p.as_messages()) for p in prompts[start:start + batch_size]]
        out += [c.text for c in llm.complete(ids, max_new_tokens=max_new_tokens, temperature=temperature,
                                              seed=seed + start)]
    return out


def win_rate(judge: ModelReward, prompts: list[Prompt], before: list[str], after: list[str],
             seed: int = 0) -> dict[str, Any]:
    """How often the reward model scores the aligned model's answer above the SFT model's (ties
    count half), with its bootstrap 95% interval."""
    from ..eval.metrics import bootstrap_ci

    texts = [p.text for p in prompts]
    a = judge(texts, before, [None] * len(texts))
    b = judge(texts, after, [None] * len(texts))
    points = [1.0 if y > x else 0.5 if y == x else 0.0 for x, y in zip(a, b)]
    return {"judge": str(judge.path), "win_rate": sum(points) / len(points), "ci": list(bootstrap_ci(points, seed=seed)),
            "prompts": len(points), "reward_sft": sum(a) / len(a), "reward_aligned": sum(b) / len(b)}


def _no_reward(prompts, completions, references):
    return [0.0] * len(completions)


def kl_to_reference(policy: PolicyWithValue, reference: Transformer, tokenizer, prompts: list[Prompt],
                    rollout: RolloutSection, precision: str, seed: int = 0) -> dict[str, float]:
    """KL(π‖π_ref) per completion on held-out prompts: the mean over one sampled completion of
    each prompt of Σ_t log π − log π_ref (an unbiased estimate), and the mean completion length.
    Sampled at the rollouts' temperature and length."""
    one_each = RolloutSection(prompts_per_batch=len(prompts), samples_per_prompt=1,
                              max_new_tokens=rollout.max_new_tokens, temperature=rollout.temperature)
    collector = RolloutCollector(policy, reference, tokenizer, prompts, WeightedReward([(_no_reward, 1.0)]), one_each,
                                 Advantages("grpo"), precision, seed)
    ro = collector.sample(list(range(len(prompts))), seed, train=False)
    return {"kl": ro.stats["kl"], "length": ro.stats["response/length"], "prompts": len(prompts)}
