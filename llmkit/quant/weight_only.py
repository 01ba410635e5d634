"""Weight-only quantisation for inference: int8 per output channel and int4 in groups along the
input dimension, both symmetric; activations stay in floating point.

    quantize_model(llm.model, "int8")       # every block Linear and the output head, in place
    save_pretrained(llm.model, "m-int8")    # config.json gains quantization_config; loads back quantised

Decode is bound by reading the weights, so a quarter (an eighth) of the bytes can be up to 4x (8x)
faster — but only with a kernel that reads the codes directly. Dequantising a whole weight per call
is slower than fp32, and torch's `_weight_int8pack_mm` ran at 0.2-0.9 GB/s here. For a few rows of
activations (decode, small batches) both Linears therefore read the codes directly, each weight row
once for all rows of the batch, so the fp32 weight never exists: on a CPU through the C++ kernels of
`llmkit.quant.kernels` (and whole decoding steps through `llmkit.models.decode_step`), elsewhere or
without a compiler through a `torch.compile`d fused multiply-and-reduce. More rows than that
(prefill, big batches) dequantise one cache-sized tile of output rows at a time and use the ordinary
matmul on it.

The int4 layout: within each group of `group_size` input columns, byte j holds element j in its
low nibble and element j + group_size/2 in its high nibble (codes -7..7 stored as 1..15), so the
fused kernel multiplies each nibble plane by a contiguous half of the activations.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .layout import INT4_GROUP_SIZE, int4_groups

log = logging.getLogger(__name__)

QUANT_METHOD = "llmkit"  # config.json's quantization_config.quant_method for these formats
INT8_FUSED_MAX_ROWS = 16  # up to this many rows the fused kernel beats dequantise + matmul (measured)
INT4_FUSED_MAX_ROWS = 4
TILE_ELEMENTS = 1 << 20  # dequantised tile: 4 MB of fp32, stays in cache for the matmul


# ------------------------------------------------------------------------------- the kernels
def _int8_rows(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (rows, in) float32 times int8 q (out, in): computed as (out, rows) so that each weight row
    is read once for every row of x."""
    return ((q.to(torch.float32)[:, None, :] * x[None]).sum(-1) * scale[:, None]).t()


def _int4_rows(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    out_f, groups = scale.shape
    half = packed.shape[1] // groups
    p = packed.reshape(out_f, groups, half).to(torch.int32)
    low = ((p & 15) - 8).to(torch.float32)
    high = ((p >> 4) - 8).to(torch.float32)
    xg = x.reshape(x.shape[0], groups, 2, half)
    s = (low[:, None] * xg[None, :, :, 0] + high[:, None] * xg[None, :, :, 1]).sum(-1)  # (out, rows, groups)
    return (s * scale[:, None, :]).sum(-1).t()


_COMPILED: dict[str, Callable[..., torch.Tensor] | None] = {}
_SEEN: set[tuple[Any, ...]] = set()  # (kernel, weight shape, one row?, device) already compiled for


def _fused(name: str, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor] | None:
    """`fn` compiled once (dynamic in the number of rows), or None where compiling fails (no C++
    compiler, say): callers then take the tiled dequantise path, never the eager formula, which
    would build an (out, rows, in) tensor."""
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn, dynamic=True)
    return _COMPILED[name]


def _run_fused(name: str, fn: Callable[..., Any], *args: torch.Tensor) -> Any:
    kernel = _fused(name, fn)
    if kernel is None:
        return None
    try:
        key = (name, *(a.shape for a in args[1:]), args[0].shape[0] == 1, args[0].device)
        if key in _SEEN:
            return kernel(*args)
        # a first call may compile: one graph serves every row count > 1, but each weight shape
        # whose sizes happen to coincide (a square q_proj) adds one, so allow more than dynamo's
        # default of 8 (past it dynamo would run the formula eagerly). Set only here: the patch
        # costs more per call than the kernel's own overhead.
        with torch._dynamo.config.patch(recompile_limit=64):
            y = kernel(*args)
        _SEEN.add(key)
        return y
    except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, once, loudly
        log.warning("the fused %s kernel could not be compiled (%s): using dequantise + matmul", name, e)
        _COMPILED[name] = None
        return None


