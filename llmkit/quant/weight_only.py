"""Weight-only quantisation for inference: int8 per output channel and int4 in groups along the
input dimension, both symmetric; activations stay in floating point.

    quantize_model(llm.model, "int8")       # every block Linear and the output head, in place

Decode at batch 1 is bound by reading the weights, so a quarter of the bytes can be up to 4x
faster — but only with a kernel that reads the int8 weights directly. Dequantising a whole weight
per call is slower than fp32, and torch's `_weight_int8pack_mm` ran at 0.2-0.9 GB/s here. For one
row of activations (batch-1 decode) `Int8Linear` therefore uses a `torch.compile`d fused
multiply-and-reduce over the int8 codes (the weight is never materialised in fp32); larger
batches dequantise and use the ordinary matmul. Int4 dequantises (its speed is future work).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_MATVEC = None


def _int8_matvec(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(1, in) x int8 (out, in) -> (1, out), fused so the fp32 weight never exists."""
    global _MATVEC
    if _MATVEC is None:
        def matvec(x, q, scale):
            return ((q.to(torch.float32) * x).sum(-1) * scale)[None]

        _MATVEC = torch.compile(matvec, dynamic=False)
    return _MATVEC(x, q, scale)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes and one fp32 scale per output row: w ≈ q * scale[:, None], |error| <= scale / 2."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(w: torch.Tensor, group_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """int4 codes in [-7, 7] packed two per byte (first in the low nibble) and one fp32 scale per
    group of `group_size` input columns: w ≈ q * scale, |error| <= scale / 2."""
    out_f, in_f = w.shape
    if in_f % group_size or group_size % 2:
        raise ValueError(f"in_features={in_f} is not a multiple of group_size={group_size} (even)")
    g = w.float().reshape(out_f, in_f // group_size, group_size)
    scale = (g.abs().amax(dim=-1) / 7).clamp_min(1e-12)
    q = torch.round(g / scale[..., None]).clamp(-7, 7).to(torch.int8).reshape(out_f, in_f)
    nib = (q + 8).to(torch.uint8)  # 1..15
    packed = nib[:, 0::2] | (nib[:, 1::2] << 4)
    return packed, scale


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    low = (packed & 0xF).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    q = torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1)
    out_f, in_f = q.shape
    return (q.reshape(out_f, in_f // group_size, group_size).float() * scale[..., None]).reshape(out_f, in_f)


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, fused: bool = True):
        super().__init__()
        q, scale = quantize_int8(linear.weight.detach())
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.fused = fused

    def weight_bytes(self) -> int:
        return self.qweight.numel() + self.scale.numel() * 4

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.qweight.to(dtype) * self.scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.fused and rows.shape[0] == 1 and not torch.is_grad_enabled():
            y = _int8_matvec(rows.float()[0], self.qweight, self.scale).to(x.dtype)
        else:
            y = F.linear(rows, self.dequantized(x.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    def __init__(self, linear: nn.Linear, group_size: int = 64):
        super().__init__()
        packed, scale = quantize_int4(linear.weight.detach(), group_size)
        self.in_features, self.out_features, self.group_size = linear.in_features, linear.out_features, group_size
        self.register_buffer("qweight", packed)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def weight_bytes(self) -> int:
        return self.qweight.numel() + self.scale.numel() * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = dequantize_int4(self.qweight, self.scale, self.group_size).to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))


def quantize_model(model: nn.Module, method: str = "int8", group_size: int = 64, head: bool = True,
                   fused: bool = True) -> dict[str, int]:
    """Replace the Linear layers of every block (and the output head when `head`; a tied head gets
    its own quantised copy, the embedding table stays as it is) with int8 / int4 ones, in place.
    Returns the Linear weight bytes before and after."""
    if method not in ("int8", "int4"):
        raise ValueError(f"method={method!r}: use 'int8' or 'int4'")
    before = after = 0

    def swap(parent: nn.Module, name: str, lin: nn.Linear) -> None:
        nonlocal before, after
        if method == "int4" and lin.in_features % group_size:
            return  # left in full precision: its width is not a multiple of the group
        new = Int8Linear(lin, fused=fused) if method == "int8" else Int4Linear(lin, group_size)
        before += lin.weight.numel() * lin.weight.element_size()
        after += new.weight_bytes()
        setattr(parent, name, new)

    with torch.no_grad():
        for block in model.model.layers:
            for parent in list(block.modules()):
                for name, child in list(parent.named_children()):
                    if type(child) is nn.Linear:
                        swap(parent, name, child)
        if head and type(model.lm_head) is nn.Linear:
            swap(model, "lm_head", model.lm_head)
    return {"before": before, "after": after}
