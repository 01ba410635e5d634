"""`LocalLLM.embed`: one vector per text in input order whatever the batching, padding excluded,
truncation with one warning (or an error), the spec a model directory carries, and an encoder
that embeds but refuses to generate."""

from __future__ import annotations

import dataclasses
import logging
import shutil

import numpy as np
import pytest
import torch

import llmkit
from llmkit.infer.llm import EncoderError, LocalLLM
from llmkit.models import ContextLengthError, Transformer
from llmkit.models.sentence import EmbeddingSpec, EmbeddingSpecError, write_embedding_spec

TEXTS = ["hello world", "def f(x):\n    return x * 2", "a", "import os, sys  # π ≈ 3.14159", "class A:\n    pass"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


@pytest.fixture(scope="module")
def llm(tiny_dir):
    return llmkit.load(tiny_dir)


def one_by_one(llm, texts):
    """Reference: each text alone through the model, no padding, pooled by hand."""
    with torch.no_grad():
        return np.stack([llm.model.hidden_states(torch.tensor([llm.tokenize(t)]))[0].mean(0).numpy() for t in texts])


def test_vectors_are_mean_pooled_in_input_order_whatever_the_batch(llm):
    want = one_by_one(llm, TEXTS)
    for batch_size in (1, 2, 32):  # sorted by length inside the call, padded per batch
        got = llm.embed(TEXTS, batch_size=batch_size, precision="fp32")
        assert got.dtype == np.float32 and got.shape == (len(TEXTS), llm.config.dim)
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert llm.embed("hello world").shape == (1, llm.config.dim)  # a lone string is one text


def test_empty_and_wrong_inputs(llm):
    assert llm.embed([]).shape == (0, llm.config.dim) and llm.embed([]).dtype == np.float32
    with pytest.raises(TypeError, match=r"texts\[1\] is int 3, not a str"):
        llm.embed(["fine", 3])
    with pytest.raises(TypeError, match=r"texts\[0\] is bytes"):
        llm.embed([b"bytes"])
    with pytest.raises(ValueError, match="input 0 has no tokens to embed"):
        llm.embed([""])  # this tokenizer adds no bos: nothing to pool


def test_long_texts_are_cut_with_one_warning_or_refused(llm, caplog):
    limit = llm.max_embed_tokens
    long = "print('hello world')\n" * 400
    assert len(llm.tokenize(long)) > limit
    with caplog.at_level(logging.WARNING, logger="llmkit.models.texts"):
        got = llm.embed([long, "short", long + "x"], precision="fp32")
    cut = [r.message for r in caplog.records if "were cut" in r.message]
    assert len(cut) == 1 and cut[0].startswith(f"2 of 3 texts were longer than the {limit} tokens")
    np.testing.assert_allclose(got[0], llm.embed_tokens([llm.tokenize(long)[:limit]], precision="fp32")[0], atol=1e-5)
    with pytest.raises(ContextLengthError, match=rf"2 of 3 texts are longer than the {limit} tokens .*texts\[0\] has"):
        llm.embed([long, "short", long], truncate=False)


def test_the_spec_decides_pooling_normalisation_and_length(llm):
    spec = EmbeddingSpec(("cls", "max"), normalize=True, max_seq_length=6)
    other = LocalLLM(llm.model, llm.tokenizer, name="spec", embedding=spec)
    assert other.embedding_dim == 2 * llm.config.dim and other.max_embed_tokens == 6
    got = other.embed(TEXTS, batch_size=2, precision="fp32")
    with torch.no_grad():
        for text, vector in zip(TEXTS, got):
            h = llm.model.hidden_states(torch.tensor([llm.tokenize(text)[:6]]))[0]
            want = torch.nn.functional.normalize(torch.cat([h[0], h.max(0).values]), dim=0)
            np.testing.assert_allclose(vector, want.numpy(), atol=1e-5)


def test_load_reads_the_sentence_transformers_files_and_save_keeps_them(tiny_dir, tmp_path):
    folder = tmp_path / "st"
    shutil.copytree(tiny_dir, folder)
    spec = EmbeddingSpec(("lasttoken",), normalize=True, max_seq_length=32)
    write_embedding_spec(folder, spec, dim=64)
    loaded = llmkit.load(folder)
    assert loaded.embedding == spec
    assert np.allclose(np.linalg.norm(loaded.embed(TEXTS), axis=1), 1, atol=1e-5)
    loaded.save(tmp_path / "saved")
    assert llmkit.load(tmp_path / "saved").embedding == spec
    assert llmkit.load(tiny_dir).embedding is None  # a plain directory: the mean, not normalised


def test_load_refuses_a_sentence_model_it_cannot_embed_with(tiny_dir, tmp_path):
    folder = tmp_path / "dense"
    shutil.copytree(tiny_dir, folder)
    write_embedding_spec(folder, EmbeddingSpec(), dim=64)
    modules = (folder / "modules.json").read_text().rstrip().rstrip("]")
    (folder / "modules.json").write_text(modules + ', {"idx": 2, "name": "2", "path": "2_Dense", '
                                                   '"type": "sentence_transformers.models.Dense"}]')
    with pytest.raises(EmbeddingSpecError, match="Dense"):
        llmkit.load(folder)


def test_an_encoder_embeds_and_refuses_to_generate(llm):
    encoder = Transformer(dataclasses.replace(llm.config, causal=False)).eval()
    enc = LocalLLM(encoder, llm.tokenizer, name="tiny-encoder")
    assert enc.embed(TEXTS).shape == (len(TEXTS), llm.config.dim)
    message = ("tiny-encoder is an encoder (bidirectional attention): it embeds text (LLM.embed, `llmkit embed`) and "
               "cannot generate; use a causal model for generation")
    calls = [lambda: enc.generate("hi"), lambda: enc.generate(["hi", "yo"]), lambda: enc.stream("hi"),
             lambda: enc.complete(["hi"]), lambda: enc.chat([{"role": "user", "content": "hi"}]),
             lambda: enc.chat([{"role": "user", "content": "hi"}], stream=True),
             lambda: enc.loglikelihood([("a", " b")]), lambda: enc.loglikelihood_rolling(["a b"]),
             lambda: enc.loglikelihood_tokens([([1], [2])])]
    for call in calls:
        with pytest.raises(EncoderError) as info:
            call()
        assert str(info.value) == message


def test_precision_auto_uses_bf16_only_where_it_is_fast(llm, monkeypatch):
    import llmkit.infer.embedding as embedding

    monkeypatch.setattr(embedding, "fast_bf16", lambda device: False)
    assert llm.embed_autocast("auto") is None
    np.testing.assert_array_equal(llm.embed(TEXTS), llm.embed(TEXTS, precision="fp32"))
    monkeypatch.setattr(embedding, "fast_bf16", lambda device: True)
    assert llm.embed_autocast("auto") is torch.bfloat16
    fp32, bf16 = llm.embed(TEXTS, precision="fp32"), llm.embed(TEXTS, precision="bf16")
    assert not np.array_equal(fp32, bf16)  # bf16 did run
    cosine = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cosine.min() > 0.999
    with pytest.raises(ValueError, match="precision='fp8' is not supported: use one of auto, fp32, bf16"):
        llm.embed(TEXTS, precision="fp8")
