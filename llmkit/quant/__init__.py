"""Weight formats shared by every room: NF4 (QLoRA), int8 / int4 weight-only for inference; GGUF
block types follow."""

from .nf4 import NF4_LEVELS, NF4Linear, NF4Weight, quantize_absmax_int4, quantize_model_nf4, quantize_nf4
from .weight_only import (Int4Linear, Int8Linear, is_quantized, quantization_config, quantize_int4, quantize_int8,
                          quantize_model)

__all__ = ["Int4Linear", "Int8Linear", "NF4_LEVELS", "NF4Linear", "NF4Weight", "is_quantized", "quantization_config",
           "quantize_absmax_int4", "quantize_int4", "quantize_int8", "quantize_model", "quantize_model_nf4",
           "quantize_nf4"]
