"""The KV cache, masks and config switches of the one Transformer."""

from __future__ import annotations

import math

import pytest
import torch

from llmkit.models import CacheFullError, ContextLengthError, Transformer, preset
from llmkit.models.layers import sinusoidal_positions

TINY = ["tiny-llama", "tiny-gpt2", "tiny-mistral", "tiny-qwen2"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def _model(name: str, **changes) -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset(name, **changes)).eval()


@pytest.mark.parametrize("name", TINY)
def test_cached_decoding_equals_full_forward(name):
    model = _model(name)  # tiny-mistral's window (32) is shorter than these 70 tokens
    x = torch.randint(0, model.config.vocab_size, (2, 70))
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(2, 80)
        parts = [model(x[:, :20], cache=cache)]  # prefill
        parts.append(model(x[:, 20:25], cache=cache))  # a chunk after the prefill
        parts += [model(x[:, i:i + 1], cache=cache) for i in range(25, 70)]  # one token per step
    assert cache.length == 70
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_left_padded_batch_equals_rows_alone(name):
    model = _model(name)
    v = model.config.vocab_size
    rows = [torch.randint(0, v, (n,)) for n in (45, 9, 30)]
    width = 45
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row):] = row
        mask[r, width - len(row):] = 1
    with torch.no_grad():
        cache = model.new_cache(3, 60)
        batched = model(ids, attention_mask=mask, cache=cache)
        nxt = torch.randint(0, v, (3, 1))
        step = model(nxt, cache=cache)
        for r, row in enumerate(rows):
            alone = model(row[None])
            assert torch.allclose(batched[r, width - len(row):], alone[0], atol=1e-5)
            alone_next = model(torch.cat([row, nxt[r]])[None])[0, -1]
            assert torch.allclose(step[r, -1], alone_next, atol=1e-5)
        # without a cache, the same mask gives the same logits
        assert torch.allclose(model(ids, attention_mask=mask)[mask.bool()], batched[mask.bool()], atol=1e-5)


def test_sliding_window_limits_what_is_seen():
    model = _model("tiny-mistral")  # window 32
    x = torch.randint(0, 2048, (1, 50))
    y = x.clone()
    y[0, 0] = (x[0, 0] + 1) % 2048  # change a token that the last position cannot see (49 - 0 >= 32)
    # one layer sees 31 back; two layers chain to 62, so compare with a one-layer model
    one = _model("tiny-mistral", n_layers=1)
    with torch.no_grad():
        a1, b1 = one(x), one(y)
    assert torch.equal(a1[0, 32:], b1[0, 32:])
    assert not torch.allclose(a1[0, 31], b1[0, 31])
    # two layers chain the window: position 62 can see token 0 through position 31, 63 cannot
    x2, y2 = torch.randint(0, 2048, (1, 64)), None
    y2 = x2.clone()
    y2[0, 0] = (x2[0, 0] + 1) % 2048
    with torch.no_grad():
        a2, b2 = model(x2), model(y2)
    assert not torch.allclose(a2[0, 62], b2[0, 62])
    assert torch.equal(a2[0, 63], b2[0, 63])


def test_bidirectional_attention_sees_the_future():
    causal, bidir = _model("tiny-llama"), _model("tiny-llama", causal=False)
    x = torch.randint(0, 2048, (1, 12))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 2048
    with torch.no_grad():
        assert torch.equal(causal(x)[0, 0], causal(y)[0, 0])
        assert not torch.allclose(bidir(x)[0, 0], bidir(y)[0, 0])


def test_sinusoidal_positions_formula():
    pos = torch.arange(7)[None]
    pe = sinusoidal_positions(pos, 8, torch.float32)[0]
    for p in range(7):
        for i in range(4):
            angle = p / 10000 ** (2 * i / 8)
            assert pe[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    model = _model("tiny-gpt2", positions="sinusoidal")
    assert not hasattr(model.model, "embed_positions")
    x = torch.full((1, 6), 5)
    with torch.no_grad():
        out = model(x)
    assert not torch.allclose(out[0, 1], out[0, 4])  # same token, different positions


def test_dropout_only_in_training():
    model = _model("tiny-llama", dropout=0.3)
    x = torch.randint(0, 2048, (2, 16))
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_learned_positions_refuse_too_long_input():
    model = _model("tiny-gpt2", max_seq_len=16)
    with pytest.raises(ContextLengthError, match="max_seq_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_cache_full_is_a_clear_error():
    model = _model("tiny-llama")
    cache = model.new_cache(1, 8)
    model(torch.zeros(1, 6, dtype=torch.long), cache=cache)
    with pytest.raises(CacheFullError, match="max_len"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)


def test_tied_embeddings_share_storage():
    model = _model("tiny-llama")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    untied = _model("tiny-llama", tie_embeddings=False)
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight


def test_logits_to_keep():
    model = _model("tiny-qwen2")
    x = torch.randint(0, 2048, (2, 10))
    with torch.no_grad():
        assert torch.allclose(model(x, logits_to_keep=1), model(x)[:, -1:], atol=1e-6)  # matmul blocking differs


def test_rope_frequencies_stay_fp32_under_low_precision():
    model = _model("tiny-llama").to(torch.bfloat16)
    assert model.model.rotary.inv_freq.dtype == torch.float32
    assert model.lm_head.weight.dtype == torch.bfloat16


def test_attention_mask_shapes():
    model = _model("tiny-llama")
    x = torch.randint(0, 2048, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0
    cache = model.new_cache(2, 16)
    with torch.no_grad():
        model(x, attention_mask=mask, cache=cache)
        step = torch.randint(0, 2048, (2, 1))
        hf_style = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)  # cached + new, as transformers passes
        a = model(step, attention_mask=hf_style, cache=cache)
    cache2 = model.new_cache(2, 16)
    with torch.no_grad():
        model(x, attention_mask=mask, cache=cache2)
        b = model(step, cache=cache2)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"attention_mask has shape \[2, 5\]"):
        model(x, attention_mask=mask[:, :5])
