"""The `train:` section every training job shares (pretrain, finetune, reward, DPO, PPO, GRPO); each
job subclasses it only to change defaults."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    micro_batch: int = 8  # sequences per forward pass on each rank
    grad_accum: int = 1  # micro-batches per optimizer step
    steps: int = 200  # optimizer steps
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # final lr = lr · min_lr_ratio
    warmup_steps: int = 20
    schedule: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.1  # not applied to norms, biases, embeddings
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0  # 0 = off
    precision: str = "auto"  # auto (bf16 only where measured fast) | fp32 | bf16 | fp16 (CUDA)
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False
    distributed: str = "ddp"  # under torchrun: ddp | fsdp
    seed: int = 0
    log_every: int = 1
    eval_every: int = 50  # 0 = only at the end
    eval_batches: int = 8
    sample_every: int = 0  # 0 = only at the end
    sample_prompts: list[str] = field(default_factory=lambda: ["def ", "import "])
    sample_tokens: int = 48
    save_every: int = 100  # 0 = only at the end
    keep_last: int = 2  # checkpoints kept
    time_budget_s: float | None = None  # stop early (and cleanly) when this much time has passed
    replan: bool = True  # with a time budget: fewer steps when training is too slow, so the schedule ends in time
    early_stopping: int = 0  # stop after this many evaluations without a better validation loss (0 = off)
    restore_best: bool = True  # with early stopping: end with the weights of the best validation loss
    device: str | None = None  # default: CUDA if present, else CPU

    def __post_init__(self) -> None:
        for name in ("micro_batch", "grad_accum", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}={getattr(self, name)} must be at least 1")
        if self.lr <= 0:
            raise ValueError(f"train.lr={self.lr} must be positive")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"train.time_budget_s={self.time_budget_s} must be positive (or null: no budget)")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"train.schedule={self.schedule!r} is not supported: use cosine, linear or constant")
        if self.distributed not in ("ddp", "fsdp"):
            raise ValueError(f"train.distributed={self.distributed!r} is not supported: use ddp or fsdp")
        if len(self.betas) != 2:
            raise ValueError(f"train.betas={self.betas} must hold two numbers")
