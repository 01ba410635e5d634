"""LoRA, QLoRA's NF4, bottleneck adapters and virtual tokens on llmkit's own tiny models: start at
the base model, train only what they add, merge exactly, switch per call, save and load."""

from __future__ import annotations

import json

import pytest
import torch

from llmkit.models.hf import load_pretrained
from llmkit.peft import (AdapterError, LoRALinear, adapter, adapter_names, apply_bottleneck, apply_lora,
                         apply_prefix_tuning, apply_prompt_tuning, apply_qlora, load_adapter, merge_and_unload,
                         merge_lora, save_adapter, trainable_parameters, unmerge_lora)
from llmkit.quant import NF4Linear, quantize_absmax_int4, quantize_nf4
from tests.peers import peer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


@pytest.fixture
def model(tiny_dir):
    return load_pretrained(tiny_dir)


def ids(n=10, batch=2, seed=0):
    return torch.randint(3, 500, (batch, n), generator=torch.Generator().manual_seed(seed))


def randomise(params, seed=0, std=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * std)


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def attach(model, method):
    """Put a fresh adapter of `method` on `model`."""
    if method == "lora":
        return apply_lora(model, r=4, alpha=8, targets=["all-linear"])
    if method == "adapter":
        return apply_bottleneck(model, size=8)
    if method == "prefix":
        return apply_prefix_tuning(model, 4)
    return apply_prompt_tuning(model, 4)


@pytest.mark.parametrize("method", ["lora", "adapter", "prefix", "prompt"])
def test_each_method_trains_only_its_own_parameters(model, method):
    x = ids()
    with torch.no_grad():
        before = model(x)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    attach(model, method)
    report = trainable_parameters(model)
    assert 0 < report.trainable < report.total and report.percent < 25
    with torch.no_grad():
        start = model(x)
    if method in ("lora", "adapter"):  # zero-initialised B / up: exactly the base model at the start
        assert torch.equal(start, before)
    opt = torch.optim.SGD(trainable(model), lr=0.5)
    loss = model(x[:, :-1]).log_softmax(-1).gather(-1, x[:, 1:, None]).mean().neg()
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = model(x)
    assert (after - start).abs().max() > 1e-4  # it learns ...
    for n, p in model.named_parameters():  # ... and the base weights did not move
        key = n.replace(".base_layer", "")
        if key in base:
            assert torch.equal(p, base[key]), n


def test_lora_forward_merge_and_unmerge(model):
    x = ids()
    apply_lora(model, r=4, alpha=16, targets=["q_proj", "v_proj", "down_proj"])
    randomise(trainable(model))
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, LoRALinear)
    h = torch.randn(3, layer.in_features)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = h @ layer.base_layer.weight.T + (16 / 4) * (h @ a.T @ b.T)  # W0 x + (alpha/r) B A x
    assert torch.allclose(layer(h), expected, atol=1e-5)
    with torch.no_grad():
        adapted = model(x)
        merge_lora(model)
        assert (model(x) - adapted).abs().max() < 1e-4
        unmerge_lora(model)
        assert (model(x) - adapted).abs().max() < 1e-4
        plain = merge_and_unload(model)
        assert not any(isinstance(m, LoRALinear) for m in plain.modules())
        assert (plain(x) - adapted).abs().max() < 1e-4


def test_several_adapters_on_one_base_switch_per_call(model):
    x = ids()
    with torch.no_grad():
        base = model(x)
    apply_lora(model, r=2, alpha=4, targets=["q_proj"], name="a")
    apply_lora(model, r=2, alpha=4, targets=["v_proj"], name="b")
    apply_bottleneck(model, size=4, name="c")
    apply_prefix_tuning(model, 3, name="d")
    randomise(model.virtual_tokens.adapters["d"].parameters(), seed=1, std=0.5)
    for name in ("a", "b"):
        for layer in model.modules():
            if isinstance(layer, LoRALinear) and name in layer.lora_B:
                randomise([layer.lora_B[name].weight], seed=len(name))
    for blk in model.model.layers:
        randomise([blk.attn_adapter["c"].up.weight, blk.mlp_adapter["c"].up.weight], seed=7)
    assert adapter_names(model) == {"a": "lora", "b": "lora", "c": "adapter", "d": "prefix"}
    outs = {}
    with torch.no_grad():
        for name in ("a", "b", "c", "d"):
            with adapter(model, name):
                outs[name] = model(x)
        with adapter(model, None):
            assert torch.allclose(model(x), base, atol=1e-6)
    for i, name in enumerate("abcd"):
        assert (outs[name] - base).abs().max() > 1e-3
        for other in "abcd"[i + 1:]:
            assert (outs[name] - outs[other]).abs().max() > 1e-3
    with pytest.raises(AdapterError, match="no adapter named 'zz'"):
        with adapter(model, "zz"):
            pass


