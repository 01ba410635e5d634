"""The core evidence: llmkit computes what transformers computes, on tiny random weights, in
both directions (transformers save -> llmkit load, llmkit save -> transformers load)."""

from __future__ import annotations

import json

import pytest
import torch

from llmkit.infer.generate import TokenGeneration
from llmkit.infer.sampling import GenerationConfig
from llmkit.models.hf import load_pretrained, save_pretrained
from tests.hf_models import VOCAB, build_hf_model, hf_configs
from tests.peers import peer

transformers = peer("transformers")

VARIANTS = sorted(hf_configs())

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request, tmp_path_factory):
    path = build_hf_model(request.param, tmp_path_factory.mktemp(request.param))
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    return request.param, path, hf


def _tokens(n: int, seed: int = 1, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, n), generator=g)


def test_logits_match_transformers(variant):
    name, path, hf = variant
    ours = load_pretrained(path)
    x = _tokens(40)  # longer than every sliding window and the dynamic-NTK base length
    with torch.no_grad():
        expected = hf(x).logits
        got = ours(x)
    assert got.shape == expected.shape == (2, 40, VOCAB)
    assert (got - expected).abs().max().item() <= 1e-4, name


def test_greedy_continuation_matches_transformers(variant):
    name, path, hf = variant
    ours = load_pretrained(path)
    prompt = _tokens(8, seed=2, batch=1)
    with torch.no_grad():
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32, eos_token_id=None,  # never stop early, as ignore_eos
                          do_sample=False, pad_token_id=0)
    expected = out[0, 8:].tolist()
    assert len(set(expected)) >= 8, "a degenerate continuation would prove nothing"
    gen = GenerationConfig(max_new_tokens=32, temperature=0, ignore_eos=True)
    run = TokenGeneration(ours, prompt.tolist(), gen)
    for _ in run:
        pass
    assert run.generated[0] == expected, name


def test_saved_checkpoint_loads_in_transformers(variant, tmp_path):
    name, path, hf = variant
    ours = load_pretrained(path)
    save_pretrained(ours, tmp_path / "out")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="sdpa").eval()
    assert type(again) is type(hf)
    x = _tokens(40, seed=3)
    with torch.no_grad():
        assert (again(x).logits - hf(x).logits).abs().max().item() <= 1e-4, name
    # tied models write the embedding once; transformers re-ties it
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] == hf.config.tie_word_embeddings


def test_sharded_checkpoint_round_trip(tmp_path):
    path = build_hf_model("llama-gqa", tmp_path / "src")
    ours = load_pretrained(path)
    files = save_pretrained(ours, tmp_path / "sharded", max_shard_bytes=40_000)
    assert len(files) > 2
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f.name for f in files}
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sharded").eval()
    back = load_pretrained(tmp_path / "sharded")
    x = _tokens(16)
    with torch.no_grad():
        assert (hf(x).logits - ours(x)).abs().max().item() <= 1e-4
        assert torch.equal(back(x), ours(x))
    # saving again unsharded removes the stale shards and the index
    save_pretrained(back, tmp_path / "sharded")
    assert sorted(p.name for p in (tmp_path / "sharded").glob("*.safetensors")) == ["model.safetensors"]
    assert not (tmp_path / "sharded" / "model.safetensors.index.json").exists()


def test_gpt2_without_transformer_prefix(tmp_path):
    """The original OpenAI GPT-2 files name tensors `h.0.attn...` without `transformer.`."""
    from safetensors.torch import load_file, save_file

    path = build_hf_model("gpt2", tmp_path / "g")
    sd = load_file(path / "model.safetensors")
    save_file({k.removeprefix("transformer."): v for k, v in sd.items()}, path / "model.safetensors",
              metadata={"format": "pt"})
    hf = transformers.AutoModelForCausalLM.from_pretrained(build_hf_model("gpt2", tmp_path / "ref")).eval()
    x = _tokens(10)
    with torch.no_grad():
        assert (load_pretrained(path)(x) - hf(x).logits).abs().max().item() <= 1e-4
