"""What every checkpoint reader shares: its error, and the HF activation names it understands."""

from __future__ import annotations

from typing import Any

from .config import ConfigError, ModelConfig


class CheckpointError(ValueError):
    """A checkpoint cannot be read: the message says which file or tensor and what to do."""


# HF's activation names -> ours
HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                  "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu"}


def require(cfg: ModelConfig, **expected: Any) -> None:
    """Refuse (`ConfigError`) a config whose fields differ from what its HF format can write."""
    for name, value in expected.items():
        if getattr(cfg, name) != value:
            raise ConfigError(f"family={cfg.family!r} needs {name}={value!r} to be written in HF format, "
                              f"but the config has {name}={getattr(cfg, name)!r}")