def _each(kernel: Callable[..., torch.Tensor]) -> Callable[..., tuple[torch.Tensor, ...]]:
    """`kernel` over several (codes, scale) pairs and one input, as one function: compiled, the
    group costs one call's overhead (which dominates at decode sizes) instead of one per layer."""
    def run(x: torch.Tensor, *pairs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(kernel(x, pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2))

    return run


def _tiled_linear(x: torch.Tensor, out_features: int, tile_rows: int,
                  dequant: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """x @ W.t() where `dequant(i, j)` gives rows i:j of W in x's dtype, one tile at a time."""
    out = torch.empty(x.shape[0], out_features, dtype=x.dtype, device=x.device)
    for i in range(0, out_features, tile_rows):
        j = min(out_features, i + tile_rows)
        torch.matmul(x, dequant(i, j).t(), out=out[:, i:j])
    return out


# ------------------------------------------------------------------------------- the formats
def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes and one fp32 scale per output row: w ≈ q * scale[:, None], |error| <= scale / 2."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(w: torch.Tensor, group_size: int = INT4_GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """int4 codes in [-7, 7] packed two per byte (layout in the module docstring) and one fp32
    scale per group of `group_size` input columns: w ≈ q * scale, |error| <= scale / 2."""
    out_f, in_f = w.shape
    if not int4_groups(in_f, group_size):
        raise ValueError(f"in_features={in_f} is not a multiple of group_size={group_size} (even)")
    g = w.float().reshape(out_f, in_f // group_size, group_size)
    scale = (g.abs().amax(dim=-1) / 7).clamp_min(1e-12)
    nib = (torch.round(g / scale[..., None]).clamp(-7, 7) + 8).to(torch.uint8)  # 1..15
    half = group_size // 2
    packed = nib[..., :half] | (nib[..., half:] << 4)
    return packed.reshape(out_f, in_f // 2), scale


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, group_size: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    out_f, groups = scale.shape
    p = packed.reshape(out_f, groups, group_size // 2)
    q = torch.cat([(p & 0xF).to(torch.int8) - 8, (p >> 4).to(torch.int8) - 8], dim=-1)
    return (q.to(dtype) * scale.to(dtype)[..., None]).reshape(out_f, groups * group_size)


class _QuantLinear(nn.Module):
    kind = ""
    fused_max_rows = 0
    rows_kernel: Callable[..., torch.Tensor]  # (rows, codes, scale) -> rows @ W.t(), the fused formula

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.fused = True

    def weight_bytes(self) -> int:
        return self.qweight.numel() * self.qweight.element_size() + self.scale.numel() * self.scale.element_size()

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self._dequant(0, self.out_features, dtype)

    def _dequant(self, i: int, j: int, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def _rows(self, x: torch.Tensor) -> torch.Tensor | None:
        """x @ W.t() by the C++ kernel, or None where it does not apply."""
        raise NotImplementedError

    @classmethod
    def grouped_outputs(cls, x: torch.Tensor, mods: Sequence["_QuantLinear"]) -> list[torch.Tensor] | None:
        """`[m(x) for m in mods]` through one fused call when it applies (no autograd, few rows,
        fused kernels on, every module of this kind on the same input width); else None."""
        first = mods[0]
        if torch.is_grad_enabled() or not all(type(m) is cls and m.fused and m.in_features == first.in_features
                                              for m in mods):
            return None
        if kernels.usable(x):  # the C++ kernels (see llmkit.quant.kernels), where they are built
            ys = [m._rows(x) for m in mods]
            if all(y is not None for y in ys):
                return [y if m.bias is None else y + m.bias for y, m in zip(ys, mods)]
        rows = x.reshape(-1, first.in_features)
        if rows.shape[0] > cls.fused_max_rows:
            return None
        # a fresh fp32 copy (a few rows): a view would make the compiled kernel guard on its base
        with torch.inference_mode():  # one kind of tensor for the compiled kernel's guards
            rows = rows.to(torch.float32, copy=True, memory_format=torch.contiguous_format)
            if len(mods) == 1:
                ys = _run_fused(cls.kind, cls.rows_kernel, rows, first.qweight, first.scale)
                ys = None if ys is None else (ys,)
            else:
                ys = _run_fused(f"{cls.kind}x{len(mods)}", _each(cls.rows_kernel), rows,
                                *[t for m in mods for t in (m.qweight, m.scale)])
        if ys is None:
            return None
        out = []
        for y, m in zip(ys, mods):
            y = y.to(x.dtype)
            if m.bias is not None:
                y = y + m.bias.to(y.dtype)
            out.append(y.reshape(*x.shape[:-1], m.out_features))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # differentiable w.r.t. x (frozen weights)
            y = F.linear(x.reshape(-1, self.in_features), self.dequantized(x.dtype))
        else:
            fused = self.grouped_outputs(x, (self,)) if self.fused else None
            if fused is not None:
                return fused[0]
            rows = x.reshape(-1, self.in_features)
            tile = max(16, TILE_ELEMENTS // self.in_features)
            y = _tiled_linear(rows, self.out_features, tile, lambda i, j: self._dequant(i, j, x.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(_QuantLinear):
    """int8 codes per output channel; `from_linear` quantises an `nn.Linear`, the constructor
    makes an empty one to load a saved state into."""

    kind = "int8"
    fused_max_rows = INT8_FUSED_MAX_ROWS
    rows_kernel = staticmethod(_int8_rows)

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        new = cls(linear.in_features, linear.out_features, linear.bias is not None)
        new.qweight, new.scale = quantize_int8(linear.weight.detach())
        if linear.bias is not None:
            new.bias = linear.bias.detach().float().clone()
        return new

    def _dequant(self, i: int, j: int, dtype: torch.dtype) -> torch.Tensor:
        return self.qweight[i:j].to(dtype) * self.scale[i:j, None].to(dtype)

    def _rows(self, x: torch.Tensor) -> torch.Tensor | None:
        return kernels.rows_int8(x, self.qweight, self.scale)


class Int4Linear(_QuantLinear):
    """int4 codes in groups of `group_size` input columns (see the module docstring)."""

    kind = "int4"
    fused_max_rows = INT4_FUSED_MAX_ROWS
    rows_kernel = staticmethod(_int4_rows)

    def __init__(self, in_features: int, out_features: int, bias: bool = False, group_size: int = INT4_GROUP_SIZE):
        super().__init__(in_features, out_features, bias)
        if not int4_groups(in_features, group_size):
            raise ValueError(f"in_features={in_features} is not a multiple of group_size={group_size} (even)")
        self.group_size = group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, in_features // group_size))

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = INT4_GROUP_SIZE) -> Int4Linear:
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size)
        new.qweight, new.scale = quantize_int4(linear.weight.detach(), group_size)
        if linear.bias is not None:
            new.bias = linear.bias.detach().float().clone()
        return new

    def _dequant(self, i: int, j: int, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_int4(self.qweight[i:j], self.scale[i:j], self.group_size, dtype)

    def _rows(self, x: torch.Tensor) -> torch.Tensor | None:
        return kernels.rows_int4(x, self.qweight, self.scale, self.group_size)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"


# ------------------------------------------------------------------------------- whole models
ROUTERS = ("mlp.gate", "mlp.shared_expert_gate")  # a block's MoE router and shared-expert gate (`models.moe`)


def is_router(name: str) -> bool:
    """Whether the module `name` (relative to a block, or qualified) is a mixture of experts'
    router or shared-expert gate, or the frozen base of a LoRA on one."""
    name = name.removesuffix(".base_layer")
    return name in ROUTERS or name.endswith(tuple("." + r for r in ROUTERS))


def _linears(model: nn.Module, head: bool) -> list[tuple[str, nn.Linear]]:
    """(qualified name, Linear) of every block Linear, plus the head when `head`. The small
    matrices of attached adapters (LoRA A/B, bottlenecks) stay as they are; a LoRA's base layer
    is quantised under it. A mixture of experts' routers stay too, as llama.cpp keeps them: a
    rounded router would send tokens to other experts."""
    found = []
    for i, block in enumerate(model.model.layers):
        for name, mod in block.named_modules():
            peft = any(part.startswith("lora_") or part.endswith("_adapter") for part in name.split("."))
            if type(mod) is nn.Linear and not peft and not is_router(name):
                found.append((f"model.layers.{i}.{name}", mod))
    if head and type(model.lm_head) is nn.Linear:
        found.append(("lm_head", model.lm_head))
    return found


def _replace(model: nn.Module, qualified: str, new: nn.Module) -> None:
    parent_name, _, attr = qualified.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


def quantize_model(model: nn.Module, method: str = "int8", group_size: int = INT4_GROUP_SIZE, head: bool = True,
                   fused: bool = True) -> dict[str, int]:
    """Replace the Linear layers of every block (and the output head when `head`; a tied head gets
    its own quantised copy, the embedding table stays as it is) with int8 / int4 ones, in place.
    Int4 leaves a Linear whose width is not a multiple of `group_size` in full precision.
    Returns the Linear weight bytes before and after (`layout.linear_bytes` counts them without a model)."""
    if method not in ("int8", "int4"):
        raise ValueError(f"method={method!r}: use 'int8' or 'int4'")
    if any(isinstance(m, _QuantLinear) for m in model.modules()):
        raise ValueError("the model is already quantised: load the full-precision checkpoint to quantise it again")
    before = after = 0
    with torch.no_grad():
        for name, lin in _linears(model, head):
            if method == "int4" and not int4_groups(lin.in_features, group_size):
                log.info("%s stays in full precision: in_features=%d is not a multiple of group_size=%d",
                         name, lin.in_features, group_size)
                continue
            new = Int8Linear.from_linear(lin) if method == "int8" else Int4Linear.from_linear(lin, group_size)
            new.fused = fused
            new.train(lin.training)
            before += lin.weight.numel() * lin.weight.element_size()
            after += new.weight_bytes()
            _replace(model, name, new.to(lin.weight.device))
    return {"before": before, "after": after}


def quantization_config(model: nn.Module) -> dict[str, Any] | None:
    """What config.json records about a quantised model (None when nothing is quantised):
    the format, its group size and exactly which modules carry it."""
    mods = {n: m for n, m in model.named_modules() if isinstance(m, _QuantLinear)}
    if not mods:
        return None
    kinds = {m.kind for m in mods.values()}
    if len(kinds) > 1:
        raise ValueError(f"the model mixes weight formats {sorted(kinds)}: llmkit saves one format per checkpoint")
    kind = kinds.pop()
    cfg: dict[str, Any] = {"quant_method": QUANT_METHOD, "weights": kind, "modules": sorted(mods)}
    if kind == "int4":
        sizes = {m.group_size for m in mods.values()}
        if len(sizes) > 1:
            raise ValueError(f"the model mixes int4 group sizes {sorted(sizes)}: llmkit saves one per checkpoint")
        cfg["group_size"] = sizes.pop()
    return cfg


def prepare_quantized(model: nn.Module, qcfg: dict[str, Any]) -> None:
    """Swap the modules `qcfg` names (a `quantization_config`) for empty quantised Linears of the
    same shapes, so a saved quantised state loads into `model`. Raises ValueError naming the field."""
    kind = qcfg.get("weights")
    if kind not in ("int8", "int4"):
        raise ValueError(f"quantization_config.weights={kind!r}: llmkit reads 'int8' or 'int4'")
    names = qcfg.get("modules")
    if not isinstance(names, list) or not names:
        raise ValueError("quantization_config.modules must list the quantised modules")
    group_size = qcfg.get("group_size", 64)
    for name in names:
        try:
            lin = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"quantization_config.modules names {name!r}, which this model does not have") from None
        if type(lin) is not nn.Linear:
            raise ValueError(f"quantization_config.modules names {name!r}, which is a {type(lin).__name__}, not a Linear")
        bias = lin.bias is not None
        new = (Int8Linear(lin.in_features, lin.out_features, bias) if kind == "int8"
               else Int4Linear(lin.in_features, lin.out_features, bias, group_size))
        _replace(model, name, new.train(lin.training))


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, _QuantLinear) for m in model.modules())


def model_bytes(model: nn.Module) -> int:
    """Bytes of every distinct parameter and buffer (a tied weight counts once)."""
    seen = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())
