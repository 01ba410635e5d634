"""The whole-step C++ decoder (`llmkit.models.decode_step`): for every block shape it serves (Llama with GQA,
Qwen2's q/k/v biases, sliding windows, GPT-2's LayerNorm, learned positions, biases, tanh GELU and tied head,
exact GELU, ReLU, a head_dim of its own, linear rope scaling)
and every weight format (fp32, int8, int4) its logits and cache writes are the module path's, step after
step, for one row and several; generation runs through it with the same greedy tokens; and what it does not
serve keeps the module path, said once in the log."""

from __future__ import annotations

import logging

import pytest
import torch

import llmkit
from llmkit.infer import GenerationConfig
from llmkit.models import decode_step
from llmkit.models.config import ModelConfig
from llmkit.models.decode_step import DecodeStep
from llmkit.models.transformer import ContextLengthError, Transformer
from llmkit.quant.weight_only import quantize_model

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = {
    "llama-gqa": dict(n_kv_heads=2),
    "qwen2-window": dict(n_kv_heads=1, qkv_bias=True, sliding_window=5, rope_theta=1e6, tie_embeddings=True),
    "gpt2": dict(norm="layernorm", positions="learned", mlp="gelu", activation="gelu_tanh", qkv_bias=True,
                 o_bias=True, mlp_bias=True, tie_embeddings=True),
    "gelu-head-dim": dict(head_dim=24, mlp="gelu", activation="gelu", n_kv_heads=2, norm_eps=1e-6),
    "relu-gated": dict(activation="relu", rope_scaling={"rope_type": "linear", "factor": 2.0}),
}


def tiny(shape: str, quantize: str | None = None, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=300, dim=64, n_layers=3, n_heads=4, hidden_dim=96, max_seq_len=48, **SHAPES[shape])
    model = Transformer(cfg).eval()
    if quantize:
        quantize_model(model, quantize, group_size=32)
    return model


@pytest.mark.parametrize("quantize", [None, "int8", "int4"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_logits_and_cache_are_the_module_paths_step_after_step(shape, quantize):
    model = tiny(shape, quantize)
    g = torch.Generator().manual_seed(1)
    for rows in (1, 3):
        prompt = torch.randint(0, 300, (rows, 6), generator=g)
        with torch.inference_mode():
            ref, ours = model.new_cache(rows, 30), model.new_cache(rows, 30)
            model(prompt, cache=ref)
            model(prompt, cache=ours)
            step = DecodeStep.plan(model, ours)
            assert step is not None
            for _ in range(12):  # past the window of 5
                tokens = torch.randint(0, 300, (rows,), generator=g)
                expected = model(tokens[:, None], cache=ref)[:, -1]
                torch.testing.assert_close(step(tokens), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
            assert ours.length == ref.length == 18
            torch.testing.assert_close(ours.k, ref.k, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ours.v, ref.v, rtol=1e-5, atol=1e-5)


def test_generation_runs_through_the_step_with_the_greedy_tokens_of_the_modules(tiny_dirs, monkeypatch):
    llm = llmkit.load(tiny_dirs["tiny-llama"])
    gen = GenerationConfig(max_new_tokens=32, temperature=0, ignore_eos=True)
    calls = []
    real = DecodeStep.__call__
    monkeypatch.setattr(DecodeStep, "__call__", lambda self, t: calls.append(1) or real(self, t))
    fast = [c.token_ids for c in llm.complete(["def main():"], gen)]
    assert len(calls) == 31  # every step after the prefill's token
    monkeypatch.setattr(DecodeStep, "plan", classmethod(lambda cls, m, c: None))
    assert [c.token_ids for c in llm.complete(["def main():"], gen)] == fast


def test_what_it_does_not_serve_keeps_the_module_path_and_says_so_once(monkeypatch, caplog):
    from llmkit.peft import apply_lora

    monkeypatch.setattr(decode_step, "_said", set())
    model = tiny("llama-gqa")
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3]]), cache=(cache := model.new_cache(1, 20)))
    padded = model.new_cache(2, 20)
    with torch.inference_mode():
        model(torch.tensor([[0, 1, 2], [3, 4, 5]]), attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]), cache=padded)
    with caplog.at_level(logging.INFO, logger="llmkit.models.decode_step"):
        assert DecodeStep.plan(model, padded) is None
        model.train()
        assert DecodeStep.plan(model, cache) is None
        model.eval()
        apply_lora(model, r=2, targets=["v_proj"])
        assert DecodeStep.plan(model, cache) is None and DecodeStep.plan(model, cache) is None
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3, said  # once per reason
    assert "padding" in said[0] and "training mode" in said[1] and "LoRALinear" in said[2], said


def test_a_model_or_cache_changed_after_the_plan_is_never_read_through_stale_pointers():
    model = tiny("llama-gqa")
    g = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        cache = model.new_cache(2, 20)
        model(torch.randint(0, 300, (2, 4), generator=g), cache=cache)
        step = DecodeStep.plan(model, cache)
        model.to(torch.float64).to(torch.float32)  # the same values in new memory; the old is freed
        tokens = torch.tensor([7, 9])
        assert step(tokens) is None and cache.length == 4  # nothing written: the module path takes this step
        step = DecodeStep.plan(model, cache)
        assert step is not None and torch.isfinite(step(tokens)).all()
        cache.select([1, 0])  # new cache tensors, the same number of rows
        assert step(tokens) is None
        ref = model.new_cache(2, 20)
        ref.k.copy_(cache.k), ref.v.copy_(cache.v)
        ref.length = cache.length
        step = DecodeStep.plan(model, cache)
        torch.testing.assert_close(step(tokens), model(tokens[:, None], cache=ref)[:, -1], rtol=1e-5, atol=1e-5)


def test_models_without_a_head_global_hooks_and_dropout_in_training_are_refused():
    model = tiny("llama-gqa")
    with torch.inference_mode():
        cache = model.new_cache(1, 10)
        model(torch.tensor([[1, 2]]), cache=cache)
        handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
        try:
            assert DecodeStep.plan(model, cache) is None
        finally:
            handle.remove()
        assert DecodeStep.plan(model, cache) is not None
    torch.manual_seed(0)
    dropping = Transformer(ModelConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, hidden_dim=96, dropout=0.1)).eval()
    with torch.inference_mode():
        dropping(torch.tensor([[1, 2]]), cache=(cache2 := dropping.new_cache(1, 10)))
        assert DecodeStep.plan(dropping, cache2) is not None
        dropping.model.layers[1].train()  # one block in training mode: its dropout would apply
        assert DecodeStep.plan(dropping, cache2) is None
    model.lm_head = None  # a classifier checkpoint's body
    assert DecodeStep.plan(model, cache) is None


def test_a_full_cache_and_the_end_of_learned_positions_are_left_to_the_model_and_its_errors():
    model = tiny("gpt2")  # learned positions: 48
    with torch.inference_mode():
        cache = model.new_cache(1, 64)
        model(torch.randint(0, 300, (1, 47)), cache=cache)
        step = DecodeStep.plan(model, cache)
        assert step(torch.tensor([5])) is not None  # position 47, the last one
        assert step(torch.tensor([5])) is None and cache.length == 48  # nothing written
        with pytest.raises(ContextLengthError):
            model(torch.tensor([[5]]), cache=cache)
        assert step(torch.tensor([300])) is None  # outside the vocabulary: never read past the table
