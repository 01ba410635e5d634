"""Rollouts: sample completions of prompts from the policy, score them, and turn them into
advantages, PPO's (the reward at the last token minus β·KL(π‖π_ref) at every token, GAE) or
GRPO's (each completion's reward normalised within its prompt's group); and `RolloutLoader`, the
Trainer's "loader" that hands out shuffled micro-batches of each rollout for `epochs` passes
before it samples the next from the policy as it is then."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import torch

from ..infer.generate import TokenGeneration
from ..infer.llm import eos_token_ids
from ..infer.sampling import GenerationConfig
from ..models.logprobs import token_logprobs
from ..models.transformer import Transformer
from ..train.precision import autocast
from .losses import gae, group_advantages, kl_per_token, masked_mean
from .policy import PolicyWithValue, hidden_at
from .prompts import Prompt
from .rewards import WeightedReward


@dataclass
class RolloutSection:
    prompts_per_batch: int = 16  # prompts sampled per rollout batch (per rank)
    samples_per_prompt: int = 1  # completions per prompt (GRPO's group size)
    max_new_tokens: int = 32
    temperature: float = 1.0  # sampling temperature; log-probs are of the same tempered distribution
    epochs: int = 2  # passes over each rollout batch

    def __post_init__(self) -> None:
        for name in ("prompts_per_batch", "samples_per_prompt", "max_new_tokens", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"rollout.{name}={getattr(self, name)} must be at least 1")
        if self.temperature <= 0:
            raise ValueError(f"rollout.temperature={self.temperature} must be positive (sampling is the method)")


@dataclass
class GroupRolloutSection(RolloutSection):
    """GRPO's rollouts: groups of 8 completions of 8 prompts, one pass each."""

    prompts_per_batch: int = 8
    samples_per_prompt: int = 8
    epochs: int = 1


@dataclass
class Advantages:
    """How a rollout's scores become advantages: ``ppo`` (KL-penalised per-token rewards, GAE) or
    ``grpo`` (normalised within each prompt's group; `kl` is then only reported)."""

    kind: str = "grpo"
    kl: float = 0.0  # β of PPO's per-token KL penalty (the starting value when adaptive)
    kl_target: float | None = None  # PPO's adaptive KL control: steer the rollouts' KL towards this
    kl_horizon: int = 10000  # completions over which β adapts
    gamma: float = 1.0
    lam: float = 0.95
    whiten: bool = True
    normalize_scores: bool = True  # PPO: scores to mean 0, std 1 by the first rollout's statistics
    missing_eos_penalty: float | None = None
    scale_rewards: bool = True  # GRPO: divide by the group's std (false: Dr. GRPO)


@dataclass
class Rollout:
    """One batch of scored completions, padded: full sequences (prompt + response, right
    padding) and the response-aligned tensors the objective needs."""

    input_ids: torch.Tensor  # (N, L)
    attention_mask: torch.Tensor
    resp_index: torch.Tensor  # (N, T) position predicting each response token
    resp_tokens: torch.Tensor
    resp_mask: torch.Tensor  # (N, T) real response tokens of completions that count
    resp_len: torch.Tensor  # (N,) response tokens (the stop token included)
    old_logp: torch.Tensor
    ref_logp: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor | None
    old_values: torch.Tensor | None
    stats: dict[str, float]
    samples: list[dict[str, Any]]


