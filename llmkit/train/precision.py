"""Choosing the training precision by measurement, and the machine's matmul peak for MFU."""

from __future__ import annotations

import contextlib
import functools
import time

import torch


@functools.lru_cache(maxsize=None)
def matmul_flops(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 1024) -> float:
    """Measured FLOP/s of an n×n matmul on `device` (best of a few), the MFU denominator."""
    dev = torch.device(device)
    # a private generator: probing must not move the global RNG that training relies on
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)
    best = float("inf")
    for _ in range(6):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


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
    if device.type == "cpu":
        fast = matmul_flops("cpu", torch.bfloat16, 256) >= matmul_flops("cpu", torch.float32, 256)
        return "bf16" if fast else "fp32"
    return "fp32"


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
