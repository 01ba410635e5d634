"""How many bytes a weight takes in the formats of `llmkit quantize` (`weight_only`): the one
account that the quantised Linears, `ModelConfig.weight_bytes` and `llmkit info` share.

int8: one int8 code per weight and one fp32 scale per output row. int4: two codes per byte and one
fp32 scale per group of `group_size` input columns; a Linear whose width is not a multiple of the
group stays fp32. Pure arithmetic, no tensors, so that analytical sizes can use it.
"""

from __future__ import annotations

WEIGHT_FORMATS = ("int8", "int4")
INT4_GROUP_SIZE = 64  # inputs per int4 scale, the default of `llmkit quantize --group-size`
SCALE_BYTES = 4  # the scales are fp32
FULL_BYTES = 4  # what stays unquantised is fp32: `llmkit quantize` loads the model in fp32


def int4_groups(in_features: int, group_size: int = INT4_GROUP_SIZE) -> bool:
    """Whether int4 can quantise a Linear this wide (an even group size that divides its width)."""
    return group_size > 0 and group_size % 2 == 0 and in_features % group_size == 0


def linear_bytes(out_features: int, in_features: int, method: str, group_size: int = INT4_GROUP_SIZE) -> int:
    """Bytes of one Linear weight (its bias aside) as `quantize_model(..., method, group_size)` stores it."""
    if method == "int8":
        return out_features * in_features + SCALE_BYTES * out_features
    if method == "int4":
        if not int4_groups(in_features, group_size):
            return FULL_BYTES * out_features * in_features
        return out_features * in_features // 2 + SCALE_BYTES * out_features * (in_features // group_size)
    raise ValueError(f"method={method!r}: use one of {', '.join(WEIGHT_FORMATS)}")
