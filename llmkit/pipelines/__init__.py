"""Pipelines: the jobs. Every training verb (pretrain, finetune, reward, DPO, PPO, GRPO) is a short
function over the one job runner (`job.Job`: run dir, base model and PEFT method, before/after
evaluation, FSDP-aware final save, report), and the multi-stage recipes chain them (`quickstart`,
`align recipe`, `quantize`, `init`)."""

from .init import init_model

__all__ = ["init_model"]
