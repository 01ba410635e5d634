"""Model room: `ModelConfig`, presets, the one `Transformer` (dense or mixture of experts), its KV
cache, checkpoint I/O."""

from .cache import CacheFullError, KVCache
from .config import ConfigError, ModelConfig, list_presets, preset
from .moe import MoE, RouterLosses, router_losses
from .transformer import ContextLengthError, Transformer

__all__ = [
    "CacheFullError", "ConfigError", "ContextLengthError", "KVCache", "ModelConfig", "MoE", "RouterLosses",
    "Transformer", "list_presets", "preset", "router_losses",
]
