"""Rollout methods: PPO with a KL penalty to the SFT model, and GRPO with verifiable rewards.

    llmkit align ppo  --model runs/sft --reward runs/rm --prompts prompts.jsonl --out runs/ppo kl=0.05
    llmkit align grpo --model runs/sft --reward arith-exact --prompts builtin:arith --out runs/grpo

Both run on the one Trainer: the "loader" is a `RolloutLoader` (`llmkit.align.rollouts`), which
samples a batch of completions from the current policy, scores them, works out advantages, and
then hands the Trainer shuffled micro-batches of that batch for `rollout.epochs` passes before it
samples the next. The objective (`llmkit.align.policy.RolloutObjective`) is the clipped surrogate
on those micro-batches, plus

- PPO: a value head on the policy's last hidden state (shared trunk), the clipped value loss,
  and the reward of the reward model at the last token minus β·KL(π‖π_sft) at every token, with
  GAE (γ, λ) for the advantages; `kl_target` turns on adaptive KL control (Ziegler et al. 2019);
- GRPO: `rollout.samples_per_prompt` completions per prompt, each one's advantage its reward
  normalised within its group, no value head, and β·KL (the k3 estimator) in the loss.

Prompts: `llmkit.align.prompts`. Every logged step carries the latest rollout's reward, KL to the
SFT model, response length and skipped rewards next to the clip fraction, entropy and (PPO) value
loss; report.md plots reward and KL together.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..align.dpo import disable_dropout
from ..align.measure import answers, kl_to_reference, win_rate
from ..align.policy import PolicyWithValue, RolloutObjective
from ..align.prompts import Prompt, builtin_prompt_tasks, builtin_prompts, read_prompts
from ..align.rewards import ModelReward, WeightedReward, parse_reward
from ..align.rollouts import Advantages, GroupRolloutSection, RolloutCollector, RolloutLoader, RolloutSection
from ..data.dataset import DataError
from ..data.instruct import is_builtin, split_validation
from ..models.transformer import Transformer
from ..peft import LoRAConfig
from ..train.logger import read_metrics
from ..train.precision import choose_precision
from ..train.trainer import Trainer
from ..utils import new_figure, save_figure
from .finetune import FinetuneTrain
from .job import EvalSection, Job, eval_tasks
from .report import task_table

log = logging.getLogger(__name__)

DEFAULT_LR = {"full": 1e-5, "lora": 2e-4, "qlora": 2e-4}


@dataclass
class PromptSection:
    path: str = "builtin:arith"  # JSONL of prompt (+ answer, task), or builtin[:arith,sorting]
    val_path: str | None = None  # held-out prompts; default: builtin's test split, or val_fraction of the file
    val_fraction: float = 0.05
    builtin_train_size: int | None = None  # builtin: this many fresh training questions per task
    skip_bad_rows: bool = False


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


def read_rl_prompts(recipe: RLRecipe, tokenizer, context: int) -> tuple[list[Prompt], list[Prompt], dict[str, Any]]:
    p = recipe.prompts
    train, bad = read_prompts(p.path, p.skip_bad_rows, p.builtin_train_size)
    if p.val_path:
        val, _ = read_prompts(p.val_path, p.skip_bad_rows)
    elif is_builtin(p.path):
        val = builtin_prompts("test", builtin_prompt_tasks(p.path))
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
    from ..models.resolve import load_local

    _, ref, other = load_local(recipe.reference, purpose="reference=")
    if other.backend.get_vocab() != tokenizer.backend.get_vocab():
        raise ValueError(f"reference={recipe.reference}: its tokenizer differs from the policy's ({other.vocab_size} "
                         f"vs {tokenizer.vocab_size} tokens, or other ids), so their per-token log-probs cannot "
                         "be compared: use a reference trained from the same base (or leave reference unset)")
    return ref.eval().requires_grad_(False)


def judge_for(recipe: RLRecipe, reward_fn: WeightedReward, device) -> ModelReward | None:
    if recipe.eval.reward_model:
        return ModelReward(recipe.eval.reward_model, device)
    found = reward_fn.reward_models
    return found[0] if found else None


def plot_reward_kl(run_dir: Path, path: Path | None = None) -> Path | None:
    """Reward and KL to the SFT model against step on two axes: reward hacking shows as reward
    rising while KL runs away."""
    rows = [r for r in read_metrics(run_dir) if "reward" in r and "kl" in r]
    if not rows:
        return None
    fig, ax = new_figure()
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


def advantages_of(recipe: RLRecipe) -> Advantages:
    """The recipe's advantage settings, as the rollout collector takes them."""
    if isinstance(recipe, PPORecipe):
        return Advantages("ppo", recipe.kl, recipe.kl_target, recipe.kl_horizon, recipe.gamma, recipe.lam,
                          recipe.whiten_advantages, recipe.normalize_scores, recipe.missing_eos_penalty)
    return Advantages("grpo", kl=recipe.beta, scale_rewards=recipe.scale_rewards)


