"""Small helpers every room may use: atomic writes (text, JSON, figures), device and dtype choice."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # torch is imported lazily: the tokenizer room uses this module without torch
    import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step, so a
    crash never leaves a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def new_figure(width: float = 7, height: float = 4, ncols: int = 1, dpi: int = 100) -> tuple[Any, Any]:
    """A matplotlib figure and its axes, drawn off screen (no pyplot state, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols)


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Write a figure as a PNG, atomically: the one plot writer."""
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def default_device() -> "torch.device":
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
               "bf16": "bfloat16", "bfloat16": "bfloat16"}


def parse_dtype(dtype: "str | torch.dtype | None", device: "torch.device | str" = "cpu") -> "torch.dtype":
    """`None`/"auto": bf16 on CUDA GPUs that support it, fp16 on other GPUs, fp32 on CPU (this
    project's CPUs have no fast bf16 matmul, so low precision there is opt-in)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        device = torch.device(device)
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype={dtype!r} is not supported: use one of auto, {', '.join(DTYPE_NAMES)}")
    return getattr(torch, DTYPE_NAMES[dtype])


@functools.lru_cache(maxsize=None)
def matmul_flops(device: str = "cpu", dtype: "torch.dtype | None" = None, n: int = 1024) -> float:
    """Measured FLOP/s of an n×n matmul on `device` (best of a few; fp32 by default): the MFU
    denominator, and the probe that says whether bf16 pays on this CPU."""
    import time

    import torch

    dtype = dtype or torch.float32
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


def fast_bf16(device: "torch.device | str") -> bool:
    """Whether bf16 compute pays on `device`: CUDA GPUs that support it, and CPUs whose bf16
    matmuls a quick probe finds at least as fast as fp32 (native bf16: AVX512-BF16, AMX; without
    it bf16 runs ~100x slower)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return matmul_flops("cpu", torch.bfloat16, 256) >= matmul_flops("cpu", torch.float32, 256)
    return False
