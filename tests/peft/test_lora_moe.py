"""LoRA on a mixture of experts: targets reach each expert, the router and Qwen2-MoE's shared
expert; the adapter files are PEFT's (transformers 5's parameter targets for the fused experts and
the router, and transformers 4's per-expert names on request), so PEFT on the transformers model
and llmkit compute the same logits from either side's adapter; merging and QLoRA work on experts."""

from __future__ import annotations

from functools import partial

import json

import pytest
import torch
from safetensors.torch import load_file

from llmkit.models.config import preset
from llmkit.models.hf import load_pretrained
from llmkit.models.transformer import Transformer
from llmkit.peft import (AdapterError, LoRALinear, apply_lora, apply_qlora, load_adapter, merge_and_unload,
                         save_adapter)
from llmkit.quant import NF4Linear
from tests.hf_models import VOCAB, build_hf_model
from tests.peers import peer
from tests.peft.test_methods import randomise as randomise_weights

TOL = 1e-4
E, D = 4, 64  # experts and width of tests/hf_models.py's mixtral and qwen2-moe
WIDTH = {"mixtral": 96, "qwen2-moe": 48}  # their experts' intermediate sizes

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    peer("transformers")
    root = tmp_path_factory.mktemp("moe")
    return {name: build_hf_model(name, root / name) for name in ("mixtral", "qwen2-moe")}


def tokens(n=12, batch=2, seed=3):
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


def hf_model(path):
    return peer("transformers").AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()


# trained-looking adapter weights (B = 0 at init would make every comparison trivial)
randomise = partial(randomise_weights, std=0.2)


def lora_paths(model):
    return {p for p, m in model.named_modules() if isinstance(m, LoRALinear)}


def ranks(model):
    return {p: m.lora_A["default"].weight.shape[0] for p, m in model.named_modules() if isinstance(m, LoRALinear)}


def test_targets_name_experts_router_and_shared_expert():
    model = Transformer(preset("tiny-qwen2-moe"))
    layers = [f"model.layers.{i}.mlp" for i in range(2)]
    experts = {f"{m}.experts.{e}.gate_proj" for m in layers for e in range(E)}
    shared = {f"{m}.shared_expert.gate_proj" for m in layers}
    cases = {"gate_proj": experts | shared, "experts.gate_proj": experts, "shared_expert.gate_proj": shared,
             "experts.3.gate_proj": {f"{m}.experts.3.gate_proj" for m in layers},
             "gate": {f"{m}.gate" for m in layers}, "shared_expert_gate": {f"{m}.shared_expert_gate" for m in layers}}
    for target, expected in cases.items():
        fresh = Transformer(preset("tiny-qwen2-moe"))
        apply_lora(fresh, r=2, targets=[target])
        assert lora_paths(fresh) == expected, target
    apply_lora(model, r=2, targets=["all-linear"])  # as PEFT's all-linear on transformers 4: the router too
    assert {f"{m}.gate" for m in layers} | {f"{m}.shared_expert_gate" for m in layers} | experts <= lora_paths(model)
    with pytest.raises(ValueError, match="gate is its router"):
        apply_lora(Transformer(preset("tiny-qwen2-moe")), targets=["router"])


def save_ours(path, name, tmp_path, seed=0):
    """An llmkit LoRA on attention, router, experts (and the shared expert) with mixed ranks."""
    ours = load_pretrained(path)
    if name == "mixtral":
        apply_lora(ours, r=2, alpha=6, targets=["q_proj", "gate", "gate_proj", "down_proj"])
        apply_lora(ours, r=3, alpha=4, targets=["up_proj"])  # another scaling inside the fused gate_up_proj
    else:  # experts' gate_proj without up_proj: a zero block in PEFT's fused gate_up_proj
        apply_lora(ours, r=2, alpha=6, targets=["v_proj", "experts.gate_proj", "experts.down_proj",
                                                 "shared_expert.up_proj", "shared_expert_gate"])
        apply_lora(ours, r=3, alpha=4, targets=["shared_expert.down_proj", "gate"])  # rank/alpha patterns
    randomise([p for p in ours.parameters() if p.requires_grad], seed=seed)
    save_adapter(ours, tmp_path / "ours", base_model=str(path))
    return ours


