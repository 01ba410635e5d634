"""T5 as a member of the one model: an encoder, cross-attention and relative position buckets are
config fields; HF T5ForConditionalGeneration checkpoints load and save with logits equal to
transformers' (t5 and v1.1 configs, padded sources)."""

from __future__ import annotations

import json

import pytest
import torch

from llmkit.models.config import ConfigError, preset
from llmkit.models.hf import CheckpointError, load_pretrained, save_pretrained
from llmkit.models.transformer import Transformer
from tests.peers import peer

transformers = peer("transformers")

TOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def _hf(feed_forward_proj: str, **kw):
    config = transformers.T5Config(vocab_size=120, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
                                   num_heads=4, feed_forward_proj=feed_forward_proj, dropout_rate=0.0,
                                   decoder_start_token_id=0, relative_attention_num_buckets=8,
                                   relative_attention_max_distance=20, **kw)
    return transformers.T5ForConditionalGeneration(config).eval()


def _batch():
    """Sources of 30 tokens (beyond the 20-token max distance, so the log-spaced buckets are used),
    the second right-padded; decoder inputs starting from the pad token as T5's do."""
    g = torch.Generator().manual_seed(0)
    src = torch.randint(2, 120, (2, 30), generator=g)
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, 21:], src[1, 21:] = 0, 0
    tgt = torch.randint(2, 120, (2, 12), generator=g)
    tgt[:, 0] = 0
    return src, mask, tgt


@pytest.mark.parametrize("proj, scale", [("relu", True), ("gated-gelu", False)])
def test_hf_t5_loads_and_saves_with_the_same_logits(tmp_path, proj, scale):
    torch.manual_seed(1)
    hf = _hf(proj, tie_word_embeddings=scale)  # transformers 5 reads tie_word_embeddings=False as "do not scale"
    hf.save_pretrained(tmp_path / "hf")
    ours = load_pretrained(tmp_path / "hf")
    assert ours.config.is_seq2seq and ours.config.scale_tied_head is scale
    assert ours.config.mlp == ("swiglu" if proj.startswith("gated") else "gelu")
    src, mask, tgt = _batch()
    with torch.no_grad():
        expected = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
        got = ours(tgt, encoder_input_ids=src, encoder_attention_mask=mask)
        memory = ours.memory(src, mask)  # the source encoded once, read by the decoder as often as needed
        again = ours(tgt, memory=memory)
        assert len(memory.kv) == ours.config.n_layers  # every layer's cross keys/values kept
        cached = ours(tgt, memory=memory)
    assert (got - expected).abs().max() < TOL
    assert torch.equal(got, again) and torch.equal(got, cached)
    save_pretrained(ours, tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written["architectures"] == ["T5ForConditionalGeneration"] and written["scale_decoder_outputs"] is scale
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        assert (back(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits - got).abs().max() < TOL
    assert load_pretrained(tmp_path / "ours").config == ours.config


def test_llmkit_t5_preset_counts_and_saves(tmp_path):
    cfg = preset("tiny-t5", vocab_size=120)
    model = Transformer(cfg).eval()
    assert model.num_parameters() == cfg.num_parameters()
    save_pretrained(model, tmp_path)
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    src, mask, tgt = _batch()
    with torch.no_grad():
        expected = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
        assert (model(tgt, encoder_input_ids=src, encoder_attention_mask=mask) - expected).abs().max() < TOL


def test_encoder_decoder_bad_input(tmp_path):
    model = Transformer(preset("tiny-t5", vocab_size=120))
    with pytest.raises(ValueError, match="needs its source: give encoder_input_ids"):
        model(torch.tensor([[0, 5]]))
    with pytest.raises(ValueError, match="encode\\(\\) is for encoder-decoders"):
        Transformer(preset("tiny-llama")).encode(torch.tensor([[1, 2]]))
    with pytest.raises(ConfigError, match="n_encoder_layers > 0 makes an encoder-decoder"):
        preset("tiny-t5", causal=False)
    _hf("relu").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["T5EncoderModel"]}))
    with pytest.raises(CheckpointError, match="T5 variant T5EncoderModel is not supported.*T5ForConditionalGeneration"):
        load_pretrained(tmp_path)
