"""Weight-only int8 / int4: the error bounds of the formats, the fused batch-1 int8 kernel equal to
the dequantised matmul, and a quantised model that still computes nearly what it did (logits,
perplexity on held-out text, the engine and plain generation agreeing)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import llmkit
from llmkit.quant.weight_only import (Int8Linear, dequantize_int4, quantize_int4, quantize_int8,
                                      quantize_model)


def test_int8_and_int4_error_bounds():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 128, generator=g)
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and s.shape == (96,)
    assert ((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-6).all()
    packed, s4 = quantize_int4(w, group_size=32)
    assert packed.dtype == torch.uint8 and packed.shape == (96, 64) and s4.shape == (96, 4)
    back = dequantize_int4(packed, s4, 32)
    assert ((back - w).abs() <= s4.repeat_interleave(32, dim=1) / 2 + 1e-6).all()
    with pytest.raises(ValueError, match="group_size"):
        quantize_int4(w, group_size=48)


def test_fused_int8_kernel_equals_the_dequantised_matmul():
    torch.manual_seed(0)
    lin = nn.Linear(256, 320)
    q = Int8Linear(lin)
    x = torch.randn(1, 1, 256)
    with torch.no_grad():
        fused = q(x)
        q.fused = False
        plain = q(x)
        want = lin(x)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)
    assert (fused - want).abs().max() < 0.05 * want.abs().max()


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_a_quantised_model_computes_nearly_the_same(tiny_dirs, method):
    llm = llmkit.load(tiny_dirs["tiny-llama"])
    text = "def add(a, b):\n    return a + b\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n"
    ids = torch.tensor([llm.tokenize(text)])
    with torch.no_grad():
        ref = llm.model(ids)
    (lp_ref, n), = llm.loglikelihood_rolling([text])
    sizes = quantize_model(llm.model, method, group_size=16)
    assert sizes["after"] < (0.3 if method == "int8" else 0.2) * sizes["before"]
    assert not any(type(m) is nn.Linear for m in llm.model.modules())
    with torch.no_grad():
        out = llm.model(ids)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < (0.08 if method == "int8" else 0.6), rel
    (lp, n2), = llm.loglikelihood_rolling([text])
    ppl_change = math.exp(-lp / n2) / math.exp(-lp_ref / n) - 1
    assert abs(ppl_change) < (0.03 if method == "int8" else 0.3), ppl_change
    # generation runs on the quantised weights, plain and through the engine (batch 1: fused kernel)
    from llmkit.infer.engine import Engine

    plain = llm.complete(["import os"], max_new_tokens=8, temperature=0, ignore_eos=True)[0].token_ids
    assert Engine(llm).generate(["import os"], max_new_tokens=8, temperature=0, ignore_eos=True)[0].token_ids == plain
