"""Choosing the training precision by measurement, and the machine's matmul peak for MFU."""

from __future__ import annotations

import contextlib

import torch

from ..utils import fast_bf16, matmul_flops  # noqa: F401  (matmul_flops: the MFU denominator, imported from here)


def choose_precision(requested: str, device: torch.device) -> str:
    """"auto": bf16 on CUDA GPUs that support it, fp16 on older GPUs, and on CPUs bf16 only if
    a quick probe shows bf16 matmuls at least as fast as fp32 (native bf16: AVX512-BF16, AMX)."""
    if requested != "auto":
        if requested not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"train.precision={requested!r} is not supported: use auto, fp32, bf16 or fp16")
        if requested == "fp16" and device.type != "cuda":
            raise ValueError("train.precision=fp16 needs a CUDA device (its grad scaler is CUDA-only here): use bf16 or fp32")
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if fast_bf16(device) else "fp32"


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
