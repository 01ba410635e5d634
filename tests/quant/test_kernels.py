"""The few-row linear kernels (`llmkit.quant.kernels`): fp32, int8 and int4 weights read in their stored
format give torch's products (to float rounding) for 1 to 8 rows, every decoding step of a model runs
through them with the tokens of torch's path, and where they cannot run (no compiler, a gradient, too
many rows) the callers keep their torch paths, said once in the log. The slow test holds SmolLM2's
greedy tokens over 128 steps equal through the whole-step C++ decoder, the modules with these kernels and
the modules without them, for fp32, int8 and int4."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

import llmkit
from llmkit.infer import GenerationConfig
from llmkit.models.decode_step import DecodeStep
from llmkit.quant import kernels
from llmkit.quant.weight_only import dequantize_int4, quantize_int4, quantize_int8

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def no_grad():
    with torch.inference_mode():
        yield


def test_the_library_builds_here():
    assert kernels.library() is not None, "a C++ compiler is part of the test machine: the kernels must build"


@pytest.mark.parametrize("rows", [1, 2, 5, 8, 13, 16])
@pytest.mark.parametrize("in_features", [64, 37])  # 37: the tail past the last 8 inputs
def test_fp32_and_int8_rows_equal_torch(rows, in_features):
    g = torch.Generator().manual_seed(rows * 100 + in_features)
    w = torch.randn(50, in_features, generator=g)
    bias = torch.randn(50, generator=g)
    x = torch.randn(rows, in_features, generator=g)
    torch.testing.assert_close(kernels.rows_linear(x, w, bias), F.linear(x, w, bias), rtol=1e-5, atol=1e-5)
    q, scale = quantize_int8(w)
    torch.testing.assert_close(kernels.rows_int8(x, q, scale), F.linear(x, q.float() * scale[:, None]),
                               rtol=1e-5, atol=1e-5)
    x3 = x.reshape(1, rows, in_features)  # batch dims kept
    assert kernels.rows_linear(x3, w).shape == (1, rows, 50)


@pytest.mark.parametrize("group", [16, 32, 64])
def test_int4_rows_equal_the_dequantised_product(group):
    g = torch.Generator().manual_seed(group)
    w = torch.randn(40, 128, generator=g)
    packed, scale = quantize_int4(w, group)
    for rows in (1, 3, 8, 11):
        x = torch.randn(rows, 128, generator=g)
        torch.testing.assert_close(kernels.rows_int4(x, packed, scale, group),
                                   F.linear(x, dequantize_int4(packed, scale, group)), rtol=1e-5, atol=1e-5)


def test_a_rows_result_does_not_depend_on_the_rest_of_its_batch():
    """Bit for bit: each output is summed in one order whatever the number of rows (a padded batch and a
    request alone give the same numbers)."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn(40, 136, generator=g)
    q, scale = quantize_int8(w)
    packed, scale4 = quantize_int4(torch.randn(40, 128, generator=g), 32)
    x = torch.randn(kernels.MAX_ROWS, 136, generator=g)
    for rows in (2, 3, 5, 8, 16):
        assert torch.equal(kernels.rows_linear(x[:rows], w)[:1], kernels.rows_linear(x[:1], w))
        assert torch.equal(kernels.rows_int8(x[:rows], q, scale)[rows - 1:], kernels.rows_int8(x[rows - 1:rows], q, scale))
        x4 = x[:rows, :128].contiguous()
        assert torch.equal(kernels.rows_int4(x4, packed, scale4, 32)[1:2], kernels.rows_int4(x4[1:2], packed, scale4, 32))


def test_where_a_kernel_does_not_apply_it_says_none():
    w = torch.randn(8, 16)
    assert kernels.rows_linear(torch.randn(kernels.MAX_ROWS + 1, 16), w) is None  # more rows than MAX_ROWS
    assert kernels.rows_linear(torch.randn(2, 16, dtype=torch.float64), w.double()) is None
    packed, scale = quantize_int4(torch.randn(8, 16), 8)
    assert kernels.rows_int4(torch.randn(1, 16), packed, scale, 8) is None  # a group not a multiple of 16
    with torch.inference_mode(False), torch.enable_grad():
        assert kernels.rows_linear(torch.randn(1, 16, requires_grad=True), w) is None


