"""Training room: one Trainer loop, objectives, optimizers and schedules, checkpoints with exact
resume, distributed wrapping (DDP / FSDP2), metrics."""

from .checkpoint import CheckpointMismatchError, latest_checkpoint
from .config import TrainConfig
from .objectives import IGNORE_INDEX, CausalLM, Objective, Seq2SeqLM
from .optim import build_optimizer
from .schedule import Schedule, lr_at
from .trainer import Trainer

__all__ = ["CausalLM", "CheckpointMismatchError", "IGNORE_INDEX", "Objective", "Schedule", "Seq2SeqLM", "TrainConfig",
           "Trainer", "build_optimizer", "latest_checkpoint", "lr_at"]
