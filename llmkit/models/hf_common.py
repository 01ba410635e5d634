"""What every Hugging Face checkpoint reader shares: its error, the activation names it
understands, the check that a config can be written, and tensor renaming by name tables."""

from __future__ import annotations

import re
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


def key_patterns(table: dict[str, str], src_prefix: str = "", dst_prefix: str = "") -> list[tuple[re.Pattern, str]]:
    """(regex of a source name, destination template) pairs of a {source: destination} name
    table; each ``{}`` stands for one name part (a layer index, ``weight`` or ``bias``)."""
    return [(re.compile(re.escape(src_prefix + src).replace(r"\{\}", "([A-Za-z0-9_]+)") + "$"), dst_prefix + dst)
            for src, dst in table.items()]


def rename(key: str, patterns: list[tuple[re.Pattern, str]]) -> str | None:
    """`key` renamed by the first pattern that matches it (None: none does)."""
    for pattern, dst in patterns:
        m = pattern.match(key)
        if m:
            for part in m.groups():
                dst = dst.replace("{}", part, 1)
            return dst
    return None
