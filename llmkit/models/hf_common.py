"""What every Hugging Face checkpoint reader shares: its error, the activation names it
understands, the check that a config can be written, and tensor renaming by name tables."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from .config import ConfigError, ModelConfig


INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


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


# ------------------------------------------------------------------------------- file access
def _weight_files(path: Path) -> tuple[list[Path], dict[str, str] | None]:
    index = path / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({path / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index} names shard(s) {missing} that are not in {path}: copy the missing shards")
        return files, weight_map
    if (path / SINGLE_FILE).exists():
        return [path / SINGLE_FILE], None
    found = sorted(p.name for p in path.glob("*.safetensors"))
    if found:
        return [path / f for f in found], None
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise CheckpointError(
            f"{path} holds only pickled PyTorch weights (*.bin/*.pt); llmkit reads safetensors only, since "
            "unpickling can run arbitrary code. Convert once with transformers: "
            "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)"
        )
    raise CheckpointError(f"no *.safetensors weights in {path}: is this a Hugging Face model directory?")


def _open(file: Path):
    try:
        return safe_open(str(file), framework="pt")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {file}: it is truncated or not a safetensors file ({e}); "
                              "copy or download it again") from e


def _config_json(path: Path) -> dict[str, Any]:
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{path} has no config.json: a Hugging Face model directory needs one")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from e
