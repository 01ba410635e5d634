"""Rollout methods: PPO with a KL penalty to the SFT model, and GRPO with verifiable rewards.

    llmkit align ppo  --model runs/sft --reward runs/rm --prompts prompts.jsonl --out runs/ppo kl=0.05
    llmkit align grpo --model runs/sft --reward arith-exact --prompts builtin:arith --out runs/grpo

Both run on the one Trainer: the "loader" is a `RolloutLoader`, which samples a batch of
completions from the current policy, scores them, works out advantages, and then hands the
Trainer shuffled micro-batches of that batch for `rollout.epochs` passes before it samples the
next. The objective (`RolloutObjective`) is the clipped surrogate on those micro-batches, plus

- PPO: a value head on the policy's last hidden state (shared trunk), the clipped value loss,
  and the reward of the reward model at the last token minus β·KL(π‖π_sft) at every token, with
  GAE (γ, λ) for the advantages; `kl_target` turns on adaptive KL control (Ziegler et al. 2019);
- GRPO: `rollout.samples_per_prompt` completions per prompt, each one's advantage its reward
  normalised within its group, no value head, and β·KL (the k3 estimator) in the loss.

Prompts are JSONL rows of ``prompt`` (a string, or chat messages) with an optional ``answer``
(what ``*-exact`` rewards compare with) and ``task`` (how to extract an answer), or
``builtin[:arith,sorting]``: the tasks' train split with their answers. Every logged step carries
the latest rollout's reward, KL to the SFT model, response length and skipped rewards next to
the clip fraction, entropy and (PPO) value loss; report.md plots reward and KL together.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.dataset import DataError
from ..data.instruct import builtin_tasks, is_builtin, read_jsonl, split_validation
from ..infer.generate import TokenGeneration
from ..infer.llm import eos_token_ids
from ..infer.sampling import GenerationConfig
from ..models.transformer import Transformer
from ..peft import LoRAConfig, trainable_parameters
from ..train import distributed as D
from ..train.finetune import EvalSection, FinetuneTrain, apply_method, held_out, load_base, save_result, setting_up
from ..train.precision import autocast, choose_precision
from ..train.trainer import Trainer
from ..utils import write_json_atomic
from .dpo import disable_dropout
from .losses import gae, group_advantages, kl_per_token, masked_mean, ppo_policy_loss, ppo_value_loss
from .rewards import ModelReward, WeightedReward, parse_reward

log = logging.getLogger(__name__)

RL_PROMPT_TASKS = ("arith", "sorting")
DEFAULT_LR = {"full": 1e-5, "lora": 2e-4, "qlora": 2e-4}


# ------------------------------------------------------------------------------------ prompts
@dataclass(frozen=True)
class Prompt:
    messages: tuple[tuple[str, str], ...]  # ((role, content), ...) ending with a user turn
    answer: str | None = None
    task: str | None = None

    @property
    def text(self) -> str:
        """The last user turn: what reward functions are shown as "the prompt"."""
        return next(c for r, c in reversed(self.messages) if r == "user")

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


def _row_to_prompt(row: Any) -> list[Prompt]:
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if "prompt" not in row:
        raise ValueError(f"field 'prompt' is missing (fields: {', '.join(row) or 'none'})")
    value = row["prompt"]
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("field 'prompt' is empty")
        messages = (("user", value),)
    elif isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        if any(m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str)
               for m in value):
            raise ValueError("every message of 'prompt' needs role system/user/assistant and string content")
        if value[-1]["role"] != "user":
            raise ValueError("the last message of 'prompt' must be the user's (the model answers it)")
        messages = tuple((m["role"], m["content"]) for m in value)
    else:
        raise ValueError("field 'prompt' must be a string or a non-empty list of {role, content} messages")
    answer = row.get("answer", row.get("reference"))
    if answer is not None and not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
        raise ValueError("field 'answer' must be a string or a number")
    task = row.get("task")
    if task is not None and not isinstance(task, str):
        raise ValueError("field 'task' must be a string")
    return [Prompt(messages, None if answer is None else str(answer), task)]


def builtin_prompts(split: str, tasks: Sequence[str], train_size: int | None = None) -> list[Prompt]:
    """The generated tasks' questions with their answers (train split: fresh ones with `train_size`)."""
    from ..data.build_tasks import fresh_train
    from ..data.tasks import load_task

    out = []
    for name in tasks:
        if split == "train" and train_size is not None:
            rows = [(r["prompt"], r["answer"]) for r in fresh_train(name, train_size)]
        else:
            rows = [(ex.prompt, ex.answer) for ex in load_task(name, split)]
        out += [Prompt((("user", p),), a, name) for p, a in rows]
    return out


