"""Presets, validation and analytical sizes."""

from __future__ import annotations

import pytest
import torch

from llmkit.models import ConfigError, ModelConfig, Transformer, list_presets, preset
from llmkit.models.hf import config_to_hf
from tests.peers import peer

transformers = peer("transformers")

REAL_PRESETS = [p for p in list_presets() if not p.startswith("tiny-")]


def _hf_param_count(cfg: ModelConfig) -> int:
    hf_cfg = transformers.AutoConfig.for_model(**config_to_hf(cfg))
    with torch.device("meta"):
        auto = transformers.AutoModelForMaskedLM if cfg.is_encoder else \
            transformers.AutoModelForSeq2SeqLM if cfg.is_seq2seq else transformers.AutoModelForCausalLM
        model = auto.from_config(hf_cfg)
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


@pytest.mark.parametrize("name", list_presets())
def test_preset_parameter_count_equals_transformers(name):
    cfg = preset(name)
    expected = _hf_param_count(cfg)
    with torch.device("meta"):  # no 7B model is allocated
        ours = Transformer(cfg)
    assert ours.num_parameters() == expected
    assert cfg.num_parameters() == expected


@pytest.mark.parametrize("name,billions", [("gpt2", 0.124), ("gpt2-xl", 1.56), ("llama-2-7b", 6.74),
                                           ("llama-3.2-1b", 1.24), ("llama-3.1-8b", 8.03), ("mistral-7b", 7.24),
                                           ("qwen2.5-0.5b", 0.494), ("qwen2.5-7b", 7.62), ("smollm2-135m", 0.1349),
                                           ("smollm2-1.7b", 1.71), ("t5-small", 0.0605)])
def test_presets_have_published_sizes(name, billions):
    """Independent of transformers: the sizes the model cards publish."""
    assert preset(name).num_parameters() / 1e9 == pytest.approx(billions, rel=0.01)


def test_non_embedding_count_and_flops():
    cfg = preset("gpt2")
    with torch.device("meta"):
        model = Transformer(cfg)
    n = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name)
    assert model.num_parameters(embeddings=False) == cfg.num_parameters(embeddings=False) == n
    # Kaplan: 2N plus attention; the head adds 2·vocab·dim
    expected = 2 * (n + cfg.vocab_size * cfg.dim) + 2 * cfg.n_layers * 1024 * cfg.dim
    assert cfg.flops_per_token(1024) == expected
    assert cfg.flops_per_token(1024, training=True) == 3 * expected


def test_weight_memory_by_dtype():
    cfg = preset("llama-2-7b")
    n = cfg.num_parameters()
    assert cfg.weight_bytes("fp32") == 4 * n
    assert cfg.weight_bytes("bf16") == 2 * n
    int8, int4 = cfg.weight_bytes("int8"), cfg.weight_bytes("int4")
    # as `llmkit quantize` writes them: the block Linears and the (untied) head quantised, with an
    # fp32 scale per output row (int8) or per 64 inputs (int4: 4096 and 11008 are multiples of 64);
    # the embedding and the 2 * 32 + 1 RMSNorm weights stay fp32
    d, h, v = cfg.dim, cfg.hidden_dim, cfg.vocab_size
    linear = 32 * (4 * d * d + 3 * d * h) + v * d
    rows = 32 * (4 * d + 2 * h + d) + v
    rest = v * d + (2 * 32 + 1) * d
    assert linear + rest == n
    assert int8 == linear + 4 * rows + 4 * rest
    assert int4 == linear // 2 + 4 * linear // 64 + 4 * rest
    with pytest.raises(ConfigError, match="dtype"):
        cfg.weight_bytes("int3")


@pytest.mark.parametrize("changes,field", [
    (dict(norm="batchnorm"), "norm"),
    (dict(positions="alibi"), "positions"),
    (dict(n_heads=6, n_kv_heads=4, dim=48), "n_kv_heads"),
    (dict(dim=65, n_heads=4), "dim"),
    (dict(sliding_window=0), "sliding_window"),
    (dict(dropout=1.5), "dropout"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}), "rope_type"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "low_freq_factor"),
    (dict(layer_types=["full_attention"]), "layer_types"),
])
def test_invalid_config_names_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        preset("tiny-llama", **changes)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="llama-3.2-1b"):
        preset("llama-9")


def test_replace_rederives_head_dim():
    cfg = preset("tiny-llama").replace(dim=128)
    assert cfg.head_dim == 128 // cfg.n_heads
    assert preset("llama-3.2-3b").replace(n_layers=2).head_dim == 128
    gpt = preset("gpt2", n_heads=6, dim=384)
    assert gpt.n_kv_heads == 6 and gpt.head_dim == 64
    assert preset("llama-3.2-1b", n_heads=16).n_kv_heads == 8  # GQA keeps its KV heads


def test_dict_round_trip():
    cfg = preset("llama-3.2-1b")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="hidden_sizee"):
        ModelConfig.from_dict({**cfg.to_dict(), "hidden_sizee": 3})
