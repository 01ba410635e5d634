"""The evidence for the adapter files: Hugging Face PEFT on the transformers model and llmkit on
the same weights compute the same logits, for adapters made by either side (LoRA on Llama and
GPT-2, GPT-2's fused c_attn included; prefix and prompt tuning)."""

from __future__ import annotations

import pytest
import torch

from llmkit.models.hf import load_pretrained
from llmkit.peft import (adapter, apply_lora, apply_prefix_tuning, apply_prompt_tuning, load_adapter,
                         save_adapter)
from tests.hf_models import VOCAB, build_hf_model
from tests.peers import peer

transformers = peer("transformers")
peft = peer("peft")

TOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


@pytest.fixture(scope="module", params=["llama-gqa", "gpt2"])
def base(request, tmp_path_factory):
    return request.param, build_hf_model(request.param, tmp_path_factory.mktemp(request.param))


def tokens(n=12, batch=2, seed=3):
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


def hf_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()


def randomise(params, seed=0, std=0.2):
    """Trained-looking adapter weights (B = 0 at init would make every comparison trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * std)


def test_llmkit_lora_loads_in_peft(base, tmp_path):
    name, path = base
    ours = load_pretrained(path)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"] if name == "gpt2" else \
        ["q_proj", "v_proj", "gate_proj", "down_proj"]
    apply_lora(ours, r=4, alpha=8, targets=targets)
    randomise([p for p in ours.parameters() if p.requires_grad])
    save_adapter(ours, tmp_path / "adapter", base_model=str(path))
    x = tokens()
    with torch.no_grad():
        got = ours(x)
        base_logits = hf_model(path)(x).logits
        theirs = peft.PeftModel.from_pretrained(hf_model(path), tmp_path / "adapter").eval()
        expected = theirs(x).logits
    assert (got - base_logits).abs().max() > 1e-2  # the adapter changes the output
    assert (got - expected).abs().max().item() <= TOL


def test_peft_lora_loads_in_llmkit(base, tmp_path):
    name, path = base
    targets = ["c_attn", "c_proj", "c_fc"] if name == "gpt2" else ["q_proj", "k_proj", "o_proj", "up_proj"]
    cfg = peft.LoraConfig(r=4, lora_alpha=12, target_modules=targets, fan_in_fan_out=name == "gpt2",
                          rank_pattern={"o_proj": 2} if name != "gpt2" else {}, task_type="CAUSAL_LM")
    theirs = peft.get_peft_model(hf_model(path), cfg)
    randomise([p for n, p in theirs.named_parameters() if "lora_" in n], seed=1)
    theirs.save_pretrained(tmp_path / "peft")
    ours = load_pretrained(path)
    assert load_adapter(ours, tmp_path / "peft") == "lora"
    x = tokens()
    with torch.no_grad():
        expected = theirs.eval()(x).logits
        got = ours(x)
    assert (got - expected).abs().max().item() <= TOL
    # and back out: our file of their adapter loads in PEFT to the same logits
    save_adapter(ours, tmp_path / "again")
    again = peft.PeftModel.from_pretrained(hf_model(path), tmp_path / "again").eval()
    with torch.no_grad():
        assert (again(x).logits - expected).abs().max().item() <= TOL


def test_gpt2_qkv_adapters_export_as_one_block_diagonal_c_attn(tmp_path):
    path = build_hf_model("gpt2", tmp_path / "gpt2")
    ours = load_pretrained(path)
    apply_lora(ours, r=3, alpha=6, targets=["q_proj", "v_proj"])
    randomise([p for p in ours.parameters() if p.requires_grad], seed=2)
    save_adapter(ours, tmp_path / "a")
    from safetensors.torch import load_file

    t = load_file(tmp_path / "a" / "adapter_model.safetensors")
    a = t["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"]
    b = t["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
    assert a.shape == (6, 64) and b.shape == (192, 6)  # rank 2r: q and v
    assert b[64:128].abs().max() == 0  # the k rows are untouched
    assert b[:64, 3:].abs().max() == 0 and b[128:, :3].abs().max() == 0  # block diagonal


@pytest.mark.parametrize("kind", ["prefix", "prompt"])
def test_virtual_tokens_match_peft_both_ways(base, kind, tmp_path):
    name, path = base
    n_virtual = 5
    x = tokens(10, batch=2, seed=4)
    # ours -> PEFT
    ours = load_pretrained(path)
    enc = apply_prefix_tuning(ours, n_virtual) if kind == "prefix" else apply_prompt_tuning(ours, n_virtual)
    randomise(enc.parameters(), seed=5, std=0.5)
    save_adapter(ours, tmp_path / kind)
    with torch.no_grad():
        got = ours(x)
        theirs = peft.PeftModel.from_pretrained(hf_model(path), tmp_path / kind).eval()
        expected = theirs(input_ids=x, attention_mask=torch.ones_like(x)).logits
    if kind == "prompt":  # PEFT returns logits for the virtual positions too
        expected = expected[:, n_virtual:]
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= TOL
    # PEFT -> ours
    if kind == "prefix":
        cfg = peft.PrefixTuningConfig(num_virtual_tokens=n_virtual, task_type="CAUSAL_LM")
    else:
        cfg = peft.PromptTuningConfig(num_virtual_tokens=n_virtual, task_type="CAUSAL_LM")
    made = peft.get_peft_model(hf_model(path), cfg)
    randomise([p for n, p in made.named_parameters() if p.requires_grad], seed=6, std=0.5)
    made.save_pretrained(tmp_path / "peft")
    fresh = load_pretrained(path)
    assert load_adapter(fresh, tmp_path / "peft") == kind
    with torch.no_grad():
        expected = made.eval()(input_ids=x, attention_mask=torch.ones_like(x)).logits
        if kind == "prompt":
            expected = expected[:, n_virtual:]
        assert (fresh(x) - expected).abs().max().item() <= TOL
        with adapter(fresh, None):  # switched off: the base model again
            assert (fresh(x) - hf_model(path)(x).logits).abs().max().item() <= TOL


@pytest.mark.parametrize("variant", ["qwen2", "llama-gqa"])  # tied and untied embeddings
def test_lora_with_trained_embeddings_is_peft_modules_to_save(variant, tmp_path):
    path = build_hf_model(variant, tmp_path / variant)
    ours = load_pretrained(path)
    apply_lora(ours, r=2, alpha=4, targets=["q_proj"], train_embeddings=True)
    trained = [p for p in ours.parameters() if p.requires_grad]
    assert ours.model.embed_tokens.weight in trained
    randomise(trained, seed=8, std=0.3)
    save_adapter(ours, tmp_path / "a")
    x = tokens()
    with torch.no_grad():
        theirs = peft.PeftModel.from_pretrained(hf_model(path), tmp_path / "a").eval()
        assert (ours(x) - theirs(x).logits).abs().max().item() <= TOL
        fresh = load_pretrained(path)
        load_adapter(fresh, tmp_path / "a")
        assert (fresh(x) - ours(x)).abs().max().item() <= TOL
