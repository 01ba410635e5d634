"""Alignment: the pieces of preference and rollout training. Losses (checked against trl),
preference data, reward models, the DPO objective, prompts, rollouts and the policy with its
clipped-surrogate objective, reward functions, measurements against the SFT model, and AI
feedback (RLAIF). The jobs that train with them live in `llmkit.pipelines`:

    llmkit.reward(RewardRecipe(...))    # Bradley-Terry reward model
    llmkit.dpo(DPORecipe(...))          # DPO / IPO against the frozen start model
    llmkit.ppo(PPORecipe(...))          # PPO with a KL penalty, value head, GAE
    llmkit.grpo(GRPORecipe(...))        # GRPO with verifiable rewards (arith-exact, ...)
    llmkit.align.label(model, judge, prompts, out)   # AI feedback into preference JSONL
"""

from .dpo import DPOObjective
from .feedback import label, label_preferences
from .losses import (bradley_terry_loss, dpo_loss, gae, group_advantages, kl_per_token, ppo_policy_loss,
                     ppo_value_loss, sequence_logps)
from .prefs import Pair, builtin_preferences, pairs_from_ranked, read_preferences
from .measure import pair_accuracy
from .policy import PolicyWithValue, RolloutObjective
from .prompts import Prompt, read_prompts
from .reward import RewardModel, RewardObjective, load_reward_model, save_reward_model
from .rewards import ModelReward, RewardError, parse_reward
from .rollouts import RolloutCollector, RolloutLoader

__all__ = ["DPOObjective", "ModelReward", "Pair", "PolicyWithValue", "Prompt", "RewardError", "RewardModel",
           "RewardObjective", "RolloutCollector", "RolloutLoader", "RolloutObjective", "bradley_terry_loss",
           "builtin_preferences", "dpo_loss", "gae", "group_advantages", "kl_per_token", "label", "label_preferences",
           "load_reward_model", "pair_accuracy", "pairs_from_ranked", "parse_reward", "ppo_policy_loss",
           "ppo_value_loss", "read_preferences", "read_prompts", "save_reward_model", "sequence_logps"]
