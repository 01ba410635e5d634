"""Weight formats shared by every room: NF4 (QLoRA) now; int8 / int4 and GGUF block types follow."""

from .nf4 import NF4_LEVELS, NF4Linear, NF4Weight, quantize_absmax_int4, quantize_model_nf4, quantize_nf4

__all__ = ["NF4_LEVELS", "NF4Linear", "NF4Weight", "quantize_absmax_int4", "quantize_model_nf4", "quantize_nf4"]