@pytest.mark.parametrize("name", ["mixtral", "qwen2-moe"])
def test_llmkit_moe_lora_loads_in_peft(hf_dirs, name, tmp_path):
    peft = peer("peft")
    path = hf_dirs[name]
    ours = save_ours(path, name, tmp_path)
    files = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    mlp = "base_model.model.model.layers.0.mlp"
    fused_rank = 2 + 3 if name == "mixtral" else 2  # gate's and up's side by side; qwen2-moe's gate alone
    gate_up = "experts.base_layer"  # nested: both expert parameters are targeted
    assert files[f"{mlp}.{gate_up}.lora_A.weight"].shape == (fused_rank * E, D)
    assert files[f"{mlp}.{gate_up}.lora_B.weight"].shape == (2 * WIDTH[name], fused_rank * E)
    assert files[f"{mlp}.experts.lora_A.weight"].shape == (2 * E, WIDTH[name])
    assert files[f"{mlp}.experts.lora_B.weight"].shape == (D, 2 * E)
    router = 2 if name == "mixtral" else 3
    assert files[f"{mlp}.gate.lora_A.weight"].shape == (router, D)
    assert files[f"{mlp}.gate.lora_B.weight"].shape == (E, router)
    conf = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert set(conf["target_parameters"]) == {"experts.gate_up_proj", "experts.down_proj", "mlp.gate.weight"}
    if name == "qwen2-moe":  # the router's own rank and alpha, by its parameter's name
        assert conf["rank_pattern"]["mlp.gate.weight"] == 3 and conf["alpha_pattern"]["mlp.gate.weight"] == 4
    x = tokens()
    with torch.no_grad():
        got = ours(x)
        theirs = peft.PeftModel.from_pretrained(hf_model(path), tmp_path / "ours").eval()
        expected = theirs(x).logits
        assert (got - hf_model(path)(x).logits).abs().max() > 1e-2  # the adapter changes the output
        assert (got - expected).abs().max().item() <= TOL
        # read back: the same logits and the same ranks on the same layers (zero blocks trimmed)
        fresh = load_pretrained(path)
        load_adapter(fresh, tmp_path / "ours")
        assert ranks(fresh) == ranks(ours)
        assert (fresh(x) - got).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["mixtral", "qwen2-moe"])
def test_peft_moe_lora_loads_in_llmkit(hf_dirs, name, tmp_path):
    peft = peer("peft")
    path = hf_dirs[name]
    # PEFT 0.22 reads a bare "gate_proj" on Qwen2-MoE as the experts' too (fused with up_proj): name the shared one
    shared = ["k_proj", "shared_expert.gate_proj", "shared_expert_gate"]
    modules = ["q_proj", "o_proj"] if name == "mixtral" else shared
    cfg = peft.LoraConfig(r=3, lora_alpha=5, target_modules=modules, rank_pattern={"experts.down_proj": 2},
                          target_parameters=["experts.gate_up_proj", "experts.down_proj", "mlp.gate.weight"])
    theirs = peft.get_peft_model(hf_model(path), cfg)
    randomise([p for n, p in theirs.named_parameters() if "lora_" in n], seed=1)
    theirs.save_pretrained(tmp_path / "peft")
    ours = load_pretrained(path)
    assert load_adapter(ours, tmp_path / "peft") == "lora"
    got = ranks(ours)
    # PEFT's gate_up_proj update (shared A) becomes a rank-3 LoRA on each expert's gate and up
    assert got["model.layers.1.mlp.experts.2.up_proj"] == 3 and got["model.layers.1.mlp.experts.2.down_proj"] == 2
    x = tokens()
    with torch.no_grad():
        expected = theirs.eval()(x).logits
        assert (ours(x) - expected).abs().max().item() <= TOL
        save_adapter(ours, tmp_path / "again")  # and back out
        again = peft.PeftModel.from_pretrained(hf_model(path), tmp_path / "again").eval()
        assert (again(x).logits - expected).abs().max().item() <= TOL


def test_mixtral_per_expert_layout_is_transformers_4s_names(hf_dirs, tmp_path):
    """transformers 4's layout, which PEFT 0.21 converts to the fused one on a transformers 5
    Mixtral; the file PEFT saves after that conversion (regex rank patterns) reads here too."""
    peft = peer("peft")
    path = hf_dirs["mixtral"]
    ours = load_pretrained(path)
    apply_lora(ours, r=2, alpha=4, targets=["q_proj", "gate", "gate_proj", "up_proj", "down_proj"])
    randomise([p for p in ours.parameters() if p.requires_grad], seed=4)
    save_adapter(ours, tmp_path / "v4", expert_layout="per_expert")
    keys = load_file(tmp_path / "v4" / "adapter_model.safetensors")
    assert "base_model.model.model.layers.1.block_sparse_moe.experts.3.w3.lora_B.weight" in keys
    assert "base_model.model.model.layers.1.block_sparse_moe.gate.lora_A.weight" in keys
    x = tokens()
    with torch.no_grad():
        got = ours(x)
        theirs = peft.PeftModel.from_pretrained(hf_model(path), tmp_path / "v4").eval()
        assert (theirs(x).logits - got).abs().max().item() <= TOL
        theirs.save_pretrained(tmp_path / "converted")
        for source in ("v4", "converted"):
            fresh = load_pretrained(path)
            load_adapter(fresh, tmp_path / source)
            assert ranks(fresh) == ranks(ours), source
            assert (fresh(x) - got).abs().max().item() <= 1e-5, source