def objective_of(recipe: RLRecipe) -> RolloutObjective:
    r = recipe.rollout
    if isinstance(recipe, PPORecipe):
        return RolloutObjective("ppo", recipe.clip, r.temperature, recipe.vf_coef, recipe.vf_clip,
                                entropy_coef=recipe.entropy_coef)
    return RolloutObjective("grpo", recipe.clip, r.temperature, beta=recipe.beta, entropy_coef=recipe.entropy_coef)


def rl(recipe: RLRecipe, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Run (or resume) a PPO or GRPO job (by the recipe's type); returns its summary."""
    job = Job(recipe, resume, DEFAULT_LR, callbacks)
    cfg, info = job.train, job.info
    if info.enabled and cfg.distributed == "fsdp":
        raise ValueError("train.distributed=fsdp: rollouts sample from the whole model on each rank; use ddp")
    ppo = isinstance(recipe, PPORecipe)
    with job.setting_up():
        model, tokenizer = job.load_base(decoder_job="PPO" if ppo else "GRPO")
        builtin = is_builtin(recipe.prompts.path)
        reward_fn = parse_reward(recipe.reward, builtin_prompt_tasks(recipe.prompts.path)[0] if builtin else None,
                                 info.device)
        train_prompts, val_prompts, data_info = read_rl_prompts(recipe, tokenizer, model.config.context_window)
        reference = load_reference(recipe, model, tokenizer)  # GRPO with beta=0 still logs and reports the KL
        tasks = eval_tasks(recipe.eval, recipe.prompts.path, builtin_prompt_tasks)
    for module in [model, reference, *reward_fn.reward_models]:
        module.to(info.device)
    precision = choose_precision(cfg.precision, info.device)
    disable_dropout(model)
    before = job.evaluate_before(model, tokenizer, tasks)
    judge = judge_for(recipe, reward_fn, info.device) if job.is_main and val_prompts else None
    sft_answers = answers(model, tokenizer, val_prompts, recipe.rollout.max_new_tokens) if judge else []
    job.apply_method(model, tokenizer)
    policy = PolicyWithValue(model, value_head=ppo, trunk_grad=ppo and recipe.value_trunk_grad)
    collector = RolloutCollector(policy, reference, tokenizer, train_prompts, reward_fn, recipe.rollout,
                                 advantages_of(recipe), precision, cfg.seed, info.rank, info.world_size)
    loader = RolloutLoader(collector, cfg.micro_batch, recipe.rollout.epochs, cfg.seed)
    compat = {"model": model.config.to_dict(), "method": recipe.method, "kind": recipe.kind}
    trainer = Trainer(policy, objective_of(recipe), loader, cfg, job.run_dir, compat=compat, info=info,
                      callbacks=job.callbacks)
    summary = job.fit(trainer)
    summary.update({"kind": recipe.kind, "reward": reward_fn.__name__, "rollouts": loader.rollouts,
                    "kl_coef": collector.kl_coef, "data": data_info,
                    "score_norm": None if collector.score_norm is None else list(collector.score_norm),
                    "last_samples": loader.last.samples if loader.last else []})
    final = job.final_model(trainer)
    if job.is_main:
        job.evaluate_after(final.lm, tokenizer, tasks, before, summary)
        if val_prompts:
            summary["kl_to_sft"] = kl_to_reference(final, reference, tokenizer, val_prompts, recipe.rollout,
                                                   precision, cfg.seed)
        if judge is not None:
            aligned = answers(final.lm, tokenizer, val_prompts, recipe.rollout.max_new_tokens)
            summary["win_rate"] = win_rate(judge, val_prompts, sft_answers, aligned, cfg.seed)
    d = summary["data"]
    rows = [("reward", summary["reward"]), ("training prompts", d["train"]),
            ("prompts too long (skipped)", d["too_long"]), ("bad rows skipped", d["bad_rows"]),
            ("rollout batches", summary["rollouts"])]
    if ppo:
        rows.append(("final KL coefficient", f"{summary['kl_coef']:.4g}"))
    sections = [reward_kl_section(job.run_dir, summary) if job.is_main else [],
                task_table(summary, "Held-out tasks (test split, chat prompts)")]
    return job.finish(summary, f"{recipe.kind.upper()} run {job.run_dir.name} ({recipe.method})", rows, sections,
                      save=lambda: job.save_model(final.lm, tokenizer))


def ppo(recipe: PPORecipe, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """PPO against a reward with a KL penalty to the starting model (see the module doc)."""
    return rl(recipe, resume, callbacks)


def grpo(recipe: GRPORecipe, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """GRPO with group-normalised rewards (see the module doc)."""
    return rl(recipe, resume, callbacks)


def reward_kl_section(run_dir: Path, summary: dict[str, Any]) -> list[str]:
    """The reward-and-KL plot, the KL to the SFT model and the reward model's win rate, as markdown."""
    lines = []
    if plot_reward_kl(run_dir):
        lines += ["## Reward and KL over training", "",
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
    return lines


__all__ = ["GRPORecipe", "PPORecipe", "RLRecipe", "grpo", "ppo", "rl"]
