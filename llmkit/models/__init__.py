"""Model room: `ModelConfig`, presets, the one `Transformer`, its KV cache, checkpoint I/O."""

from .cache import CacheFullError, KVCache
from .config import ConfigError, ModelConfig, list_presets, preset
from .transformer import ContextLengthError, Transformer

__all__ = [
    "CacheFullError", "ConfigError", "ContextLengthError", "KVCache", "ModelConfig", "Transformer",
    "list_presets", "preset",
]
