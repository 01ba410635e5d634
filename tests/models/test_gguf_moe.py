"""Mixtures of experts in GGUF. The reference files are written here with the `gguf` package's
GGUFWriter straight from transformers' safetensors, following llama.cpp's converter
(convert_hf_to_gguf.py: Mixtral as arch `llama` with q/k permuted and the experts stacked into
`ffn_{gate,up,down}_exps`; Qwen2-MoE as `qwen2moe` with a gated shared expert; routers kept F32),
not with llmkit's exporter. llmkit must read them with transformers' logits and greedy tokens, and
its exporter must write the same tensors back. transformers' own GGUF loader (which reads
qwen2moe, not Mixtral) checks llmkit's qwen2moe export from the outside."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.peers import peer

gguf = peer("gguf")
transformers = peer("transformers")

import llmkit  # noqa: E402
from llmkit.infer.sampling import GenerationConfig  # noqa: E402
from llmkit.models.config import preset  # noqa: E402
from llmkit.models.gguf import GGUFError, GGUFFile, load_gguf, save_gguf  # noqa: E402
from llmkit.models.transformer import Transformer  # noqa: E402

F32, Q8_0, Q4_0 = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0)
EOS = 257  # the test vocabulary: the 256 byte tokens, one merge, an end token
SMALL = dict(vocab_size=258, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.3, tie_word_embeddings=False)


def _hf_model(kind: str, out):
    """A random transformers Mixtral / Qwen2-MoE saved to `out` (norm weights and biases random
    too, so that they matter)."""
    cfg = (transformers.MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2, sliding_window=None)
           if kind == "mixtral" else
           transformers.Qwen2MoeConfig(**SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                                       shared_expert_intermediate_size=96))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.normal_(0.0 if n.endswith("bias") else 1.0, 0.1)
    model.save_pretrained(out)
    return model


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's LlamaModel.permute: the rows of each head regrouped into interleaved rotary pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _add_tokenizer(w) -> None:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = bytes_to_unicode()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list([alphabet[b] for b in range(256)] + ["Ġt", "</s>"])
    w.add_token_types([1] * 257 + [3])
    w.add_token_merges(["Ġ t"])
    w.add_eos_token_id(EOS)


def convert_like_llama_cpp(hf_dir, path, qtype=F32, edit_meta=None, edit_tensors=None):
    """A GGUF of the transformers checkpoint in `hf_dir`, as convert_hf_to_gguf.py lays it out.
    `edit_meta(writer)` / `edit_tensors(dict)` change it, for the refusal tests."""
    from safetensors.torch import load_file

    c = json.loads((hf_dir / "config.json").read_text())
    sd = load_file(hf_dir / "model.safetensors")
    moe = c["model_type"] == "qwen2_moe"
    arch = "qwen2moe" if moe else "llama"
    heads, kv, n_exp = c["num_attention_heads"], c["num_key_value_heads"], c.get("num_local_experts", c.get("num_experts"))
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c["num_hidden_layers"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(c["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_expert_count(n_exp)
    w.add_expert_used_count(c["num_experts_per_tok"])
    if moe:  # Qwen2MoeModel.set_gguf_parameters
        w.add_expert_feed_forward_length(c["moe_intermediate_size"])
        w.add_expert_shared_feed_forward_length(c["shared_expert_intermediate_size"])
    else:  # LlamaModel.set_gguf_parameters
        w.add_vocab_size(c["vocab_size"])
        w.add_rope_dimension_count(c["hidden_size"] // heads)
    w.add_file_type({F32: 0, Q8_0: 7, Q4_0: 2}[qtype])
    if edit_meta:
        edit_meta(w)
    _add_tokenizer(w)

    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    block = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "block_sparse_moe.gate": "ffn_gate_inp", "mlp.gate": "ffn_gate_inp",
             "mlp.shared_expert.gate_proj": "ffn_gate_shexp", "mlp.shared_expert.up_proj": "ffn_up_shexp",
             "mlp.shared_expert.down_proj": "ffn_down_shexp", "mlp.shared_expert_gate": "ffn_gate_inp_shexp"}
    stacks = {"w1": "ffn_gate_exps", "w3": "ffn_up_exps", "w2": "ffn_down_exps",
              "gate_proj": "ffn_gate_exps", "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps"}
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, torch.Tensor]] = {}
    for name, t in sd.items():
        if name in top:
            out[top[name]] = t
            continue
        parts = name.split(".")
        bid, rest, kind = parts[2], ".".join(parts[3:-1]), parts[-1]
        if ".experts." in name:  # model.layers.B.(block_sparse_moe|mlp).experts.X.(w1|gate_proj).weight
            experts.setdefault(f"blk.{bid}.{stacks[parts[-2]]}.weight", {})[int(parts[5])] = t
            continue
        if not moe and rest == "self_attn.q_proj":  # Mixtral goes through LlamaModel: q/k permuted
            t = _permute(t, heads)
        elif not moe and rest == "self_attn.k_proj":
            t = _permute(t, kv)
        out[f"blk.{bid}.{block[rest]}.{kind}"] = t
    for name, by_expert in experts.items():  # torch.stack(dim=0) over the experts, in order
        out[name] = torch.stack([by_expert[i] for i in range(n_exp)])
    if edit_tensors:
        edit_tensors(out)
    for name, t in out.items():
        arr = t.float().numpy()
        # the converter: vectors and norms F32, routers F32 at every type, the rest the file type
        if qtype == F32 or arr.ndim == 1 or name.endswith("_norm.weight") or ".ffn_gate_inp" in name:
            w.add_tensor(name, arr)
        else:
            data = gguf.quants.quantize(arr, qtype)
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{kind: (transformers model, its directory, the F32 GGUF written as llama.cpp's converter does)}"""
    root = tmp_path_factory.mktemp("gguf-moe")
    out = {}
    for kind in ("mixtral", "qwen2_moe"):
        hf = _hf_model(kind, root / kind)
        out[kind] = hf, root / kind, convert_like_llama_cpp(root / kind, root / f"{kind}.gguf")
    return out


