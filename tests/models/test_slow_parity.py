"""Slow: parity at real size (GPT-2 124M and a Llama-shaped 124M with GQA), with sharded files."""

from __future__ import annotations

import pytest
import torch

from llmkit.infer.generate import TokenGeneration
from llmkit.infer.sampling import GenerationConfig
from llmkit.models.hf import load_pretrained, save_pretrained
from tests.peers import peer

transformers = peer("transformers")
pytestmark = pytest.mark.slow


def _config(name):
    if name == "gpt2":
        return transformers.GPT2Config()
    return transformers.LlamaConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                    num_key_value_heads=4, intermediate_size=2048, vocab_size=32000)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_full_size_parity(name, tmp_path):
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(_config(name), attn_implementation="sdpa").eval()
    hf.save_pretrained(tmp_path / "hf", max_shard_size="100MB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    ours = load_pretrained(tmp_path / "hf")
    x = torch.randint(0, hf.config.vocab_size, (2, 300))
    with torch.no_grad():
        assert (hf(x).logits - ours(x)).abs().max().item() <= 1e-4
        prompt = x[:1, :16]
        expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32, eos_token_id=None,  # never stop early, as ignore_eos
                               do_sample=False, pad_token_id=0)[0, 16:].tolist()
    run = TokenGeneration(ours, prompt.tolist(), GenerationConfig(max_new_tokens=32, temperature=0, ignore_eos=True))
    for _ in run:
        pass
    assert run.generated[0] == expected
    save_pretrained(ours, tmp_path / "ours", max_shard_bytes=150 * 2**20)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        assert (again(x).logits - hf(x).logits).abs().max().item() <= 1e-4