def read_prompts(path: str, skip_bad_rows: bool = False, train_size: int | None = None) -> tuple[list[Prompt], int]:
    """(prompts, bad rows skipped) of a JSONL file, or of ``builtin[:arith,sorting]``."""
    if is_builtin(path):
        return builtin_prompts("train", builtin_tasks(path, RL_PROMPT_TASKS, "prompt"), train_size), 0
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"prompt file {p} does not exist (or use --prompts builtin:arith)")
    prompts, bad = read_jsonl(p, _row_to_prompt, skip_bad_rows, "prompts")
    return prompts, len(bad)


# ------------------------------------------------------------------------------------ recipes
@dataclass
class PromptSection:
    path: str = "builtin:arith"  # JSONL of prompt (+ answer, task), or builtin[:arith,sorting]
    val_path: str | None = None  # held-out prompts; default: builtin's test split, or val_fraction of the file
    val_fraction: float = 0.05
    builtin_train_size: int | None = None  # builtin: this many fresh training questions per task
    skip_bad_rows: bool = False


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
class RLEvalSection(EvalSection):
    perplexity: bool = False
    prompts: int = 100  # held-out prompts for the reward-model win rate and the KL to the SFT model
    reward_model: str | None = None  # judge of the win rate (default: the run's reward model, if any)


@dataclass
class RLTrain(FinetuneTrain):
    steps: int = 100  # optimizer steps in all
    micro_batch: int = 16  # completions per forward
    warmup_steps: int = 0
    schedule: str = "constant"
    eval_every: int = 0