def _greedy(hf, llm, start, n=20):
    theirs = hf.generate(torch.tensor([start]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                         pad_token_id=0)[0, len(start):].tolist()
    ours = llm.complete([start], GenerationConfig(max_new_tokens=n, temperature=0, ignore_eos=True))[0].token_ids
    return ours, theirs


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
def test_a_converter_layout_file_gives_transformers_logits_and_greedy_tokens(converted, kind):
    hf, _, path = converted[kind]
    llm = llmkit.load(path)
    cfg = llm.model.config
    assert (cfg.family, cfg.n_experts, cfg.experts_per_token) == (kind, 4, 2)
    # llama.cpp renormalises Mixtral's top-2 weights and never Qwen2-MoE's (as transformers does here)
    assert cfg.router_renormalize == (kind == "mixtral")
    assert (cfg.expert_hidden_dim, cfg.shared_expert_hidden_dim) == ((96, 0) if kind == "mixtral" else (64, 96))
    x = torch.randint(0, 258, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = llm.model(x), hf(x).logits
        routes = llm.model.model.layers[0].mlp.route(llm.model.model.embed_tokens(x).reshape(-1, 64))[1]
    assert len({tuple(sorted(r)) for r in routes.tolist()}) >= 4  # the tokens really take different experts
    assert (ours - theirs).abs().max().item() <= 1e-4
    ids, expected = _greedy(hf, llm, x[0, :8].tolist())
    assert ids == expected and len(set(expected)) >= 6, (ids, expected)


def test_the_experts_are_read_from_the_stacks_in_order(converted):
    """Expert e of the file's stack is llmkit's experts[e] (w1 = gate, w3 = up, w2 = down), and
    Mixtral's q rows come back in transformers' order."""
    from safetensors.torch import load_file

    _, hf_dir, path = converted["mixtral"]
    sd = load_file(hf_dir / "model.safetensors")
    model, _ = load_gguf(path)
    layer = model.model.layers[1]
    for e in range(4):
        for ours, theirs in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
            assert torch.equal(getattr(layer.mlp.experts[e], ours).weight,
                               sd[f"model.layers.1.block_sparse_moe.experts.{e}.{theirs}.weight"])
    assert torch.equal(layer.mlp.gate.weight, sd["model.layers.1.block_sparse_moe.gate.weight"])
    assert torch.equal(layer.self_attn.q_proj.weight, sd["model.layers.1.self_attn.q_proj.weight"])


@pytest.mark.parametrize("qtype", [Q8_0, Q4_0])
def test_quantised_expert_stacks_dequantise_like_the_package(converted, tmp_path, qtype):
    hf, hf_dir, _ = converted["mixtral"]
    path = convert_like_llama_cpp(hf_dir, tmp_path / "q.gguf", qtype=qtype)
    f = GGUFFile(path)
    model, _ = load_gguf(path)
    for b, layer in enumerate(model.model.layers):
        assert f.tensors[f"blk.{b}.ffn_gate_inp.weight"].tensor_type == F32  # the converter keeps routers F32
        for stack, ours in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            t = f.tensors[f"blk.{b}.ffn_{stack}_exps.weight"]
            assert t.tensor_type == qtype
            experts = gguf.quants.dequantize(t.data, qtype).reshape(f.shape(t.name))
            for e in range(4):
                assert torch.equal(getattr(layer.mlp.experts[e], ours).weight, torch.from_numpy(experts[e]))
    if qtype == Q8_0:  # (Q4_0 on these std-0.3 random weights changes the logits by ~80%: nothing to bound)
        x = torch.randint(0, 258, (1, 24), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            ours, full = model(x), hf(x).logits
        # measured: relative error 0.09, the same argmax at 22 of 24 positions (a few tokens change experts)
        assert ((ours - full).norm() / full.norm()).item() <= 0.15
        assert (ours.argmax(-1) == full.argmax(-1)).float().mean().item() >= 0.75


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
def test_llmkit_writes_back_the_converters_tensors_and_keys(converted, tmp_path, kind):
    _, _, path = converted[kind]
    model, tok = load_gguf(path)
    again = GGUFFile(save_gguf(model, tok, tmp_path / "again.gguf", type="f32"))
    original = GGUFFile(path)
    assert again.architecture == original.architecture
    assert set(again.tensors) == set(original.tensors)
    for name, t in original.tensors.items():
        ours = again.tensors[name]
        if "ffn_gate_inp_shexp" in name:  # written as the vector llama.cpp declares (the converter: 1 x dim)
            assert again.shape(name) == (64,) and original.shape(name) == (1, 64)
        else:
            assert again.shape(name) == original.shape(name), name
        assert ours.tensor_type == F32 and np.array_equal(ours.data.reshape(-1), t.data.reshape(-1)), name
    arch = original.architecture
    keys = ["expert_count", "expert_used_count", "feed_forward_length", "block_count", "embedding_length"]
    keys += ["expert_feed_forward_length", "expert_shared_feed_forward_length"] if arch == "qwen2moe" else []
    for key in keys:
        assert again.meta[f"{arch}.{key}"] == original.meta[f"{arch}.{key}"], key


@pytest.mark.parametrize("name", ["tiny-mixtral", "tiny-qwen2-moe"])
def test_round_trip_of_tied_presets_and_q8_0(converted, tmp_path, name):
    """llmkit's tiny MoE presets (tied heads) out and back: the same config and logits at F32; at
    Q8_0 the experts quantised, the routers F32, the logits close."""
    tok = load_gguf(converted["mixtral"][2])[1]  # the test vocabulary
    torch.manual_seed(0)
    model = Transformer(preset(name, vocab_size=258, init_std=0.3)).eval()
    x = torch.randint(0, 258, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(x)
    path = save_gguf(model, tok, tmp_path / "m.gguf", type="f32")
    back, _ = load_gguf(path)
    fields = ("family", "n_experts", "experts_per_token", "expert_hidden_dim", "shared_expert_hidden_dim",
              "router_renormalize", "tie_embeddings", "qkv_bias", "hidden_dim")
    assert [getattr(back.config, k) for k in fields] == [getattr(model.config, k) for k in fields]
    assert back.lm_head.weight is back.model.embed_tokens.weight
    # llama.cpp's qwen2moe requires output.weight: a tied one is written out (and read back as a tie)
    assert ("output.weight" in GGUFFile(path).tensors) == (name == "tiny-qwen2-moe")
    with torch.no_grad():
        assert torch.equal(back(x), full)
    f = GGUFFile(save_gguf(model, tok, tmp_path / "q.gguf", type="q8_0"))
    assert f.tensors["blk.0.ffn_gate_exps.weight"].tensor_type == Q8_0
    assert f.tensors["blk.0.ffn_gate_inp.weight"].tensor_type == F32
    quantised, _ = load_gguf(f.path)
    with torch.no_grad():
        error = ((quantised(x) - full).norm() / full.norm()).item()
    assert 0 < error <= 0.15, error  # measured: 0.060 (tiny-mixtral), 0.072 (tiny-qwen2-moe)



def test_transformers_gguf_loader_reads_llmkits_qwen2moe_export(converted, tmp_path):
    """transformers reads qwen2moe GGUF files (not Mixtral's llama-with-experts); it takes the expert
    widths from its config defaults (1408, 5632), not from the file, so the model has those."""
    tok = load_gguf(converted["mixtral"][2])[1]
    torch.manual_seed(0)
    model = Transformer(preset("tiny-qwen2-moe", vocab_size=258, n_layers=1, init_std=0.3, expert_hidden_dim=1408,
                               shared_expert_hidden_dim=5632)).eval()
    x = torch.randint(0, 258, (2, 16), generator=torch.Generator().manual_seed(4))
    for kind in ("f32", "q8_0"):
        path = save_gguf(model, tok, tmp_path / f"{kind}.gguf", type=kind)
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name,
                                                               dtype=torch.float32).eval()
        assert type(hf).__name__ == "Qwen2MoeForCausalLM" and hf.config.norm_topk_prob is False
        ours, _ = load_gguf(path)
        with torch.no_grad():
            assert (ours(x) - hf(x).logits).abs().max().item() <= 1e-4, kind  # the same dequantised weights
            if kind == "f32":
                assert (model(x) - hf(x).logits).abs().max().item() <= 1e-4


# ------------------------------------------------------------------------------- refusals
def _drop(w, key):
    del w.kv_data[0][key]  # the writer's metadata of its first (only) shard


def test_metadata_and_tensors_that_disagree_on_experts_are_refused(converted, tmp_path):
    hf_dir = converted["mixtral"][1]
    no_count = convert_like_llama_cpp(hf_dir, tmp_path / "a.gguf", edit_meta=lambda w: _drop(w, "llama.expert_count"))
    with pytest.raises(GGUFError, match=r"tensor blk\.\d\.ffn_\w+_exps\.weight holds experts, but llama\.expert_count "
                                        "is missing"):
        load_gguf(no_count)

    def dense(tensors):  # every stack replaced by expert 0 alone, as a dense MLP
        for name in [n for n in tensors if "_exps" in n]:
            tensors[name.replace("_exps", "")] = tensors.pop(name)[0]
        for name in [n for n in tensors if "ffn_gate_inp" in n]:
            del tensors[name]

    count_only = convert_like_llama_cpp(hf_dir, tmp_path / "b.gguf", edit_tensors=dense)
    with pytest.raises(GGUFError, match=r"llama\.expert_count=4 says every block is a mixture of experts, but the "
                                        r"file has no expert tensors .*blk\.0\.ffn_up\.weight"):
        load_gguf(count_only)

    def three_experts(only):
        def edit(tensors):
            for name in [n for n in tensors if any(part in n for part in only)]:
                tensors[name] = tensors[name][:3]
        return edit

    with pytest.raises(GGUFError, match=r"tensor blk\.0\.ffn_gate_inp\.weight has shape \[3, 64\] but the metadata "
                                        r"implies \[4, 64\]"):
        load_gguf(convert_like_llama_cpp(hf_dir, tmp_path / "c.gguf", edit_tensors=three_experts(["_exps", "_inp"])))
    with pytest.raises(GGUFError, match=r"tensor blk\.0\.ffn_up_exps\.weight has shape \[3, 96, 64\] but the metadata "
                                        r"implies \[4, 96, 64\]"):
        load_gguf(convert_like_llama_cpp(hf_dir, tmp_path / "d.gguf", edit_tensors=three_experts(["ffn_up_exps"])))


def test_routing_llmkit_does_not_run_is_refused(converted, tmp_path):
    hf_dir = converted["mixtral"][1]
    cases = [(lambda w: w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID),
              r"llama\.expert_gating_func=2; llmkit's router is a softmax"),
             (lambda w: w.add_expert_weights_scale(2.5), r"llama\.expert_weights_scale=2\.5 scales the routing weights"),
             (lambda w: w.add_expert_shared_feed_forward_length(32), r"ungated shared experts \(Granite's\)")]
    for i, (edit, message) in enumerate(cases):
        with pytest.raises(GGUFError, match=message):
            load_gguf(convert_like_llama_cpp(hf_dir, tmp_path / f"{i}.gguf", edit_meta=edit))


def test_mixture_architectures_llmkit_does_not_read_are_named(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "q3.gguf"), "qwen3moe")
    w.add_expert_count(128)
    _add_tokenizer(w)
    w.add_tensor("token_embd.weight", np.zeros((258, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GGUFError, match=r"architecture 'qwen3moe' \(a mixture of experts: qwen3moe\.expert_count=128\) "
                                        r"is not supported; llmkit reads llama, qwen2, gpt2, qwen2moe"):
        load_gguf(tmp_path / "q3.gguf")


def test_experts_in_an_architecture_without_them_are_refused(converted, tmp_path):
    def count(n):
        return lambda w: w.add_expert_count(n) if n else _drop(w, "qwen2moe.expert_count")

    qwen2_moe = converted["qwen2_moe"][1]
    with pytest.raises(GGUFError, match=r"q\.gguf: qwen2moe\.expert_count is missing or 0"):
        load_gguf(convert_like_llama_cpp(qwen2_moe, tmp_path / "q.gguf", edit_meta=count(0)))
    # a dense qwen2 file (llmkit's export) given an expert count
    tok = load_gguf(converted["mixtral"][2])[1]
    dense = save_gguf(Transformer(preset("tiny-qwen2", vocab_size=258)), tok, tmp_path / "dense.gguf")
    f = GGUFFile(dense)
    w = gguf.GGUFWriter(str(tmp_path / "odd.gguf"), "qwen2")
    for key, value in f.meta.items():
        if key.split(".")[0] in ("qwen2", "tokenizer"):
            field = f.reader.fields[key]
            w.add_key_value(key, value, field.types[0], sub_type=field.types[-1] if len(field.types) > 1 else None)
    w.add_expert_count(4)
    for name in f.tensors:
        w.add_tensor(name, f.tensor(name).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GGUFError, match="qwen2.expert_count=4: llmkit reads experts in GGUF's llama, qwen2moe"):
        load_gguf(tmp_path / "odd.gguf")


def test_export_refuses_mixtures_llama_cpp_would_run_differently(converted, tmp_path):
    tok = load_gguf(converted["mixtral"][2])[1]
    for overrides, message in (
            (dict(router_renormalize=True), "llama.cpp's qwen2moe never renormalises the top-k weights"),
            (dict(sliding_window=16), "sliding-window attention cannot be exported")):
        model = Transformer(preset("tiny-qwen2-moe", vocab_size=258, **overrides))
        with pytest.raises(GGUFError, match=message):
            save_gguf(model, tok, tmp_path / "x.gguf")
    model = Transformer(preset("tiny-mixtral", vocab_size=258, expert_hidden_dim=48))
    with pytest.raises(GGUFError, match="written as Mixtral .* expert_hidden_dim=48, hidden_dim=88"):
        save_gguf(model, tok, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
