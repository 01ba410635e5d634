"""Weight formats shared by every room: int8 (per output channel) and int4 (in groups of input
columns) weight-only quantisation for inference (`weight_only`), their sizes in bytes (`layout`,
what `llmkit info` reports and `llmkit quantize` writes), and NF4 for QLoRA (`nf4`). GGUF's own
block types (Q8_0, Q4_0) are written by `llmkit.models.gguf`."""

from .layout import INT4_GROUP_SIZE, linear_bytes
from .nf4 import NF4_LEVELS, NF4Linear, NF4Weight, quantize_absmax_int4, quantize_model_nf4, quantize_nf4
from .weight_only import (Int4Linear, Int8Linear, is_quantized, quantization_config, quantize_int4, quantize_int8,
                          quantize_model)

__all__ = ["INT4_GROUP_SIZE", "Int4Linear", "Int8Linear", "NF4_LEVELS", "NF4Linear", "NF4Weight", "is_quantized",
           "linear_bytes", "quantization_config", "quantize_absmax_int4", "quantize_int4", "quantize_int8",
           "quantize_model", "quantize_model_nf4", "quantize_nf4"]
