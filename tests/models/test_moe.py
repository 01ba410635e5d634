"""The mixture-of-experts MLP: dispatch against a token-by-token reference, the router losses
against transformers', both expert layouts of Mixtral and Qwen2-MoE checkpoints, greedy
generation from what llmkit writes, sizes, and the refusals. (Logits and greedy parity of models
transformers saved run with every family in test_hf_parity.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from llmkit.infer.generate import TokenGeneration
from llmkit.infer.sampling import GenerationConfig
from llmkit.models.config import ConfigError, preset
from llmkit.models.hf import CheckpointError, load_pretrained, read_config, save_pretrained
from llmkit.models.moe import MoE, load_balancing_loss, record_router, router_losses
from llmkit.models.transformer import Transformer
from tests.hf_models import VOCAB, build_hf_model
from tests.peers import peer

transformers = peer("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def _random_moe(name: str, seed: int = 0, std: float = 0.3) -> Transformer:
    """A tiny llmkit MoE with weights large enough that greedy decoding does not repeat one token."""
    torch.manual_seed(seed)
    model = Transformer(preset(name, vocab_size=VOCAB, init_std=std, tie_embeddings=False)).eval()
    return model


def test_dispatch_equals_a_token_by_token_reference():
    torch.manual_seed(0)
    moe = MoE(preset("tiny-qwen2-moe", n_experts=5, experts_per_token=3)).eval()
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(3, 7, 64)
    with torch.no_grad():
        got = moe(x)
        ref = torch.zeros_like(x)
        for b in range(3):
            for t in range(7):
                h = x[b, t]
                probs = torch.softmax(moe.gate(h), -1)
                top = probs.topk(3)
                for w, e in zip(top.values, top.indices):  # not renormalised (Qwen2-MoE's default)
                    ref[b, t] += w * moe.experts[int(e)](h[None])[0]
                ref[b, t] += torch.sigmoid(moe.shared_expert_gate(h)) * moe.shared_expert(h[None])[0]
    assert (got - ref).abs().max().item() < 1e-5
    assert len({tuple(moe.route(x.reshape(-1, 64))[1][i].tolist()) for i in range(21)}) > 3  # routes differ


def test_load_balancing_loss_equals_transformers():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(24, 6, generator=g) * s for s in (0.5, 2.0, 4.0)]
    for k in (1, 2, 3):
        ours, counts = load_balancing_loss(logits, k)
        theirs = load_balancing_loss_func(tuple(logits), 6, k)
        assert abs(float(ours) - float(theirs)) < 1e-6
        assert int(counts.sum()) == 3 * 24 * k


def test_router_losses_and_their_gradients_equal_transformers(tmp_path):
    """What llmkit trains with is what MixtralForCausalLM minimises (output_router_logits): the
    load-balancing loss over real tokens only (a right-padded row), its weight read from
    config.json, and the routers' gradients of cross-entropy plus the weighted loss."""
    import torch.nn.functional as F

    cfg = transformers.MixtralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                     num_experts_per_tok=2, initializer_range=0.1, router_aux_loss_coef=0.3,
                                     output_router_logits=True)
    torch.manual_seed(0)
    transformers.MixtralForCausalLM(cfg).save_pretrained(tmp_path / "m")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m").train()
    ours = load_pretrained(tmp_path / "m").train()
    assert ours.config.router_aux_loss_coef == 0.3 and record_router(ours)
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(x)
    mask[1, 11:] = 0  # five padding tokens, which transformers leaves out of the aux loss
    labels = x.masked_fill(mask == 0, -100)
    out = hf(x, attention_mask=mask, labels=labels)
    out.loss.backward()
    logits = ours(x, attention_mask=mask)
    router = router_losses(ours)
    assert abs(float(router.aux_loss) - float(out.aux_loss)) < 1e-5
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    (ce + router.penalty).backward()
    assert abs(float(ce + router.penalty) - float(out.loss)) < 1e-5
    for i in range(2):
        theirs, mine = hf.model.layers[i].mlp.gate.weight.grad, ours.model.layers[i].mlp.gate.weight.grad
        assert (theirs - mine).abs().max() <= 1e-5 * theirs.abs().max()
    real = torch.cat([t[mask.reshape(-1).bool()] for t in out.router_logits])
    z = torch.logsumexp(real, -1).square().mean()  # ST-MoE's z-loss, from transformers' logits of real tokens
    assert abs(float(router.z_loss) - float(z)) < 1e-4
    assert sum(router.tokens_per_expert) == pytest.approx(1.0) and len(router.tokens_per_expert) == 4
    assert 0.0 < router.entropy < torch.log(torch.tensor(4.0)).item()
    assert router_losses(ours) is None  # the recording was consumed


