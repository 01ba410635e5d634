"""NF4: 4-bit NormalFloat weights with block-wise absmax scales and double-quantised scales
(Dettmers et al. 2023, "QLoRA"), and a frozen `NF4Linear` that dequantises on the fly.

Written here rather than taken from bitsandbytes: the format is ~100 lines of tensor code, runs
on every torch device (CPU, CUDA, MPS) with no compiled library, and `llmkit.quant` owns the weight
formats that serving and GGUF share. The tests check it against bitsandbytes where that is
installed (the same codes and the same dequantised weights).

Layout of a quantised weight of n elements (n divisible by the block size 64):
  codes    uint8 (n/2,)      two 4-bit indices into `NF4_LEVELS` per byte, first element in the high nibble
  absmax   per block of 64, either fp32 (n/64,) or, with double quantisation, uint8 codes
           (n/64,) of (absmax - offset) in blocks of 256 with an fp32 scale each, plus the fp32 offset
That is 4 + 8/64 + 32/(64*256) ≈ 4.127 bits per weight with double quantisation (4.5 without).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# The 16 NF4 values: quantiles of N(0, 1) scaled to [-1, 1], with an exact zero (QLoRA, appendix E).
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
])
BLOCK = 64  # weights per absmax scale
SCALE_BLOCK = 256  # absmax values per second-level scale (double quantisation)


def _nearest(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest level (levels ascending) for every element of x, as uint8."""
    mids = (levels[1:] + levels[:-1]) / 2
    return torch.bucketize(x, mids).to(torch.uint8)


@dataclass
class NF4Weight:
    """A quantised weight; `dequantize()` gives it back as a dense tensor."""

    codes: torch.Tensor
    absmax: torch.Tensor  # fp32 (blocks,), or uint8 (blocks,) when double quantised
    shape: tuple[int, ...]
    absmax_scale: torch.Tensor | None = None  # fp32 (ceil(blocks/256),)
    absmax_offset: torch.Tensor | None = None  # fp32 ()

    @property
    def double_quant(self) -> bool:
        return self.absmax_scale is not None

    @property
    def nbytes(self) -> int:
        """Storage bytes, scales included."""
        parts = [self.codes, self.absmax, self.absmax_scale, self.absmax_offset]
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    def scales(self) -> torch.Tensor:
        """The per-block absmax values (dequantised when double quantised)."""
        if not self.double_quant:
            return self.absmax
        q = self.absmax.float() - 127.0  # uint8 code 0..254 -> -127..127
        blocks = q.numel()
        pad = (-blocks) % SCALE_BLOCK
        q = F.pad(q, (0, pad)).view(-1, SCALE_BLOCK) * self.absmax_scale[:, None]
        return q.flatten()[:blocks] + self.absmax_offset

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        levels = NF4_LEVELS.to(self.codes.device)
        high, low = (self.codes >> 4).long(), (self.codes & 0x0F).long()
        idx = torch.stack((high, low), dim=-1).flatten()
        values = levels[idx].view(-1, BLOCK) * self.scales()[:, None]
        return values.view(self.shape).to(dtype)

    def to(self, device) -> "NF4Weight":
        move = (lambda t: t.to(device) if t is not None else None)
        return NF4Weight(move(self.codes), move(self.absmax), self.shape, move(self.absmax_scale),
                         move(self.absmax_offset))


def quantize_nf4(weight: torch.Tensor, double_quant: bool = True) -> NF4Weight:
    """Quantise a float tensor to NF4 in blocks of 64 (its size must be a multiple of 64)."""
    if weight.numel() % BLOCK:
        raise ValueError(f"NF4 needs a size divisible by {BLOCK}; this weight has shape {list(weight.shape)} "
                         f"({weight.numel()} elements): leave this layer unquantised")
    w = weight.detach().float().reshape(-1, BLOCK)
    absmax = w.abs().amax(dim=1)
    normed = w / absmax.clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    idx = _nearest(normed.flatten(), NF4_LEVELS.to(w.device))
    codes = (idx[0::2] << 4) | idx[1::2]
    if not double_quant:
        return NF4Weight(codes, absmax, tuple(weight.shape))
    # second level: absmax - mean, symmetric 8-bit per block of 256 scales
    offset = absmax.mean()
    centred = absmax - offset
    blocks = centred.numel()
    pad = (-blocks) % SCALE_BLOCK
    grid = F.pad(centred, (0, pad)).view(-1, SCALE_BLOCK)
    scale = grid.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.clamp(torch.round(grid / scale[:, None]), -127, 127) + 127.0
    return NF4Weight(codes, q.flatten()[:blocks].to(torch.uint8), tuple(weight.shape), scale, offset)


def quantize_absmax_int4(weight: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Plain symmetric int4 with the same block-wise absmax scales (levels -7..7), dequantised:
    the baseline NF4 is measured against."""
    w = weight.detach().float().reshape(-1, block)
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 7.0
    return (torch.clamp(torch.round(w / scale), -7, 7) * scale).view(weight.shape)


class _NF4Matmul(torch.autograd.Function):
    """y = x Wᵀ with W dequantised in the forward and again in the backward, so that training
    (QLoRA) never keeps a dense copy of the frozen weight alive between the two."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "NF4Linear") -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.weight_q.dequantize(x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w = ctx.layer.weight_q.dequantize(grad.dtype)
        return grad @ w, None


class NF4Linear(nn.Module):
    """A frozen Linear whose weight is stored in NF4 (bias, if any, kept in full precision)."""

    def __init__(self, weight_q: NF4Weight, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight_q.shape
        self.weight_q = weight_q
        # buffers, so that .to(device) and state_dict() see the quantised tensors
        self.register_buffer("codes", weight_q.codes)
        self.register_buffer("absmax", weight_q.absmax)
        if weight_q.double_quant:
            self.register_buffer("absmax_scale", weight_q.absmax_scale)
            self.register_buffer("absmax_offset", weight_q.absmax_offset)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, double_quant: bool = True) -> "NF4Linear":
        return cls(quantize_nf4(linear.weight, double_quant), linear.bias)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # keep the NF4Weight pointing at the (moved) buffers; the codes stay uint8 under .to(dtype)
        self.weight_q = NF4Weight(self.codes, self.absmax, self.weight_q.shape,
                                  getattr(self, "absmax_scale", None), getattr(self, "absmax_offset", None))
        return self

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight (a new dense tensor each time; for merging and inspection)."""
        return self.weight_q.dequantize(torch.float32)

    @property
    def nbytes(self) -> int:
        return self.weight_q.nbytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _NF4Matmul.apply(x, self)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nf4, "
                f"double_quant={self.weight_q.double_quant}")


def quantize_model_nf4(model: nn.Module, double_quant: bool = True, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Replace every nn.Linear inside the transformer blocks by an NF4Linear (embeddings and the
    output head stay as they are, and a mixture of experts' routers, as in `weight_only`); returns
    how many were replaced."""
    from .weight_only import is_router

    count = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if is_router(full):
                continue
            if isinstance(child, nn.Linear) and not any(s in full for s in skip) and child.weight.numel() % BLOCK == 0:
                setattr(module, child_name, NF4Linear.from_linear(child, double_quant))
                count += 1
    return count