class RolloutCollector:
    """Samples completions of prompts from `policy`, scores them with `reward_fn`, and turns them
    into a `Rollout` (advantages by GAE for PPO, by group for GRPO). `seed` makes the prompt order
    and the samples of each rollout index the same on every run."""

    def __init__(self, policy: PolicyWithValue, reference: Transformer | None, tokenizer, prompts: list[Prompt],
                 reward_fn: WeightedReward, rollout: RolloutSection, advantages: Advantages, precision: str,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.prompts, self.reward_fn, self.rollout, self.advantages = prompts, reward_fn, rollout, advantages
        self.precision, self.seed, self.rank, self.world_size = precision, seed, rank, world_size
        self.kl_coef = advantages.kl
        self.eos_ids = eos_token_ids(tokenizer, policy.lm.config)
        self.pad_id = tokenizer.padding_id
        self.encoded = [tokenizer.apply_chat_template(p.as_messages(), add_generation_prompt=True, tokenize=True)
                        for p in prompts]
        self._order: tuple[int, list[int]] = (-1, [])
        self.score_norm: tuple[float, float] | None = None  # PPO's (mean, std) of the first rollout's rewards

    def _pick(self, index: int) -> list[int]:
        """Prompt indices of rollout `index` on this rank: epochs over a seeded order of the set."""
        n, per = len(self.prompts), self.rollout.prompts_per_batch
        start = (index * self.world_size + self.rank) * per
        out = []
        for k in range(start, start + per):
            epoch, pos = divmod(k, n)
            if self._order[0] != epoch:
                order = list(range(n))
                random.Random(self.seed * 7919 + epoch).shuffle(order)
                self._order = (epoch, order)
            out.append(self._order[1][pos])
        return out

    def collect(self, index: int) -> Rollout:
        """Rollout `index` of training: its prompts, `samples_per_prompt` completions of each."""
        picked = [i for i in self._pick(index) for _ in range(self.rollout.samples_per_prompt)]
        return self.sample(picked, self.seed * 1_000_003 + index * self.world_size + self.rank)

    @torch.no_grad()
    def sample(self, picked: list[int], seed: int, train: bool = True) -> Rollout:
        """Complete the prompts of indices `picked` (seeded), score them and work out advantages.
        With `train` False (a measurement) nothing of the collector's state changes: no score
        normalisation is fixed and the adaptive KL coefficient stays."""
        was = self.policy.training
        self.policy.eval()
        prompts = [self.encoded[i] for i in picked]
        responses, stopped, texts = self._complete(prompts, seed)
        ps = [self.prompts[i] for i in picked]
        scores = self.reward_fn([p.text for p in ps], texts, [p.answer for p in ps])
        raw = torch.tensor(scores, dtype=torch.float32)
        valid = torch.isfinite(raw)
        raw = torch.where(valid, raw, torch.zeros_like(raw))
        shaped = self._shape_scores(raw, valid, stopped, train)
        dev = {k: v.to(self.policy.lm.device) for k, v in self._pad(prompts, responses, valid).items()}
        old_logp, ref_logp, values = self._logps(dev)
        full_mask = dev["resp_full_mask"]
        old_logp, ref_logp = old_logp * full_mask, ref_logp * full_mask
        kl_tok = kl_per_token(old_logp, ref_logp, "k1") * full_mask
        seq_kl = kl_tok.sum(-1)
        adv, returns, old_values = self._advantages(dev, shaped.to(full_mask.device), valid, kl_tok, values)
        n_valid, v = int(valid.sum()), valid.to(full_mask.device)
        stats = {"reward": float(raw[valid].mean()) if n_valid else math.nan,
                 "reward/std": float(raw[valid].std()) if n_valid > 1 else 0.0,
                 "kl": float(seq_kl[v].mean()) if n_valid else math.nan,
                 "kl_coef": float(self.kl_coef),
                 "response/length": float(full_mask.sum(-1).mean()),
                 "response/stopped": float(sum(stopped) / len(stopped)),
                 "reward/skipped": float(len(prompts) - n_valid)}
        if returns is not None:
            total = shaped.to(seq_kl.device) - self.kl_coef * seq_kl
            stats["reward/total"] = float(total[v].mean()) if n_valid else math.nan
            if train:
                self._adapt_kl(stats["kl"], len(prompts))
        self.policy.train(was)
        samples = [{"prompt": p.text, "completion": t, "reward": s} for p, t, s in zip(ps[:4], texts, scores)]
        cpu = {k: t.cpu() for k, t in dev.items()}
        return Rollout(cpu["input_ids"], cpu["attention_mask"], cpu["resp_index"], cpu["resp_tokens"],
                       cpu["resp_mask"], cpu["resp_full_mask"].sum(-1).long(), old_logp.float().cpu(),
                       ref_logp.float().cpu(), adv.float().cpu(),
                       None if returns is None else returns.float().cpu(),
                       None if old_values is None else old_values.float().cpu(), stats, samples)

    def _complete(self, prompts: list[list[int]], seed: int) -> tuple[list[list[int]], list[bool], list[str]]:
        """Sampled response tokens (the stop token kept: choosing to stop is an action), whether
        each stopped by itself, and the response texts."""
        r = self.rollout
        gen = GenerationConfig(max_new_tokens=r.max_new_tokens, temperature=r.temperature, seed=seed)
        run = TokenGeneration(self.policy.lm, prompts, gen, self.eos_ids, self.pad_id)
        responses: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        for step in run:
            for row, tok in enumerate(step.tokens):
                if not done[row]:
                    responses[row].append(tok)
            done = list(run.finished)
        stopped = [reason == "stop" for reason in run.finish_reasons]
        texts = [self.tokenizer.decode(resp[:-1] if s else resp, skip_special_tokens=True)
                 for resp, s in zip(responses, stopped)]
        return responses, stopped, texts

    def _shape_scores(self, scores: torch.Tensor, valid: torch.Tensor, stopped: list[bool], train: bool) -> torch.Tensor:
        """PPO's scores: normalised by the first rollout's mean and std, less the missing-EOS penalty."""
        a = self.advantages
        if a.kind != "ppo":
            return scores
        if a.normalize_scores:
            if self.score_norm is None and train and bool(valid.any()):  # fixed from the first rollout on
                ok = scores[valid]
                std = float(ok.std()) if ok.numel() > 1 else 0.0
                self.score_norm = (float(ok.mean()), std if std > 1e-6 else 1.0)
            if self.score_norm is not None:
                scores = (scores - self.score_norm[0]) / self.score_norm[1]
        if a.missing_eos_penalty is not None:
            scores = scores - a.missing_eos_penalty * (~torch.tensor(stopped)).float()
        return torch.where(valid, scores, torch.zeros_like(scores))

    def _logps(self, dev: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The policy's and the reference's log-probs of the response tokens, and the policy's values."""
        t = self.rollout.temperature
        with autocast(self.precision, dev["input_ids"].device):
            logits, values = self.policy(dev["input_ids"], dev["attention_mask"], dev["resp_index"])
            old_logp = token_logprobs(logits, dev["resp_tokens"], temperature=t)
            if self.reference is None:
                return old_logp, old_logp, values
            ref = self.reference
            ref_logits = ref.lm_head(hidden_at(ref, dev["input_ids"], dev["attention_mask"], dev["resp_index"]))
            ref_logp = token_logprobs(ref_logits, dev["resp_tokens"], temperature=t)
        return old_logp, ref_logp, values

    def _advantages(self, dev: dict[str, torch.Tensor], scores: torch.Tensor, valid: torch.Tensor,
                    kl_tok: torch.Tensor, values: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(advantages, returns, old values): GAE over KL-penalised rewards for PPO, group-normalised
        scores for GRPO (no returns or values)."""
        a, mask, full_mask = self.advantages, dev["resp_mask"], dev["resp_full_mask"]
        if a.kind == "ppo" and values is not None:
            old_values = values * full_mask
            rewards = -self.kl_coef * kl_tok
            last = (full_mask.sum(-1) - 1).clamp_min(0).long()
            rewards[torch.arange(len(scores), device=rewards.device), last] += scores
            adv, returns = gae(rewards, old_values, full_mask, a.gamma, a.lam)
            if a.whiten:
                m = masked_mean(adv, mask)
                std = masked_mean((adv - m) ** 2, mask).sqrt()
                adv = (adv - m) / (std + 1e-8)
            return adv * mask, returns, old_values
        k = self.rollout.samples_per_prompt
        grouped = scores.view(-1, k)
        vmask = valid.to(scores.device).view(-1, k)
        adv_seq = group_advantages(grouped, scale=a.scale_rewards, valid=vmask).reshape(-1)
        return adv_seq[:, None] * mask, None, None

    def _adapt_kl(self, kl: float, n: int) -> None:
        """Ziegler et al.'s proportional controller: β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon)."""
        target = self.advantages.kl_target
        if target is None or not math.isfinite(kl):
            return
        error = max(-0.2, min(0.2, kl / target - 1))
        self.kl_coef *= 1 + error * n / self.advantages.kl_horizon

    def _pad(self, prompts: list[list[int]], responses: list[list[int]], valid: torch.Tensor) -> dict[str, torch.Tensor]:
        n = len(prompts)
        width = max(len(p) + len(r) for p, r in zip(prompts, responses))
        T = max(1, max(len(r) for r in responses))
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((n, width), dtype=torch.long)
        index = torch.zeros((n, T), dtype=torch.long)
        tokens = torch.zeros((n, T), dtype=torch.long)
        full = torch.zeros((n, T), dtype=torch.float32)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            seq = p + r
            ids[i, :len(seq)] = torch.tensor(seq)
            attn[i, :len(seq)] = 1
            if r:
                index[i, :len(r)] = torch.arange(len(p) - 1, len(p) - 1 + len(r))
                tokens[i, :len(r)] = torch.tensor(r)
                full[i, :len(r)] = 1
        return {"input_ids": ids, "attention_mask": attn, "resp_index": index, "resp_tokens": tokens,
                "resp_full_mask": full, "resp_mask": full * valid.float()[:, None]}


class RolloutLoader:
    """The Trainer's loader for rollout methods: micro-batches of the current rollout batch,
    shuffled, `rollout.epochs` times; then the next rollout is collected from the policy as it
    is. Resuming continues with a fresh rollout after the last one finished."""

    def __init__(self, collector: RolloutCollector, micro_batch: int, epochs: int, seed: int = 0):
        self.collector, self.micro_batch, self.epochs, self.seed = collector, micro_batch, epochs, seed
        self.rollouts = 0
        self.queue: list[dict[str, Any]] = []
        self.last: Rollout | None = None

    def __iter__(self) -> "RolloutLoader":
        return self

    def __next__(self) -> dict[str, Any]:
        if not self.queue:
            self.last = self.collector.collect(self.rollouts)
            self.rollouts += 1
            self.queue = self._batches(self.last)
        return self.queue.pop(0)

    def _batches(self, ro: Rollout) -> list[dict[str, Any]]:
        n = ro.input_ids.shape[0]
        g = torch.Generator().manual_seed(self.seed * 65537 + self.rollouts)
        stats = {**ro.stats, "rollouts": float(self.rollouts)}
        out = []
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=g)
            for start in range(0, n, self.micro_batch):
                idx = order[start:start + self.micro_batch]
                width = int(ro.attention_mask[idx].sum(-1).max())
                T = max(1, int(ro.resp_len[idx].max()))
                b = {"input_ids": ro.input_ids[idx, :width], "attention_mask": ro.attention_mask[idx, :width]}
                for name in ("resp_index", "resp_tokens", "resp_mask", "old_logp", "ref_logp", "advantages",
                             "returns", "old_values"):
                    t = getattr(ro, name)
                    if t is not None:
                        b[name] = t[idx, :T]
                b["stats"] = stats
                out.append(b)
        return out

    def state_dict(self) -> dict[str, Any]:
        norm = self.collector.score_norm
        return {"rollouts": self.rollouts, "kl_coef": self.collector.kl_coef,
                "score_norm": None if norm is None else list(norm)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rollouts, self.collector.kl_coef = int(state["rollouts"]), float(state["kl_coef"])
        norm = state.get("score_norm")
        self.collector.score_norm = None if norm is None else (float(norm[0]), float(norm[1]))
        self.queue = []
