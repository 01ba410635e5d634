"""The C++ decoding library for CPUs: few-row linear kernels (`csrc/rows.h`, entry points in `csrc/rows.cpp`):
fp32, int8 and int4 weights read once, in their stored format, for up to `MAX_ROWS` rows of input (a decoding
step, a speculative check); and a whole decoding step over them (`csrc/step.cpp`, driven by
`llmkit.models.decode_step`).

Decoding is bound by reading the weights. For one row torch's BLAS reads them at the bandwidth, but for two
to eight rows its sgemm packs the weight first (a second pass over it, 1.7x the time of one row on
SmolLM2), and the quantised formats have no fast path in torch at all; these kernels read each weight
row once for all rows. They are built on first use with the system's C++ compiler for this CPU
(``-march=native``, about 2 s, cached under ``$LLMKIT_HOME/kernels`` or ``$LLMKIT_KERNELS_DIR``) and called
through ctypes.
Without a compiler, on another device, or with ``LLMKIT_KERNELS=0`` the callers keep their torch
paths; the reason is logged once. Written by hand: no maintained library ships these formats' kernels.

    y = rows_linear(x, weight)               # x (rows <= 16, in) fp32 on CPU; None when the kernel cannot run
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MAX_ROWS = 16  # a decoding batch; past it torch's blocked matmul wins
CSRC = Path(__file__).with_name("csrc")
SOURCES = (CSRC / "rows.cpp", CSRC / "step.cpp")  # one library; both include rows.h
_lib: ctypes.CDLL | None = None
_tried = False


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise RuntimeError("no C++ compiler (c++ or g++) on PATH")
    flags = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
    # the library is specific to this source, these flags and this CPU's instruction set
    code = b"".join(f.read_bytes() for f in sorted(CSRC.iterdir()) if f.suffix in (".cpp", ".h"))
    key = hashlib.sha256(code + " ".join([compiler, *flags, _cpu_flags()]).encode()).hexdigest()[:16]
    home = Path(os.environ.get("LLMKIT_HOME", Path.home() / ".cache" / "llmkit"))
    path = Path(os.environ.get("LLMKIT_KERNELS_DIR") or home / "kernels") / f"rows-{key}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            built = Path(tmp) / path.name
            run = subprocess.run([compiler, *flags, "-o", str(built), *map(str, SOURCES)], capture_output=True, text=True)
            if run.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {run.stderr.strip()[-500:]}")
            os.replace(built, path)  # atomic: a concurrent build or a crash never leaves half a library
    lib = ctypes.CDLL(str(path))
    i64, ptr, thr = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.rows_f32.argtypes = [ptr, i64, i64, ptr, i64, ptr, thr]
    lib.rows_i8.argtypes = [ptr, i64, i64, ptr, ptr, i64, ptr, thr]
    lib.rows_i4.argtypes = [ptr, i64, i64, ptr, ptr, i64, i64, ptr, thr]
    lib.decode_step.argtypes = [ptr, i64, ptr, ptr, ptr, i64, ptr, thr]
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first call; None (said once in the log) where they cannot be."""
    global _lib, _tried
    if not _tried:
        if os.environ.get("LLMKIT_KERNELS", "1") == "0":
            log.info("LLMKIT_KERNELS=0: few-row linear kernels off, decoding uses torch's matmul")
        else:
            try:
                _lib = _build()
            except Exception as e:  # noqa: BLE001 - no compiler, a failed build: torch's paths still work
                log.warning("the few-row linear kernels are unavailable (%s): decoding uses torch's matmul", e)
        _tried = True  # not when Ctrl-C stopped the build: the next call tries again
    return _lib


def usable(x: torch.Tensor) -> bool:
    """Whether a kernel can take input `x` (batch dims, then features): few fp32 rows on the CPU, no autograd."""
    return (x.dtype == torch.float32 and not torch.is_grad_enabled() and x.device.type == "cpu"
            and x.numel() <= MAX_ROWS * x.shape[-1] and not torch.is_autocast_enabled("cpu")
            and (_lib is not None or library() is not None))


def _call(fn, x: torch.Tensor, out_features: int, *args) -> torch.Tensor:
    """`fn` on `x`'s rows into a new (..., out_features) tensor; kept lean: a decoding step makes 200+ calls."""
    shape = x.shape
    rows = x if x.is_contiguous() else x.contiguous()
    y = torch.empty(shape[:-1] + (out_features,), dtype=torch.float32)
    fn(rows.data_ptr(), rows.numel() // shape[-1], shape[-1], *args, y.data_ptr(), torch.get_num_threads())
    return y


def _codes(codes: torch.Tensor, scale: torch.Tensor, width: int) -> bool:
    """Whether quantised weights are what the kernels read: contiguous CPU codes `width` wide, fp32 scales."""
    return (codes.device.type == "cpu" and codes.is_contiguous() and codes.dim() == 2 and codes.shape[1] == width
            and scale.is_contiguous() and scale.dtype == torch.float32)


def rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """``F.linear(x, weight, bias)`` for an fp32 `weight`, or None where the kernel does not apply."""
    if not (usable(x) and weight.dtype == torch.float32 and weight.device.type == "cpu" and weight.is_contiguous()
            and weight.dim() == 2 and weight.shape[1] == x.shape[-1]):
        return None
    y = _call(_lib.rows_f32, x, weight.shape[0], weight.data_ptr(), weight.shape[0])
    return y if bias is None else y + bias


def rows_int8(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor | None:
    """x @ (q * scale[:, None]).t() for int8 codes `q` (out, in), or None where the kernel does not apply."""
    if not (usable(x) and _codes(q, scale, x.shape[-1])):
        return None
    return _call(_lib.rows_i8, x, q.shape[0], q.data_ptr(), scale.data_ptr(), q.shape[0])


def rows_int4(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor | None:
    """x @ W.t() for int4 `packed` codes in llmkit's layout (see `weight_only`), or None where the kernel does
    not apply (it takes groups of a multiple of 16 inputs)."""
    if not usable(x) or group_size % 16 or not _codes(packed, scale, x.shape[-1] // 2):
        return None
    out = packed.shape[0]
    return _call(_lib.rows_i4, x, out, packed.data_ptr(), scale.data_ptr(), group_size, out)