def test_saved_adapters_reload_with_the_same_outputs(model, tiny_dir, tmp_path):
    x = ids()
    for method in ("lora", "adapter", "prefix", "prompt"):
        m = load_pretrained(tiny_dir)
        attach(m, method)
        randomise(trainable(m), seed=3)
        save_adapter(m, tmp_path / method)
        fresh = load_pretrained(tiny_dir)
        assert load_adapter(fresh, tmp_path / method) == method
        with torch.no_grad():
            assert torch.allclose(fresh(x), m(x), atol=1e-6), method


def test_adapter_files_that_do_not_fit_are_refused(model, tiny_dirs, tmp_path):
    other = load_pretrained(tiny_dirs["tiny-gpt2"])
    apply_prefix_tuning(other, 3)
    save_adapter(other, tmp_path / "gpt2-prefix")
    with pytest.raises(AdapterError, match="another model"):
        load_adapter(model, tmp_path / "gpt2-prefix")
    with pytest.raises(AdapterError, match="not an adapter directory"):
        load_adapter(model, tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text('{"peft_type": "IA3"}')
    (tmp_path / "broken" / "adapter_model.safetensors").write_bytes(
        (tmp_path / "gpt2-prefix" / "adapter_model.safetensors").read_bytes())
    with pytest.raises(AdapterError, match="IA3"):
        load_adapter(model, tmp_path / "broken")


def test_prefix_generation_through_the_cache_equals_the_full_forward(tiny_dir):
    """Greedy decoding with the preallocated cache (virtual tokens prefilled) picks, at every step,
    the argmax of a fresh full forward pass (the training path) over the whole sequence."""
    from llmkit.infer.generate import TokenGeneration
    from llmkit.infer.sampling import GenerationConfig

    for setup in (apply_prefix_tuning, apply_prompt_tuning):
        m = load_pretrained(tiny_dir)
        setup(m, 4)
        randomise(trainable(m), seed=9, std=0.5)
        prompt = ids(6, batch=1, seed=2)[0].tolist()
        run = TokenGeneration(m, [prompt], GenerationConfig(max_new_tokens=8, temperature=0, ignore_eos=True))
        for _ in run:
            pass
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(8):
                seq.append(int(m(torch.tensor([seq]))[0, -1].argmax()))
        assert run.generated[0] == seq[len(prompt):]
        assert len(set(run.generated[0])) > 1


# ----------------------------------------------------------------------------------- NF4
def test_nf4_bytes_and_error_beat_plain_int4():
    torch.manual_seed(0)
    w = torch.randn(512, 1024) * 0.02
    q = quantize_nf4(w)
    bf16_bytes = w.numel() * 2
    assert q.nbytes <= 0.30 * bf16_bytes  # scales included (4.127 bits a weight)
    nf4_err = (q.dequantize() - w).pow(2).mean()
    int4_err = (quantize_absmax_int4(w) - w).pow(2).mean()
    assert nf4_err < int4_err
    # double quantisation barely changes the weights
    single = quantize_nf4(w, double_quant=False)
    assert (single.dequantize() - q.dequantize()).abs().max() < 0.01 * w.abs().max()


def test_qlora_model_stores_blocks_in_nf4_and_trains_lora(model):
    x = ids()
    linear_bytes = sum(m.weight.numel() * 2 for n, m in model.named_modules()
                       if isinstance(m, torch.nn.Linear) and "layers" in n)
    import copy
    dense = copy.deepcopy(model.model.layers[0].mlp.up_proj)
    apply_qlora(model, r=4, alpha=8, targets=["q_proj", "v_proj"])
    nf4 = [m for m in model.modules() if isinstance(m, NF4Linear)]
    assert len(nf4) == 7 * model.config.n_layers
    assert sum(m.nbytes for m in nf4) <= 0.30 * linear_bytes
    h = torch.randn(5, dense.in_features)
    with torch.no_grad():  # a quantised layer computes nearly what the dense one did
        q = model.model.layers[0].mlp.up_proj(h)
        assert (q - dense(h)).norm() < 0.15 * dense(h).norm()
    loss = model(x).logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None for p in trainable(model))
    assert not any(b.grad is not None for m in nf4 for b in m.buffers())


