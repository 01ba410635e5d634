"""Alignment: preference data, reward models, DPO / IPO, PPO, GRPO and AI feedback (RLAIF).

    llmkit.align.reward(RewardRecipe(...))    # Bradley-Terry reward model
    llmkit.align.dpo(DPORecipe(...))          # DPO / IPO against the frozen start model
    llmkit.align.ppo(PPORecipe(...))          # PPO with a KL penalty, value head, GAE
    llmkit.align.grpo(GRPORecipe(...))        # GRPO with verifiable rewards (arith-exact, ...)
    llmkit.align.label(model, judge, prompts, out)   # AI feedback into preference JSONL
"""

from .dpo import DPOObjective, DPORecipe, dpo
from .feedback import label, label_preferences
from .losses import (bradley_terry_loss, dpo_loss, gae, group_advantages, kl_per_token, ppo_policy_loss,
                     ppo_value_loss, sequence_logps)
from .prefs import Pair, builtin_preferences, pairs_from_ranked, read_preferences
from .reward import RewardModel, RewardRecipe, load_reward_model, reward, save_reward_model
from .rewards import ModelReward, RewardError, parse_reward
from .rl import GRPORecipe, PPORecipe, Prompt, RolloutObjective, grpo, ppo, read_prompts

__all__ = ["DPOObjective", "DPORecipe", "GRPORecipe", "ModelReward", "PPORecipe", "Pair", "Prompt", "RewardError",
           "RolloutObjective", "bradley_terry_loss", "builtin_preferences", "dpo", "dpo_loss", "gae", "grpo",
           "group_advantages", "kl_per_token", "label", "label_preferences", "pairs_from_ranked", "parse_reward",
           "ppo", "ppo_policy_loss", "ppo_value_loss", "read_preferences", "read_prompts", "reward", "RewardModel",
           "RewardRecipe", "load_reward_model", "save_reward_model", "sequence_logps"]
