"""Alignment: preference data, reward models, DPO / IPO, PPO, GRPO, AI feedback (in progress:
the losses, preference data, reward models and DPO have landed)."""

from .dpo import DPOObjective, DPORecipe, dpo
from .losses import (bradley_terry_loss, dpo_loss, gae, group_advantages, kl_per_token, ppo_policy_loss,
                     ppo_value_loss, sequence_logps)
from .prefs import Pair, builtin_preferences, pairs_from_ranked, read_preferences
from .reward import RewardModel, RewardRecipe, load_reward_model, reward, save_reward_model

__all__ = ["DPOObjective", "DPORecipe", "Pair", "bradley_terry_loss", "builtin_preferences", "dpo", "dpo_loss", "gae",
           "group_advantages", "kl_per_token", "pairs_from_ranked", "ppo_policy_loss", "ppo_value_loss",
           "read_preferences", "reward", "RewardModel", "RewardRecipe", "load_reward_model", "save_reward_model",
           "sequence_logps"]
