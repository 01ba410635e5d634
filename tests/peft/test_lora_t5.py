"""LoRA on T5 (encoder-decoder) in PEFT's file format: targets named our way (q_proj, down_proj,
self_attn.q_proj, …) are saved under T5's names (q, wo, SelfAttention.q, …) that catch exactly the
adapted modules, PEFT on transformers' T5ForConditionalGeneration computes what llmkit computes, and
PEFT's own T5 adapters load here."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from llmkit.models.hf import load_pretrained
from llmkit.peft import AdapterError, apply_lora, load_adapter, save_adapter
from tests.peers import peer

transformers = peer("transformers")
peft = peer("peft")

TOL = 1e-4
VOCAB = 120

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A random gated (v1.1-style: wi_0, wi_1, wo) T5ForConditionalGeneration on disk."""
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                                   num_heads=4, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                                   decoder_start_token_id=0, relative_attention_num_buckets=8,
                                   relative_attention_max_distance=20)
    path = tmp_path_factory.mktemp("t5")
    transformers.T5ForConditionalGeneration(config).save_pretrained(path)
    return path


def _batch():
    """Sources, the second right-padded, and decoder inputs starting from the pad token."""
    g = torch.Generator().manual_seed(0)
    src = torch.randint(2, VOCAB, (2, 14), generator=g)
    mask = torch.ones_like(src)
    mask[1, 9:], src[1, 9:] = 0, 0
    tgt = torch.randint(2, VOCAB, (2, 7), generator=g)
    tgt[:, 0] = 0
    return src, mask, tgt


def _randomise(params, seed, std=0.2):
    """Trained-looking weights: LoRA's B starts at zero, which would make every comparison trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * std)


def _logits(ours, hf):
    src, mask, tgt = _batch()
    with torch.no_grad():
        return (ours(tgt, encoder_input_ids=src, encoder_attention_mask=mask),
                hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits)


def _peft_lora_modules(model) -> set[str]:
    """Paths (transformers' names) of the modules PEFT gave a LoRA."""
    return {n.removeprefix("base_model.model.") for n, m in model.named_modules()
            if isinstance(m, peft.tuners.lora.LoraLayer)}


@pytest.mark.parametrize("targets, names, some, none", [
    # q_proj means self- and cross-attention alike, as T5's "q" does
    (["q_proj", "v_proj", "o_proj", "down_proj", "up_proj"], ["o", "q", "v", "wi_1", "wo"],
     ["encoder.block.0.layer.0.SelfAttention.q", "decoder.block.1.layer.1.EncDecAttention.o",
      "decoder.block.0.layer.2.DenseReluDense.wo", "encoder.block.1.layer.1.DenseReluDense.wi_1"],
     ["decoder.block.0.layer.1.EncDecAttention.k", "encoder.block.0.layer.1.DenseReluDense.wi_0"]),
    # self-attention alone, and one cross-attention projection: named so as not to catch the other
    (["self_attn.q_proj", "self_attn.v_proj", "encoder_attn.k_proj"], ["EncDecAttention.k", "SelfAttention.q",
                                                                       "SelfAttention.v"],
     ["encoder.block.1.layer.0.SelfAttention.v", "decoder.block.0.layer.0.SelfAttention.q",
      "decoder.block.1.layer.1.EncDecAttention.k"],
     ["decoder.block.0.layer.1.EncDecAttention.q", "decoder.block.0.layer.1.EncDecAttention.v"]),
])
def test_llmkit_lora_on_t5_loads_in_peft(t5_dir, tmp_path, targets, names, some, none):
    ours = load_pretrained(t5_dir).eval()
    paths = apply_lora(ours, r=4, alpha=8, targets=targets)
    _randomise([p for p in ours.parameters() if p.requires_grad], seed=1)
    save_adapter(ours, tmp_path / "adapter", base_model=str(t5_dir))
    conf = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert conf["task_type"] == "SEQ_2_SEQ_LM" and conf["target_modules"] == names
    keys = set(load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    modules = {k.removeprefix("base_model.model.").removesuffix(".lora_A.weight") for k in keys if "lora_A" in k}
    assert len(modules) == len(paths) and {f"base_model.model.{m}.lora_B.weight" for m in modules} <= keys
    assert set(some) <= modules and not set(none) & modules

    hf = peft.PeftModel.from_pretrained(transformers.T5ForConditionalGeneration.from_pretrained(t5_dir),
                                        tmp_path / "adapter").eval()
    assert _peft_lora_modules(hf) == modules  # target_modules catch exactly what llmkit adapted
    got, expected = _logits(ours, hf)
    assert (got - expected).abs().max() < TOL
    base_hf = transformers.T5ForConditionalGeneration.from_pretrained(t5_dir).eval()
    assert (_logits(ours, base_hf)[1] - got).abs().max() > 1e-3  # the LoRA changes the logits


@pytest.mark.parametrize("targets, ours_some, ours_none", [
    (["q", "v", "wo"], ["encoder.layers.0.self_attn.q_proj", "model.layers.1.encoder_attn.q_proj",
                        "model.layers.0.self_attn.v_proj", "encoder.layers.1.mlp.down_proj"],
     ["model.layers.0.self_attn.o_proj"]),
    (["SelfAttention.q", "EncDecAttention.v"], ["encoder.layers.1.self_attn.q_proj", "model.layers.0.self_attn.q_proj",
                                                "model.layers.1.encoder_attn.v_proj"],
     ["model.layers.0.encoder_attn.q_proj", "model.layers.0.self_attn.v_proj"]),
])
def test_peft_t5_adapter_loads_here(t5_dir, tmp_path, targets, ours_some, ours_none):
    base = transformers.T5ForConditionalGeneration.from_pretrained(t5_dir)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="SEQ_2_SEQ_LM",
                             alpha_pattern={targets[-1]: 4})
    hf = peft.get_peft_model(base, config).eval()
    _randomise([p for n, p in hf.named_parameters() if "lora_" in n], seed=2)
    hf.save_pretrained(tmp_path / "adapter")

    ours = load_pretrained(t5_dir).eval()
    assert load_adapter(ours, tmp_path / "adapter") == "lora"
    adapted = {n.removesuffix(".lora_A.default.weight") for n, _ in ours.named_parameters() if ".lora_A." in n}
    assert len(adapted) == len(_peft_lora_modules(hf)) and set(ours_some) <= adapted and not set(ours_none) & adapted
    got, expected = _logits(ours, hf)
    assert (got - expected).abs().max() < TOL


def test_t5_lora_that_trains_embeddings_is_refused(t5_dir, tmp_path):
    ours = load_pretrained(t5_dir)
    apply_lora(ours, r=2, alpha=4, targets=["q_proj"], train_embeddings=True)
    with pytest.raises(AdapterError, match="encoder-decoder's token embeddings"):
        save_adapter(ours, tmp_path / "adapter")