def test_nf4_matches_bitsandbytes():
    bnb = peer("bitsandbytes.functional")
    torch.manual_seed(1)
    w = torch.randn(256, 512) * 0.05
    for double in (False, True):
        packed, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double)
        theirs = bnb.dequantize_4bit(packed, state)
        ours = quantize_nf4(w, double_quant=double).dequantize()
        if not double:  # same levels, same blocks, same absmax: the same weights
            assert torch.allclose(ours, theirs, atol=1e-6)
        else:  # different 8-bit codes for the scales (bitsandbytes: a dynamic map; ours: linear)
            assert (ours - theirs).abs().max() < 0.01 * w.abs().max()


def test_prompt_tuning_starts_from_the_embeddings_of_a_text(model, tiny_tokenizer):
    ids = tiny_tokenizer.encode("Classify the review:", add_special_tokens=False)
    emb = apply_prompt_tuning(model, 2 * len(ids) + 1, init_ids=ids)
    table = model.model.embed_tokens.weight
    want = table[torch.tensor((ids * 3)[:2 * len(ids) + 1])]
    assert torch.equal(emb.embedding.weight, want)  # the text, repeated to fill the virtual tokens


def test_early_stopping_restores_the_best_weights(tiny_dir, tmp_path):
    """With a learning rate far too high the validation loss gets worse: training stops after
    `early_stopping` evaluations without improvement and ends with the best weights."""
    from llmkit.train.config import TrainConfig
    from llmkit.train.objectives import CausalLM
    from llmkit.train.trainer import Trainer

    m = load_pretrained(tiny_dir)
    data = torch.randint(3, 500, (64, 17), generator=torch.Generator().manual_seed(0))

    class Loader:
        pos = 0

        def __next__(self):
            self.pos += 1
            return data[(self.pos * 8) % 64:(self.pos * 8) % 64 + 8]

        def state_dict(self):
            return {"pos": self.pos}

        def load_state_dict(self, s):
            self.pos = s["pos"]

    cfg = TrainConfig(steps=40, lr=0.5, warmup_steps=0, eval_every=1, eval_batches=2, micro_batch=8, save_every=0,
                      sample_prompts=[], device="cpu", early_stopping=2, grad_clip=0, schedule="constant")
    t = Trainer(m, CausalLM(), Loader(), cfg, tmp_path / "run", val_data=[row for row in data[:16]])
    summary = t.fit()
    vals = [json.loads(l)["val_loss"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
            if "val_loss" in l]
    assert summary["stopped_early"] and summary["steps"] < 40
    best = min(vals[:-1])
    assert summary["final_val_loss"] == pytest.approx(best)
    assert t.evaluate() == pytest.approx(best, abs=1e-6)  # the weights in the model are the best ones


def test_a_model_with_adapters_is_not_saved_as_a_plain_checkpoint(model, tmp_path):
    from llmkit.models.config import ConfigError
    from llmkit.models.hf import save_pretrained

    apply_lora(model, r=2, alpha=4, targets=["q_proj"])
    with pytest.raises(ConfigError, match="merge_and_unload"):
        save_pretrained(model, tmp_path / "m")
    assert not (tmp_path / "m" / "config.json").exists()
    save_pretrained(merge_and_unload(model), tmp_path / "m")  # merged: an ordinary checkpoint
    assert (tmp_path / "m" / "config.json").exists()


def test_merge_and_unload_of_qlora_dequantises_every_nf4_layer(model, tmp_path):
    """QLoRA puts every block Linear in NF4 but LoRA only on the targets: the merged model holds no
    NF4 layer (k_proj, o_proj and the MLP too), saves as an ordinary checkpoint and computes what
    the adapted model computed."""
    from llmkit.models.hf import save_pretrained
    from llmkit.quant.nf4 import NF4Linear

    apply_qlora(model, r=2, alpha=4, targets=["q_proj"])
    randomise([p for n, p in model.named_parameters() if "lora_B" in n])
    x = ids()
    with torch.no_grad():
        adapted = model(x)
        plain = merge_and_unload(model)
        assert not any(isinstance(m, (NF4Linear, LoRALinear)) for m in plain.modules())
        save_pretrained(plain, tmp_path / "m")
        assert (load_pretrained(tmp_path / "m")(x) - adapted).abs().max() < 1e-4
