"""The serving engine decodes through the whole-step C++ decoder (`DecodeStep.for_pool`) over its paged cache:
each row at its own length, blocks shared through the prefix cache read in place, the logits those of the
module path (`PagedStep`), and the engine's outputs those of running each request alone."""

from __future__ import annotations

import pytest
import torch

import llmkit
from llmkit.infer import GenerationConfig
from llmkit.infer.blocks import BlockPool, PagedStep, Sequence
from llmkit.infer.engine import Engine
from llmkit.models.config import ModelConfig
from llmkit.models.decode_step import DecodeStep
from llmkit.models.transformer import Transformer
from llmkit.quant.weight_only import quantize_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py

PROMPTS = ["x = 1\ny =", "import os\nimport sys\n\n\ndef main(argv):\n    print(argv)\n", "def f():", "class A:",
           "import os\nimport sys\n\n\ndef main(argv):\n    return 0\n"]  # shares a prefix with the second


@pytest.mark.parametrize("quantize", [None, "int4"])
def test_paged_logits_are_the_module_paths_for_rows_of_different_lengths(quantize):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, dim=64, n_layers=3, n_heads=4, n_kv_heads=2, hidden_dim=96, max_seq_len=64,
                      sliding_window=9)
    model = Transformer(cfg).eval()
    if quantize:
        quantize_model(model, quantize, group_size=32)
    g = torch.Generator().manual_seed(1)
    pools = [BlockPool(cfg, 40, block_size=4) for _ in range(2)]
    lengths = [3, 11, 6]
    seqs = [[Sequence() for _ in lengths] for _ in pools]
    with torch.inference_mode():
        for pool, rows in zip(pools, seqs):  # the same prompts into both pools
            g.manual_seed(1)
            for seq, n in zip(rows, lengths):
                pool.reserve(seq, n + 8)
                model(torch.randint(0, 300, (1, n), generator=g), cache=PagedStep(pool, [seq], n))
        step = DecodeStep.for_pool(model, pools[1])
        assert step is not None
        for _ in range(6):
            tokens = torch.randint(0, 300, (len(lengths),), generator=g)
            expected = model(tokens[:, None], cache=PagedStep(pools[0], seqs[0], 1))[:, -1]
            torch.testing.assert_close(step.paged(tokens, seqs[1], pools[1]), expected, rtol=1e-5, atol=1e-5)
        assert [s.length for s in seqs[1]] == [s.length for s in seqs[0]] == [n + 6 for n in lengths]
        torch.testing.assert_close(pools[1].k, pools[0].k, rtol=1e-5, atol=1e-5)
        unreserved = Sequence()
        pools[1].reserve(unreserved, 4)
        unreserved.length = 4  # its blocks end at the position it would write
        assert step.paged(torch.tensor([1]), [unreserved], pools[1]) is None and unreserved.length == 4


def test_the_engine_decodes_through_the_step_with_the_tokens_of_running_alone(tiny_dirs, monkeypatch):
    llm = llmkit.load(tiny_dirs["tiny-llama"])
    gen = GenerationConfig(max_new_tokens=12, temperature=0, ignore_eos=True)
    alone = [llm.complete([p], gen)[0].token_ids for p in PROMPTS]
    calls = []
    real = DecodeStep.paged
    monkeypatch.setattr(DecodeStep, "paged", lambda self, *a: calls.append(1) or real(self, *a))
    engine = Engine(llm, max_batch=4, block_size=4, prefill_chunk=8)
    assert [c.token_ids for c in engine.generate(PROMPTS, gen)] == alone
    assert len(calls) >= 11 and engine.pool.hit_rate > 0  # every decoding step; the shared prefix was reused


def test_a_model_changed_between_generations_is_planned_again(tiny_dirs):
    from llmkit.peft import apply_lora

    llm = llmkit.load(tiny_dirs["tiny-llama"])
    gen = GenerationConfig(max_new_tokens=10, temperature=0, ignore_eos=True)
    engine = Engine(llm, max_batch=4, block_size=4, prefix_cache=False)
    before = [c.token_ids for c in engine.generate(PROMPTS[:2], gen)]
    apply_lora(llm.model, r=4, targets=["q_proj", "v_proj", "down_proj"])
    for name, p in llm.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    after = [c.token_ids for c in engine.generate(PROMPTS[:2], gen)]
    assert after != before  # the adapter changes the outputs ...
    assert after == [llm.complete([p], gen)[0].token_ids for p in PROMPTS[:2]]  # ... and the engine decodes with it