@pytest.mark.parametrize("name", ["mixtral", "qwen2-moe"])
def test_fused_expert_layout_loads(name, tmp_path):
    """transformers 5 holds experts fused (`experts.gate_up_proj`); a state_dict saved as it is
    in memory loads too."""
    path = build_hf_model(name, tmp_path / "src")
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    fused = tmp_path / "fused"
    fused.mkdir()
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
    if hf.config.tie_word_embeddings:
        sd.pop("lm_head.weight")
    assert any(k.endswith("experts.gate_up_proj") for k in sd)
    save_file(sd, fused / "model.safetensors", metadata={"format": "pt"})
    (fused / "config.json").write_text((path / "config.json").read_text())
    x = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (load_pretrained(fused)(x) - hf(x).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["tiny-mixtral", "tiny-qwen2-moe"])
def test_llmkit_moe_generates_the_same_in_transformers(name, tmp_path):
    ours = _random_moe(name)
    save_pretrained(ours, tmp_path / "out")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(hf).__name__ == {"tiny-mixtral": "MixtralForCausalLM", "tiny-qwen2-moe": "Qwen2MoeForCausalLM"}[name]
    prompt = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (hf(prompt).logits - ours(prompt)).abs().max().item() <= 1e-4
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
    expected = out[0, 8:].tolist()
    assert len(set(expected)) >= 6, "a degenerate continuation would prove nothing"
    run = TokenGeneration(ours, prompt.tolist(), GenerationConfig(max_new_tokens=24, temperature=0, ignore_eos=True))
    for _ in run:
        pass
    assert run.generated[0] == expected
    back = read_config(tmp_path / "out")
    assert (back.n_experts, back.experts_per_token, back.expert_hidden_dim, back.shared_expert_hidden_dim,
            back.router_renormalize) == (ours.config.n_experts, ours.config.experts_per_token,
                                          ours.config.expert_hidden_dim, ours.config.shared_expert_hidden_dim,
                                          ours.config.router_renormalize)


def test_router_loss_weights_and_expert_width_round_trip_through_config_json(tmp_path):
    # Mixtral has no dense MLP: experts narrower than hidden_dim are written as its intermediate_size
    model = Transformer(preset("tiny-mixtral", router_aux_loss_coef=0.02, router_z_loss_coef=0.001,
                               expert_hidden_dim=40))
    save_pretrained(model, tmp_path / "m")
    written = json.loads((tmp_path / "m" / "config.json").read_text())
    assert written["router_aux_loss_coef"] == 0.02 and written["output_router_logits"] is True
    assert written["intermediate_size"] == 40
    back = read_config(tmp_path / "m")
    assert (back.router_aux_loss_coef, back.router_z_loss_coef, back.expert_hidden_dim) == (0.02, 0.001, 40)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    x = torch.randint(0, 2048, (1, 10), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert (hf(x).logits - model.eval()(x)).abs().max().item() <= 1e-4
    # a Hub config whose aux loss transformers would not apply (output_router_logits false) trains without it
    written["output_router_logits"] = False
    (tmp_path / "m" / "config.json").write_text(json.dumps(written))
    assert read_config(tmp_path / "m").router_aux_loss_coef == 0.0


def test_parameter_counts_total_and_active():
    hf_cfg = transformers.MixtralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                        num_experts_per_tok=2)
    hf = transformers.MixtralForCausalLM(hf_cfg)
    from llmkit.models.hf import config_from_hf

    cfg = config_from_hf(hf_cfg.to_dict())
    assert cfg.num_parameters() == hf.num_parameters() == Transformer(cfg).num_parameters()
    # active: everything but the 2 experts per layer a token does not use
    assert cfg.num_parameters() - cfg.num_parameters(active=True) == 2 * 2 * 3 * 64 * 96
    # the published sizes: Mixtral 8x7B 46.7B total / 12.9B active; Qwen1.5-MoE-A2.7B 14.3B / 2.7B
    mixtral, qwen = preset("mixtral-8x7b"), preset("qwen1.5-moe-a2.7b")
    assert round(mixtral.num_parameters() / 1e9, 1) == 46.7 and round(mixtral.num_parameters(active=True) / 1e9, 1) == 12.9
    assert round(qwen.num_parameters() / 1e9, 1) == 14.3 and round(qwen.num_parameters(active=True) / 1e9, 1) == 2.7
    # Mixtral's experts are as wide as hidden_dim and follow it; Qwen2-MoE's have their own width
    assert preset("tiny-mixtral", hidden_dim=128).expert_hidden_dim == 128
    assert preset("tiny-qwen2-moe", hidden_dim=128).expert_hidden_dim == 48
    # FLOPs follow the active parameters: the MoE costs what its dense twin of equal active width costs
    dense = preset("tiny-llama", hidden_dim=176)
    moe = preset("tiny-mixtral", hidden_dim=88, tie_embeddings=True)
    assert moe.flops_per_token(128) - dense.flops_per_token(128) == 2 * 2 * 64 * 4  # the routers alone