@pytest.mark.parametrize("method", [None, "int8", "int4"])
def test_decoding_runs_through_the_kernels_with_the_tokens_of_torch(tiny_dirs, monkeypatch, method):
    llm = llmkit.load(tiny_dirs["tiny-llama"])
    if method:
        llmkit.quant.quantize_model(llm.model, method, group_size=32)
    gen = GenerationConfig(max_new_tokens=24, temperature=0, ignore_eos=True)
    prompts = ["def main():", "import os\nimport sys"]
    calls = []
    for name in ("rows_linear", "rows_int8", "rows_int4"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, real=real, **kw: calls.append(1) or real(*a, **kw))
    monkeypatch.setattr("llmkit.models.layers.rows_linear", kernels.rows_linear)
    # the module path (the whole-step decoder, tests/models/test_decode_step.py, would bypass it)
    monkeypatch.setattr(DecodeStep, "plan", classmethod(lambda cls, m, c: None))
    fast = [c.token_ids for c in llm.complete(prompts, gen)]
    assert len(calls) > 24 * llm.config.n_layers  # every step, every layer
    monkeypatch.setattr(kernels, "usable", lambda x: False)  # torch's paths
    assert [c.token_ids for c in llm.complete(prompts, gen)] == fast


def test_lora_wrapped_layers_and_autocast_keep_their_own_paths(tiny_dirs):
    """A LoRA on v_proj / up_proj alone (not on the first Linear of its group) must still add its update at
    inference, and under autocast the layers compute in its precision: neither goes through the fp32 kernel."""
    from llmkit.peft import apply_lora

    llm = llmkit.load(tiny_dirs["tiny-llama"])
    ids = torch.tensor([llm.tokenize("def main():")])
    base = llm.model(ids)
    apply_lora(llm.model, r=4, targets=["v_proj", "up_proj"])
    for n, p in llm.model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    adapted = llm.model(ids)
    with torch.inference_mode(False), torch.no_grad():
        reference = llm.model(ids)  # the torch path
    assert (adapted - base).abs().max() > 1e-2
    torch.testing.assert_close(adapted, reference, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, k, v = llmkit.models.layers.linear_outputs(torch.randn(1, 1, llm.config.dim),
                                                       (llm.model.model.layers[0].self_attn.q_proj,) * 3)
    assert q.dtype == torch.bfloat16


def test_without_a_compiler_the_torch_paths_run_and_the_log_says_so_once(monkeypatch, caplog, tmp_path):
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("LLMKIT_KERNELS_DIR", str(tmp_path))  # no library built before
    with caplog.at_level(logging.WARNING, logger="llmkit.quant.kernels"):
        assert kernels.library() is None and kernels.library() is None
        x, w = torch.randn(1, 16), torch.randn(4, 16)
        assert kernels.rows_linear(x, w) is None
        torch.testing.assert_close(llmkit.models.layers.linear(torch.nn.Linear(16, 4), x).shape, torch.Size([1, 4]))
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "no-such-compiler" in warnings[0].getMessage()


@pytest.mark.slow
@pytest.mark.parametrize("method", [None, "int8", "int4"])
def test_smollm2_greedy_tokens_over_128_steps_are_those_of_torch(smollm2, monkeypatch, method):
    from llmkit.infer.llm import LocalLLM
    from llmkit.models.gguf import load_gguf

    llm = LocalLLM(*load_gguf(smollm2.path, quantize=method), name="smollm2")
    gen = GenerationConfig(max_new_tokens=128, temperature=0, ignore_eos=True)
    prompt = "Write a short story about a robot who learns to paint."
    steps = []
    real = DecodeStep.__call__
    monkeypatch.setattr(DecodeStep, "__call__", lambda self, t: steps.append(1) or real(self, t))
    fast = llm.complete([prompt], gen)[0].token_ids  # the whole-step C++ decoder
    assert len(steps) == 127
    monkeypatch.setattr(DecodeStep, "plan", classmethod(lambda cls, m, c: None))
    assert llm.complete([prompt], gen)[0].token_ids == fast  # the modules with the few-row kernels
    monkeypatch.setattr(kernels, "usable", lambda x: False)
    for q in llm.model.modules():  # the unfused path: dequantise, then torch's matmul
        if hasattr(q, "fused"):
            q.fused = False
    assert llm.complete([prompt], gen)[0].token_ids == fast