@dataclass
class RLRecipe:
    model: str = ""  # the starting (SFT) model; a frozen copy is the KL reference
    method: str = "full"  # full | lora | qlora
    reward: str = ""  # a reward-model dir, built-in reward(s), or module:function (see llmkit.align.rewards)
    reference: str = ""  # a different KL reference (same tokenizer); default the starting model
    prompts: PromptSection = field(default_factory=PromptSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    clip: float = 0.2  # the surrogate's ratio clip ε
    entropy_coef: float = 0.0  # entropy bonus
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    qlora_double_quant: bool = True
    eval: RLEvalSection = field(default_factory=RLEvalSection)
    train: RLTrain = field(default_factory=RLTrain)
    out: str = "runs/rl"

    kind = "rl"

    def __post_init__(self) -> None:
        if self.method not in ("full", "lora", "qlora"):
            raise ValueError(f"method={self.method!r}: {self.kind} runs with full, lora or qlora")
        if not 0 < self.clip < 1:
            raise ValueError(f"clip={self.clip} must be in (0, 1) (0.2 is usual)")


@dataclass
class PPORecipe(RLRecipe):
    kl: float = 0.05  # β of the per-token KL penalty in the reward (the starting value when adaptive)
    kl_target: float | None = None  # adaptive KL control: steer the rollouts' KL towards this (nats/sequence)
    kl_horizon: int = 10000  # adaptive KL: completions over which β adapts
    vf_coef: float = 0.1  # weight of the value loss
    vf_clip: float = 0.2  # the value loss's clip around the rollout's values
    gamma: float = 1.0
    lam: float = 0.95  # GAE λ
    whiten_advantages: bool = True
    normalize_scores: bool = True  # scale rewards to mean 0, std 1 on the first rollout (the SFT model's samples)
    value_trunk_grad: bool = False  # let the value loss train the shared trunk as well as the value head
    missing_eos_penalty: float | None = None  # subtracted from the score of completions cut at max_new_tokens
    out: str = "runs/ppo"

    kind = "ppo"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kl < 0:
            raise ValueError(f"kl={self.kl} must be 0 or more (0.05 is usual)")
        if self.kl_target is not None and self.kl_target <= 0:
            raise ValueError(f"kl_target={self.kl_target} must be positive (or unset for a fixed kl)")


@dataclass
class GRPORecipe(RLRecipe):
    beta: float = 0.04  # weight of the KL (k3) to the reference in the loss; 0 = no reference model
    scale_rewards: bool = True  # divide by the group's std (false: Dr. GRPO, centred only)
    rollout: GroupRolloutSection = field(default_factory=GroupRolloutSection)
    out: str = "runs/grpo"

    kind = "grpo"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 0:
            raise ValueError(f"beta={self.beta} must be 0 or more (0.04 is usual)")
        if self.rollout.samples_per_prompt < 2:
            raise ValueError(f"rollout.samples_per_prompt={self.rollout.samples_per_prompt}: GRPO compares "
                             "completions within a group, so it needs at least 2 (8 is usual)")


# ------------------------------------------------------------------------------------ policy
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


def response_logps(logits: torch.Tensor, tokens: torch.Tensor, temperature: float,
                   entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p (batch, T) of each response token under `logits` (batch, T, vocab), the logits of
    the positions that predict them, at `temperature`; with `entropy`, also the entropy of each
    of those next-token distributions."""
    logp_all = F.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, tokens[..., None]).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1) if entropy else None
    return logp, ent


# ---------------------------------------------------------------------------------- rollouts
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
    into a `Rollout` (advantages by GAE for PPO, by group for GRPO)."""

    def __init__(self, policy: PolicyWithValue, reference: Transformer | None, tokenizer, prompts: list[Prompt],
                 reward_fn: WeightedReward, recipe: RLRecipe, precision: str, rank: int = 0, world_size: int = 1):
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.prompts, self.reward_fn, self.recipe = prompts, reward_fn, recipe
        self.precision, self.rank, self.world_size = precision, rank, world_size
        self.kl_coef = recipe.kl if isinstance(recipe, PPORecipe) else getattr(recipe, "beta", 0.0)
        self.eos_ids = eos_token_ids(tokenizer, policy.lm.config)
        self.pad_id = tokenizer.padding_id
        self.encoded = [tokenizer.apply_chat_template(p.as_messages(), add_generation_prompt=True, tokenize=True)
                        for p in prompts]
        self._order: tuple[int, list[int]] = (-1, [])
        self.score_norm: tuple[float, float] | None = None  # PPO's (mean, std) of the first rollout's rewards

    def _pick(self, index: int) -> list[int]:
        """Prompt indices of rollout `index` on this rank: epochs over a seeded order of the set."""
        n, per = len(self.prompts), self.recipe.rollout.prompts_per_batch
        start = (index * self.world_size + self.rank) * per
        out = []
        for k in range(start, start + per):
            epoch, pos = divmod(k, n)
            if self._order[0] != epoch:
                order = list(range(n))
                random.Random(self.recipe.train.seed * 7919 + epoch).shuffle(order)
                self._order = (epoch, order)
            out.append(self._order[1][pos])
        return out

    @torch.no_grad()
    def collect(self, index: int) -> Rollout:
        r = self.recipe.rollout
        picked = [i for i in self._pick(index) for _ in range(r.samples_per_prompt)]
        prompts = [self.encoded[i] for i in picked]
        lm = self.policy.lm
        was = self.policy.training
        self.policy.eval()
        gen = GenerationConfig(max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                               seed=(self.recipe.train.seed * 1_000_003 + index * self.world_size + self.rank))
        run = TokenGeneration(lm, prompts, gen, self.eos_ids, self.pad_id)
        responses: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        for step in run:
            for row, tok in enumerate(step.tokens):
                if not done[row]:
                    responses[row].append(tok)  # the stop token too: choosing to stop is an action
            done = list(run.finished)
        stopped = [reason == "stop" for reason in run.finish_reasons]
        texts = [self.tokenizer.decode(resp[:-1] if s else resp, skip_special_tokens=True)
                 for resp, s in zip(responses, stopped)]
        ps = [self.prompts[i] for i in picked]
        scores = self.reward_fn([p.text for p in ps], texts, [p.answer for p in ps])
        scores_t = torch.tensor(scores, dtype=torch.float32)
        valid = torch.isfinite(scores_t)
        scores_t = torch.where(valid, scores_t, torch.zeros_like(scores_t))
        raw_scores = scores_t.clone()
        if isinstance(self.recipe, PPORecipe):
            if self.recipe.normalize_scores:
                if self.score_norm is None and bool(valid.any()):  # fixed from the first rollout on
                    ok = scores_t[valid]
                    std = float(ok.std()) if ok.numel() > 1 else 0.0
                    self.score_norm = (float(ok.mean()), std if std > 1e-6 else 1.0)
                if self.score_norm is not None:
                    scores_t = (scores_t - self.score_norm[0]) / self.score_norm[1]
            if self.recipe.missing_eos_penalty is not None:
                scores_t -= self.recipe.missing_eos_penalty * (~torch.tensor(stopped)).float()
            scores_t = torch.where(valid, scores_t, torch.zeros_like(scores_t))

        batch = self._pad(prompts, responses, valid)
        device = lm.device
        dev = {k: v.to(device) for k, v in batch.items()}
        with autocast(self.precision, device):
            logits, values = self.policy(dev["input_ids"], dev["attention_mask"], dev["resp_index"])
            old_logp, _ = response_logps(logits, dev["resp_tokens"], r.temperature)
            if self.reference is not None:
                ref = self.reference
                ref_logits = ref.lm_head(hidden_at(ref, dev["input_ids"], dev["attention_mask"], dev["resp_index"]))
                ref_logp, _ = response_logps(ref_logits, dev["resp_tokens"], r.temperature)
            else:
                ref_logp = old_logp
        mask = dev["resp_mask"]
        full_mask = dev["resp_full_mask"]
        old_logp, ref_logp = old_logp * full_mask, ref_logp * full_mask
        kl_tok = kl_per_token(old_logp, ref_logp, "k1") * full_mask
        seq_kl = kl_tok.sum(-1)
        scores_d = scores_t.to(device)
        old_values = returns = None
        ppo = isinstance(self.recipe, PPORecipe) and values is not None
        if ppo:
            old_values = values * full_mask
            rewards = -self.kl_coef * kl_tok
            last = (full_mask.sum(-1) - 1).clamp_min(0).long()
            rewards[torch.arange(len(prompts), device=device), last] += scores_d
            adv, returns = gae(rewards, old_values, full_mask, self.recipe.gamma, self.recipe.lam)
            if self.recipe.whiten_advantages:
                m = masked_mean(adv, mask)
                std = masked_mean((adv - m) ** 2, mask).sqrt()
                adv = (adv - m) / (std + 1e-8)
            adv = adv * mask
        else:
            grouped = scores_d.view(-1, r.samples_per_prompt)
            vmask = valid.to(device).view(-1, r.samples_per_prompt)
            adv_seq = group_advantages(grouped, scale=getattr(self.recipe, "scale_rewards", True),
                                       valid=vmask).reshape(-1)
            adv = adv_seq[:, None] * mask
        n_valid = int(valid.sum())
        v = valid.to(device)
        stats = {"reward": float(raw_scores[valid].mean()) if n_valid else math.nan,
                 "reward/std": float(raw_scores[valid].std()) if n_valid > 1 else 0.0,
                 "kl": float(seq_kl[v].mean()) if n_valid else math.nan,
                 "kl_coef": float(self.kl_coef),
                 "response/length": float(full_mask.sum(-1).mean()),
                 "response/stopped": float(sum(stopped) / len(stopped)),
                 "reward/skipped": float(len(prompts) - n_valid)}
        if ppo:
            stats["reward/total"] = float((scores_d - self.kl_coef * seq_kl)[v].mean()) if n_valid else math.nan
            self._adapt_kl(stats["kl"], len(prompts))
        self.policy.train(was)
        samples = [{"prompt": p.text, "completion": t, "reward": s} for p, t, s in zip(ps[:4], texts, scores)]
        cpu = {k: v.cpu() for k, v in dev.items()}
        return Rollout(cpu["input_ids"], cpu["attention_mask"], cpu["resp_index"], cpu["resp_tokens"],
                       cpu["resp_mask"], cpu["resp_full_mask"].sum(-1).long(), old_logp.float().cpu(), ref_logp.float().cpu(), adv.float().cpu(),
                       None if returns is None else returns.float().cpu(),
                       None if old_values is None else old_values.float().cpu(), stats, samples)

    def _adapt_kl(self, kl: float, n: int) -> None:
        """Ziegler et al.'s proportional controller: β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon)."""
        target = self.recipe.kl_target
        if target is None or not math.isfinite(kl):
            return
        error = max(-0.2, min(0.2, kl / target - 1))
        self.kl_coef *= 1 + error * n / self.recipe.kl_horizon

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


class RolloutObjective:
    """The clipped surrogate on a rollout micro-batch (see the module doc); `kind` ppo or grpo."""

    def __init__(self, kind: str, clip: float = 0.2, temperature: float = 1.0, vf_coef: float = 0.1,
                 vf_clip: float = 0.2, beta: float = 0.0, entropy_coef: float = 0.0):
        self.kind, self.clip, self.temperature = kind, clip, temperature
        self.vf_coef, self.vf_clip, self.beta, self.entropy_coef = vf_coef, vf_clip, beta, entropy_coef

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        logits, values = model(batch["input_ids"], batch["attention_mask"], batch["resp_index"])
        mask = batch["resp_mask"]
        logp, entropy = response_logps(logits, batch["resp_tokens"], self.temperature, True)
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


# ---------------------------------------------------------------------------------- judging
@torch.no_grad()
def answers(lm: Transformer, tokenizer, prompts: list[Prompt], max_new_tokens: int, temperature: float = 0.0,
            seed: int = 0, batch_size: int = 32) -> list[str]:
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


@torch.no_grad()
def kl_to_reference(policy: PolicyWithValue, reference: Transformer, tokenizer, prompts: list[Prompt],
                    recipe: RLRecipe, precision: str) -> dict[str, float]:
    """KL(π‖π_sft) per completion on held-out prompts: the mean over sampled completions of
    Σ_t log π − log π_sft (an unbiased estimate), and the mean completion length."""
    sub = copy.copy(recipe)  # one sample of each prompt (not re-validated: GRPO's own rollouts need groups)
    sub.rollout = copy.copy(recipe.rollout)
    sub.rollout.prompts_per_batch, sub.rollout.samples_per_prompt = len(prompts), 1
    reward = WeightedReward([(lambda p, c, r: [0.0] * len(c), 1.0)])
    collector = RolloutCollector(policy, reference, tokenizer, prompts, reward, sub, precision)
    collector.kl_coef = 0.0
    ro = collector.collect(10_000_019)
    return {"kl": ro.stats["kl"], "length": ro.stats["response/length"], "prompts": len(prompts)}


# --------------------------------------------------------------------------------------- job
def read_rl_prompts(recipe: RLRecipe, tokenizer, context: int) -> tuple[list[Prompt], list[Prompt], dict[str, Any]]:
    p = recipe.prompts
    train, bad = read_prompts(p.path, p.skip_bad_rows, p.builtin_train_size)
    if p.val_path:
        val, _ = read_prompts(p.val_path, p.skip_bad_rows)
    elif is_builtin(p.path):
        val = builtin_prompts("test", builtin_tasks(p.path, RL_PROMPT_TASKS, "prompt"))
    else:
        train, val = split_validation(train, p.val_fraction, recipe.train.seed)
    budget = context - recipe.rollout.max_new_tokens

    def fits(ps: list[Prompt]) -> tuple[list[Prompt], int]:
        kept = [q for q in ps if len(tokenizer.apply_chat_template(q.as_messages(), add_generation_prompt=True,
                                                                   tokenize=True)) <= budget]
        return kept, len(ps) - len(kept)

    train, long_train = fits(train)
    val, _ = fits(val)
    if long_train:
        log.warning("skipped %d prompt(s) longer than the context window of %d tokens less "
                    "rollout.max_new_tokens=%d", long_train, context, recipe.rollout.max_new_tokens)
    if not train:
        raise DataError(f"no prompt fits in the context window ({context} tokens) with room for "
                        f"rollout.max_new_tokens={recipe.rollout.max_new_tokens}")
    return train, val[:recipe.eval.prompts], {"train": len(train), "val": len(val[:recipe.eval.prompts]),
                                              "bad_rows": bad, "too_long": long_train}


def load_reference(recipe: RLRecipe, model: Transformer, tokenizer) -> Transformer:
    """A frozen copy of the starting model, or `recipe.reference` checked to share its tokenizer."""
    if not recipe.reference:
        return copy.deepcopy(model).eval().requires_grad_(False)
    from ..models.hf import load_pretrained
    from ..models.resolve import resolve_model
    from ..tokenizer import Tokenizer

    path = resolve_model(recipe.reference)
    other = Tokenizer.from_dir(path)
    if other.backend.get_vocab() != tokenizer.backend.get_vocab():
        raise ValueError(f"reference={recipe.reference}: its tokenizer differs from the policy's ({other.vocab_size} "
                         f"vs {tokenizer.vocab_size} tokens, or other ids), so their per-token log-probs cannot "
                         "be compared: use a reference trained from the same base (or leave reference unset)")
    return load_pretrained(path).eval().requires_grad_(False)


def judge_for(recipe: RLRecipe, reward_fn: WeightedReward, device) -> ModelReward | None:
    if recipe.eval.reward_model:
        return ModelReward(recipe.eval.reward_model, device)
    found = reward_fn.reward_models
    return found[0] if found else None


def rl(recipe: RLRecipe, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) a PPO or GRPO job (by the recipe's type); returns its summary."""
    info = D.init_distributed(recipe.train.device)
    if info.enabled and recipe.train.distributed == "fsdp":
        raise ValueError("train.distributed=fsdp: rollouts sample from the whole model on each rank; use ddp")
    ppo = isinstance(recipe, PPORecipe)
    run_dir = Path(recipe.out)
    train_cfg = dataclasses.replace(recipe.train, lr=recipe.train.lr or DEFAULT_LR[recipe.method])
    with setting_up(run_dir, resume, info, recipe):
        base_path, model, tokenizer = load_base(recipe)
        builtin_spec = recipe.prompts.path if is_builtin(recipe.prompts.path) else None
        task = builtin_tasks(builtin_spec, RL_PROMPT_TASKS, "prompt")[0] if builtin_spec else None
        reward_fn = parse_reward(recipe.reward, task, info.device)
        train_prompts, val_prompts, data_info = read_rl_prompts(recipe, tokenizer, model.config.context_window)
        reference = load_reference(recipe, model, tokenizer)  # GRPO with beta=0 still logs and reports the KL
    device = info.device
    model.to(device)
    for rm in reward_fn.reward_models:
        rm.to(device)
    if reference is not None:
        reference.to(device)
    precision = choose_precision(train_cfg.precision, device)
    disable_dropout(model)
    tasks = list(recipe.eval.tasks) if recipe.eval.tasks is not None else \
        (list(builtin_tasks(builtin_spec, RL_PROMPT_TASKS, "prompt")) if builtin_spec else [])
    before = held_out(model, tokenizer, tasks, recipe) if info.is_main else {}
    judge = judge_for(recipe, reward_fn, device) if info.is_main and val_prompts else None
    sft_answers = answers(model, tokenizer, val_prompts, recipe.rollout.max_new_tokens) if judge else []
    torch.manual_seed(train_cfg.seed)
    apply_method(model, recipe, tokenizer)
    policy = PolicyWithValue(model, value_head=ppo, trunk_grad=ppo and recipe.value_trunk_grad)
    report = trainable_parameters(policy)
    collector = RolloutCollector(policy, reference, tokenizer, train_prompts, reward_fn, recipe, precision, info.rank,
                                 info.world_size)
    loader = RolloutLoader(collector, train_cfg.micro_batch, recipe.rollout.epochs, train_cfg.seed)
    if ppo:
        objective = RolloutObjective("ppo", recipe.clip, recipe.rollout.temperature, recipe.vf_coef, recipe.vf_clip,
                                     entropy_coef=recipe.entropy_coef)
    else:
        objective = RolloutObjective("grpo", recipe.clip, recipe.rollout.temperature, beta=recipe.beta,
                                     entropy_coef=recipe.entropy_coef)
    compat = {"model": model.config.to_dict(), "method": recipe.method, "kind": recipe.kind}
    trainer = Trainer(policy, objective, loader, train_cfg, run_dir, compat=compat, info=info)
    summary = trainer.fit(resume=resume)
    final = D.unwrap(trainer.base_model).eval()
    summary.update({"kind": recipe.kind, "method": recipe.method, "lr": train_cfg.lr, "reward": reward_fn.__name__,
                    "rollouts": loader.rollouts, "kl_coef": collector.kl_coef, "data": data_info,
                    "score_norm": None if collector.score_norm is None else list(collector.score_norm),
                    "trainable": {"trainable": report.trainable, "total": report.total, "percent": report.percent},
                    "last_samples": loader.last.samples if loader.last else []})
    if info.is_main:
        summary["before"] = before
        summary["after"] = held_out(final.lm, tokenizer, tasks, recipe)
        if val_prompts:
            summary["kl_to_sft"] = kl_to_reference(final, reference, tokenizer, val_prompts, recipe, precision)
        if judge is not None:
            aligned = answers(final.lm, tokenizer, val_prompts, recipe.rollout.max_new_tokens)
            summary["win_rate"] = win_rate(judge, val_prompts, sft_answers, aligned, train_cfg.seed)
        save_result(final.lm, tokenizer, recipe, base_path, run_dir)
        write_json_atomic(run_dir / "summary.json", summary)
        write_rl_report(run_dir, recipe, summary)
    D.barrier()
    return summary


def ppo(recipe: PPORecipe, resume: bool = False) -> dict[str, Any]:
    """PPO against a reward with a KL penalty to the starting model (see the module doc)."""
    return rl(recipe, resume)


def grpo(recipe: GRPORecipe, resume: bool = False) -> dict[str, Any]:
    """GRPO with group-normalised rewards (see the module doc)."""
    return rl(recipe, resume)


# ------------------------------------------------------------------------------------ report
def plot_reward_kl(run_dir: Path, path: Path | None = None) -> Path | None:
    """Reward and KL to the SFT model against step on two axes: reward hacking shows as reward
    rising while KL runs away."""
    from ..train.logger import read_metrics
    from ..train.report import save_figure

    rows = [r for r in read_metrics(run_dir) if "reward" in r and "kl" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = [r["step"] for r in rows]
    window = max(1, len(rows) // 40)  # each rollout is noisy: a moving average over it, raw faintly behind

    def smooth(xs: list[float]) -> list[float]:
        out, total = [], 0.0
        for i, x in enumerate(xs):
            total += x - (xs[i - window] if i >= window else 0.0)
            out.append(total / min(i + 1, window))
        return out

    rewards, kls = [r["reward"] for r in rows], [r["kl"] for r in rows]
    ax.plot(steps, rewards, color="tab:blue", alpha=0.2, linewidth=0.8)
    ax.plot(steps, smooth(rewards), color="tab:blue", label="reward")
    ax.set_xlabel("step")
    ax.set_ylabel("reward (mean of the rollout)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(steps, kls, color="tab:red", alpha=0.2, linewidth=0.8)
    ax2.plot(steps, smooth(kls), color="tab:red", label="KL to SFT")
    ax2.set_ylabel("KL to the SFT model (nats per completion)", color="tab:red")
    ax.grid(alpha=0.3)
    return save_figure(fig, path or Path(run_dir) / "reward_kl.png")


def write_rl_report(run_dir: Path, recipe: RLRecipe, summary: dict[str, Any]) -> None:
    from ..train.report import write_report
    from ..utils import write_text_atomic
    from .dpo import task_table

    t, d = summary["trainable"], summary["data"]
    extra = [("method", recipe.method), ("starting model", str(recipe.model)), ("reward", summary["reward"]),
             ("trainable parameters", f"{t['trainable']:,} of {t['total']:,} ({t['percent']:.3f}%)"),
             ("training prompts", d["train"]), ("prompts too long (skipped)", d["too_long"]),
             ("bad rows skipped", d["bad_rows"]), ("rollout batches", summary["rollouts"])]
    if isinstance(recipe, PPORecipe):
        extra.append(("final KL coefficient", f"{summary['kl_coef']:.4g}"))
    write_report(run_dir, f"{recipe.kind.upper()} run {run_dir.name} ({recipe.method})", summary, extra)
    lines = []
    if plot_reward_kl(run_dir):
        lines += ["", "## Reward and KL over training", "",
                  "Reward hacking shows as reward climbing while the KL to the SFT model runs away.", "",
                  "![reward and KL](reward_kl.png)", ""]
    kl = summary.get("kl_to_sft")
    if kl:
        lines += [f"KL to the SFT model on {kl['prompts']} held-out prompts: {kl['kl']:.3f} nats per completion "
                  f"(mean length {kl['length']:.1f} tokens).", ""]
    w = summary.get("win_rate")
    if w:
        lines += [f"Reward-model win rate against the SFT model on {w['prompts']} held-out prompts (greedy answers, "
                  f"judge {w['judge']}): {w['win_rate']:.1%} [95% CI {w['ci'][0]:.1%}, {w['ci'][1]:.1%}]; mean "
                  f"reward {w['reward_sft']:.3f} (SFT) -> {w['reward_aligned']:.3f}.", ""]
    lines += task_table(summary)
    report = run_dir / "report.md"
    write_text_atomic(report, report.read_text(encoding="utf-8") + "\n".join(lines))