def test_refusals_name_the_field_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"experts_per_token=5 must be between 1 and n_experts=4"):
        preset("tiny-mixtral", experts_per_token=5)
    with pytest.raises(ConfigError, match=r"router_aux_loss_coef=0.01 .*dense \(n_experts=0\)"):
        preset("tiny-llama", router_aux_loss_coef=0.01)
    with pytest.raises(ConfigError, match=r"router_z_loss_coef"):
        preset("tiny-llama", router_z_loss_coef=0.001)
    with pytest.raises(ConfigError, match=r"family='llama' has no experts .* use family='mixtral'"):
        from llmkit.models.hf import config_to_hf

        config_to_hf(preset("tiny-llama", n_experts=4, hidden_dim=88))
    from llmkit.models.hf import config_to_hf

    with pytest.raises(ConfigError, match=r"no Hugging Face family has experts without a shared expert"):
        config_to_hf(preset("tiny-mixtral", router_renormalize=False))
    with pytest.raises(ConfigError, match=r"family='mixtral' .* shared_expert_hidden_dim=80"):
        config_to_hf(preset("tiny-qwen2-moe", family="mixtral", router_renormalize=True, qkv_bias=False))
    with pytest.raises(ConfigError, match=r"expert_hidden_dim=48 describes experts, but the model is dense"):
        preset("tiny-llama", expert_hidden_dim=48)
    with pytest.raises(ConfigError, match=r"n_experts=True must be"):
        preset("tiny-llama", n_experts=True)
    for model_type, fix in (("qwen3_moe", "mixture of experts that llmkit does not read"),
                            ("deepseek_v3", "mixtral, qwen2_moe")):
        (tmp_path / model_type).mkdir()
        (tmp_path / model_type / "config.json").write_text(json.dumps({"model_type": model_type}))
        with pytest.raises(CheckpointError, match=rf"model_type '{model_type}' .*{fix}"):
            read_config(tmp_path / model_type)
    mixed = json.loads(transformers.Qwen2MoeConfig(decoder_sparse_step=2).to_json_string())
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "config.json").write_text(json.dumps(mixed))
    with pytest.raises(CheckpointError, match=r"decoder_sparse_step=2 .* every layer has experts"):
        read_config(tmp_path / "mixed")


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantised_moe_keeps_its_routers_and_round_trips(method, tmp_path):
    """Experts quantise like any Linear; routers stay in full precision (as llama.cpp keeps
    `ffn_gate_inp`); the saved checkpoint reloads to the same logits and weighs what
    `weight_bytes` predicts."""
    from llmkit.quant.weight_only import quantize_model

    model = _random_moe("tiny-qwen2-moe")
    quantize_model(model, method)
    mlp = model.model.layers[0].mlp
    assert type(mlp.gate) is torch.nn.Linear and type(mlp.shared_expert_gate) is torch.nn.Linear
    assert type(mlp.experts[0].gate_proj).__name__ == {"int8": "Int8Linear", "int4": "Int4Linear"}[method]
    save_pretrained(model, tmp_path / "q")
    back = load_pretrained(tmp_path / "q")
    # a router carrying a LoRA keeps its frozen base in full precision too, with every quantiser
    from llmkit.peft import apply_lora
    from llmkit.quant.nf4 import quantize_model_nf4

    for quantise in (lambda m: quantize_model(m, method), quantize_model_nf4):
        adapted = _random_moe("tiny-qwen2-moe")
        apply_lora(adapted, targets=["gate", "shared_expert_gate", "up_proj"])
        quantise(adapted)
        mlp = adapted.model.layers[1].mlp
        assert type(mlp.gate.base_layer) is type(mlp.shared_expert_gate.base_layer) is torch.nn.Linear
        assert type(mlp.experts[2].up_proj.base_layer) is not torch.nn.Linear
    x = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    stored = sum(t.numel() * t.element_size() for t in back.state_dict().values())
    assert model.config.weight_bytes(method) == stored


def test_moe_classifier_scores_as_transformers(tmp_path):
    """A reward model or classifier on a mixture of experts is saved as
    `MixtralForSequenceClassification` and scores the same there."""
    from llmkit.models.classifier import Classifier, load_classifier, save_classifier

    clf = Classifier(_random_moe("tiny-mixtral"), num_labels=3).eval()
    save_classifier(clf, tmp_path / "clf")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "clf").eval()
    assert type(hf).__name__ == "MixtralForSequenceClassification"
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = clf(ids)
        assert (hf(ids).logits - ours).abs().max().item() <= 1e-4
        assert torch.equal(load_classifier(tmp_path / "clf")(ids), ours)