def test_dropout_is_written_as_zero_for_parameter_targets(hf_dirs, tmp_path, caplog):
    peft = peer("peft")
    path = hf_dirs["mixtral"]
    ours = load_pretrained(path)
    apply_lora(ours, r=2, alpha=4, dropout=0.1, targets=["q_proj", "down_proj"])
    save_adapter(ours, tmp_path / "a")
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["lora_dropout"] == 0.0
    assert "PEFT refuses dropout" in caplog.text
    peft.PeftModel.from_pretrained(hf_model(path), tmp_path / "a")  # PEFT refuses dropout on parameters


def test_merge_and_unload_folds_expert_and_router_loras():
    torch.manual_seed(0)
    model = Transformer(preset("tiny-qwen2-moe")).eval()
    x = torch.randint(0, 2048, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model(x)
    apply_lora(model, r=2, alpha=4, targets=["gate", "gate_proj", "up_proj", "down_proj", "shared_expert_gate"])
    randomise([p for p in model.parameters() if p.requires_grad], std=0.3)
    with torch.no_grad():
        adapted = model(x)
        merged = merge_and_unload(model)(x)
    assert not lora_paths(model)
    assert type(model.model.layers[0].mlp.experts[2].down_proj) is torch.nn.Linear
    assert (adapted - base).abs().max() > 1e-2
    assert (merged - adapted).abs().max().item() <= 1e-5


def test_qlora_on_experts_keeps_routers_full_precision():
    torch.manual_seed(0)
    model = Transformer(preset("tiny-mixtral", n_layers=1))  # one layer: NF4 dequantises at every call
    apply_qlora(model, r=2, alpha=4, targets=["experts.gate_proj", "experts.down_proj", "gate"])
    mlp = model.model.layers[0].mlp
    assert isinstance(mlp.experts[1].up_proj, NF4Linear) and isinstance(mlp.experts[1].gate_proj.base_layer, NF4Linear)
    assert type(mlp.gate.base_layer) is torch.nn.Linear  # a rounded router would send tokens elsewhere
    randomise([p for p in model.parameters() if p.requires_grad], std=0.3)
    x = torch.randint(0, 2048, (2, 16), generator=torch.Generator().manual_seed(1))
    model(x).logsumexp(-1).mean().backward()  # gradients reach the experts' LoRAs through the NF4 base
    assert sum(e.down_proj.lora_A["default"].weight.grad.abs().sum() for e in mlp.experts) > 0
    assert mlp.gate.lora_A["default"].weight.grad.abs().max() > 0
    model.eval()
    with torch.no_grad():
        adapted = model(x)
        merged = merge_and_unload(model)(x)  # dequantised, plain Linears
    assert not any(isinstance(m, NF4Linear) for m in model.modules())
    assert (merged - adapted).abs().max().item() <= 1e-4


def test_refusals(tmp_path):
    qwen = Transformer(preset("tiny-qwen2-moe"))
    apply_lora(qwen, r=2, targets=["experts.down_proj"])
    with pytest.raises(AdapterError, match="expert_layout='sideways'"):
        save_adapter(qwen, tmp_path / "x", expert_layout="sideways")
    save_adapter(qwen, tmp_path / "qwen")
    with pytest.raises(AdapterError, match="fit neither experts.gate_up_proj .* nor experts.down_proj"):
        load_adapter(Transformer(preset("tiny-mixtral")), tmp_path / "qwen")  # other expert widths
    with pytest.raises(AdapterError, match="at rank 2 are 4 experts' updates, but the model has 8 experts"):
        load_adapter(Transformer(preset("tiny-qwen2-moe", n_experts=8)), tmp_path / "qwen")  # rows divide by 8 too
    with pytest.raises(AdapterError, match="has no experts"):
        load_adapter(Transformer(preset("tiny-qwen2")), tmp_path / "qwen")


def test_qwen2_moe_per_expert_layout_reads_back_and_warns(tmp_path, caplog):
    """transformers 4's Qwen2-MoE names are ours; PEFT 0.21 on transformers 5 would leave them out."""
    torch.manual_seed(0)
    model = Transformer(preset("tiny-qwen2-moe", n_layers=1)).eval()
    apply_lora(model, r=2, alpha=4, targets=["gate", "gate_proj", "down_proj"])
    randomise([p for p in model.parameters() if p.requires_grad], std=0.3)
    save_adapter(model, tmp_path / "v4", expert_layout="per_expert")
    assert "PEFT 0.21 on transformers 5 leaves them out" in caplog.text
    keys = load_file(tmp_path / "v4" / "adapter_model.safetensors")
    assert {"base_model.model.model.layers.0.mlp.experts.1.gate_proj.lora_A.weight",
            "base_model.model.model.layers.0.mlp.gate.lora_B.weight"} <= set(keys)
    torch.manual_seed(0)  # the same base weights
    fresh = Transformer(preset("tiny-qwen2-moe", n_layers=1)).eval()
    load_adapter(fresh, tmp_path / "v4")
    x = torch.randint(0, 2048, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (fresh(x) - model(x)).abs().max().item() <= 1e-5
