"""The language-model loss without the logits: output head and cross-entropy fused, in chunks.

A (batch·seq, vocab) logits tensor is the largest activation of a small model's training step
(1024 tokens × GPT-2's 50257-word vocabulary = 206 MB in fp32, twice that with its gradient).
`linear_cross_entropy` never holds it: rows that count (label != -100) are taken first, then
handled a chunk at a time — logits, log-sum-exp, the loss, and at once the gradient of the loss
with respect to the hidden states (and to the head's weight when it is trained). Backward only
scales those saved gradients, so no matmul is repeated and a step costs what the unfused one
does, less the work on ignored rows (prompt tokens in SFT cost nothing in the head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 1 << 24  # logits per chunk: 16M (64 MB in fp32; smaller chunks make slower matmuls)


def _chunk_rows(vocab: int, chunk_rows: int | None) -> int:
    return chunk_rows or max(16, CHUNK_ELEMENTS // max(vocab, 1))


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _scaled(grad: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    return grad * grad_out.to(grad.dtype)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy of (..., vocab) logits — half precision upcast for the softmax."""
    return F.cross_entropy(_upcast(logits).reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=ignore_index)


class _FusedLinearCE(torch.autograd.Function):
    """Sum of the per-row cross-entropies of ``h @ weight.T (+ bias)``; gradients made in forward."""

    @staticmethod
    def forward(ctx, h, weight, bias, targets, rows, need):
        need_h, need_w, need_b = need
        total = torch.zeros((), dtype=_upcast(h[:0]).dtype, device=h.device)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        for s in range(0, h.shape[0], rows):
            hc, t = h[s:s + rows], targets[s:s + rows]
            logits = _upcast(F.linear(hc, weight, bias))
            lse = torch.logsumexp(logits, dim=-1)
            total = total + (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if not any(need):
                continue
            g = logits.sub_(lse[:, None]).exp_()  # the softmax, in place of the logits
            g[torch.arange(len(t), device=g.device), t] -= 1  # minus the one-hot target
            if need_h:
                grad_h[s:s + rows] = (g.to(weight.dtype) @ weight).to(h.dtype)
            if need_w and torch.is_autocast_enabled(h.device.type):  # the matmul in autocast's dtype
                grad_w += (g.t() @ hc).to(weight.dtype)
            elif need_w:  # in place: no (vocab, dim) temporary per chunk
                grad_w.addmm_(g.t().to(weight.dtype), hc.to(weight.dtype))
            if need_b:
                grad_b += g.sum(0).to(bias.dtype)
        ctx.save_for_backward(*(x for x in (grad_h, grad_w, grad_b) if x is not None))
        ctx.need = need
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = iter(ctx.saved_tensors)
        grad_h, grad_w, grad_b = (_scaled(next(saved), grad_out) if n else None for n in ctx.need)
        return grad_h, grad_w, grad_b, None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         bias: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX,
                         chunk_rows: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``F.linear(h, weight, bias)`` against `targets` over the rows whose
    target is not `ignore_index` — the value of ``F.cross_entropy(F.linear(h, weight, bias)
    .flatten(0, -2), targets.flatten(), ignore_index=...)`` and its gradients, in a fraction of
    the memory. `h` is (..., dim), `targets` the matching (...) long tensor. NaN when no row
    counts, as with `F.cross_entropy`."""
    h = h.reshape(-1, h.shape[-1])
    targets = targets.reshape(-1)
    if h.shape[0] != targets.shape[0]:
        raise ValueError(f"linear_cross_entropy: {h.shape[0]} hidden rows but {targets.shape[0]} targets")
    keep = (targets != ignore_index).nonzero().squeeze(1)
    count = keep.numel()
    if count < targets.numel():
        h, targets = h.index_select(0, keep), targets.index_select(0, keep)
    rows = _chunk_rows(weight.shape[0], chunk_rows)
    grad = torch.is_grad_enabled()
    need = (grad and h.requires_grad, grad and weight.requires_grad,
            grad and bias is not None and bias.requires_grad)
    total = _FusedLinearCE.apply(h, weight, bias, targets, rows, need)
    return total / count if count else total * float("nan")
