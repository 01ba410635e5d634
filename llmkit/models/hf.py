"""Hugging Face checkpoints in and out: config.json, single or sharded *.safetensors.

Llama, Mistral and Qwen2 checkpoints already use our module names, so their key map is the
identity; Mixtral and Qwen2-MoE add experts, named in `hf_moe`. GPT-2 is translated: its fused ``c_attn`` (stored as Conv1D, i.e. transposed) is split
into q/k/v on import and fused again on export. BERT and T5 have naming modules of their own
(`hf_bert`, `hf_t5`); which parts a BERT checkpoint holds (pooler, masked-LM head) and whether a
T5 head is tied are read from its tensors. Only safetensors are read: nothing is unpickled.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from ..quant.weight_only import QUANT_METHOD, prepare_quantized, quantization_config
from ..utils import atomic_path, parse_dtype, write_json_atomic
from .config import ConfigError, ModelConfig
from .hf_common import HF_ACTIVATIONS as _ACTIVATIONS
from .hf_common import (INDEX_FILE, SINGLE_FILE, CheckpointError, _config_json, _open, _weight_files,
                        require as _require)
from .hf_bert import (bert_checkpoint_names, bert_config_from_hf, bert_config_to_hf, bert_parts,
                      bert_state_dict_from_hf, bert_state_dict_to_hf)
from .hf_moe import (MOE_MODEL_TYPES, experts_from_hf, experts_to_hf, is_fused, moe_config_fields,
                     moe_config_to_hf, refuse_unsupported_moe)
from .hf_t5 import t5_config_from_hf, t5_config_to_hf, t5_state_dict_from_hf, t5_state_dict_to_hf
from .sampling_defaults import to_hf
from .transformer import Transformer

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2", "mixtral", "qwen2_moe", "bert", "t5")
_CAUSAL_LM = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
              "mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM"}


# ------------------------------------------------------------------------------- config.json
def _rope_from_hf(d: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    params = d.get("rope_parameters") or {}
    if "rope_theta" in params and not isinstance(params.get("rope_theta"), dict):
        theta = params["rope_theta"]
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:  # transformers 4.x layout
        theta = d.get("rope_theta", 10000.0)
        scaling = dict(d.get("rope_scaling") or {})
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    kind = scaling.get("rope_type", "default")
    if kind == "default":
        return float(theta), None
    if kind not in ("linear", "dynamic", "llama3"):
        raise CheckpointError(f"rope scaling type {kind!r} is not supported: llmkit reads linear, dynamic and llama3")
    return float(theta), scaling


def config_from_hf(d: dict[str, Any]) -> ModelConfig:
    """`ModelConfig` from the dict of an HF ``config.json``."""
    model_type = d.get("model_type")
    refuse_unsupported_moe(model_type, SUPPORTED_MODEL_TYPES)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"model_type {model_type!r} is not supported: llmkit reads {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    common = dict(bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
                  pad_token_id=d.get("pad_token_id"), vocab_size=d["vocab_size"])
    if model_type == "gpt2":
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
            if d.get(flag):
                raise CheckpointError(f"GPT-2 option {flag}=true is not supported")
        act = d.get("activation_function", "gelu_new")
        if act not in _ACTIVATIONS:
            raise CheckpointError(f"activation_function {act!r} is not supported: use one of {sorted(_ACTIVATIONS)}")
        dim = d["n_embd"]
        return ModelConfig(
            family="gpt2", dim=dim, n_layers=d["n_layer"], n_heads=d["n_head"], hidden_dim=d.get("n_inner") or 4 * dim,
            max_seq_len=d.get("n_positions", 1024), norm="layernorm", norm_eps=d.get("layer_norm_epsilon", 1e-5),
            positions="learned", mlp="gelu", activation=_ACTIVATIONS[act], qkv_bias=True, o_bias=True,
            mlp_bias=True, tie_embeddings=d.get("tie_word_embeddings", True), **common,
        )
    if model_type == "bert":
        return bert_config_from_hf(d, common)
    if model_type == "t5":
        return t5_config_from_hf(d, common)
    act = d.get("hidden_act", "silu")
    if act not in _ACTIVATIONS:
        raise CheckpointError(f"hidden_act {act!r} is not supported: use one of {sorted(_ACTIVATIONS)}")
    theta, scaling = _rope_from_hf(d)
    heads = d["num_attention_heads"]
    bias = bool(d.get("attention_bias", False))
    kw: dict[str, Any] = dict(
        family=model_type, dim=d["hidden_size"], n_layers=d["num_hidden_layers"], n_heads=heads,
        n_kv_heads=d.get("num_key_value_heads") or heads, head_dim=d.get("head_dim") or None,
        hidden_dim=d["intermediate_size"], max_seq_len=d.get("max_position_embeddings", 2048),
        norm="rmsnorm", norm_eps=d.get("rms_norm_eps", 1e-6), positions="rope", rope_theta=theta,
        rope_scaling=scaling, mlp="swiglu", activation=_ACTIVATIONS[act], qkv_bias=bias, o_bias=bias,
        mlp_bias=bool(d.get("mlp_bias", False)), tie_embeddings=bool(d.get("tie_word_embeddings", False)),
        **common,
    )
    if model_type in MOE_MODEL_TYPES:
        kw.update(moe_config_fields(d, model_type))
    if model_type in ("mistral", "mixtral"):
        kw["sliding_window"] = d.get("sliding_window")
    elif model_type in ("qwen2", "qwen2_moe"):
        kw["qkv_bias"], kw["o_bias"] = bool(d.get("qkv_bias", True)), False
        if d.get("use_sliding_window") and d.get("sliding_window"):
            kw["sliding_window"] = d["sliding_window"]
            n, first = d["num_hidden_layers"], d.get("max_window_layers", d["num_hidden_layers"])
            kw["layer_types"] = d.get("layer_types") or [
                "sliding_attention" if i >= first else "full_attention" for i in range(n)]
    return ModelConfig(**kw)


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The HF ``config.json`` dict for `cfg` (readable by transformers 4.4x and 5.x)."""
    dtype_name = str(dtype).removeprefix("torch.")
    act = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_new" if cfg.family == "gpt2" else "gelu_pytorch_tanh",
           "relu": "relu"}[cfg.activation]
    ids = dict(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
    if cfg.family == "bert":
        return bert_config_to_hf(cfg, dtype_name, ids)
    if cfg.family == "t5":
        return t5_config_to_hf(cfg, dtype_name, ids)
    if cfg.family == "gpt2":
        _require(cfg, norm="layernorm", positions="learned", mlp="gelu", qkv_bias=True, o_bias=True, mlp_bias=True,
                 n_kv_heads=cfg.n_heads, head_dim=cfg.dim // cfg.n_heads, sliding_window=None, causal=True)
        return dict(architectures=["GPT2LMHeadModel"], model_type="gpt2", vocab_size=cfg.vocab_size,
                    n_embd=cfg.dim, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.hidden_dim,
                    n_positions=cfg.max_seq_len, n_ctx=cfg.max_seq_len, layer_norm_epsilon=cfg.norm_eps,
                    activation_function=act, tie_word_embeddings=cfg.tie_embeddings,
                    resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
                    initializer_range=cfg.init_std, torch_dtype=dtype_name, **ids)
    _require(cfg, post_norm=False, type_vocab_size=0, pooler=False, head="lm", head_transform=False, head_bias=False,
             n_encoder_layers=0, attn_scale=None, scale_tied_head=False)
    if cfg.family not in _CAUSAL_LM:
        raise ConfigError(f"family={cfg.family!r} cannot be exported: use one of {', '.join(SUPPORTED_MODEL_TYPES)}")
    _require(cfg, norm="rmsnorm", positions="rope", mlp="swiglu", causal=True)
    if cfg.is_moe and cfg.family not in MOE_MODEL_TYPES:
        raise ConfigError(f"family={cfg.family!r} has no experts in Hugging Face's layout, but n_experts="
                          f"{cfg.n_experts}: use family='mixtral' (or 'qwen2_moe' with a shared expert)")
    if cfg.family == "qwen2":
        _require(cfg, qkv_bias=True, o_bias=False)
    elif cfg.family == "qwen2_moe":
        _require(cfg, o_bias=False)
    elif cfg.qkv_bias != cfg.o_bias:
        raise ConfigError(f"family={cfg.family!r} has one attention_bias flag for q/k/v and o: "
                          f"qkv_bias={cfg.qkv_bias} and o_bias={cfg.o_bias} differ (use family='qwen2' for q/k/v bias only)")
    if cfg.family == "llama" and cfg.sliding_window is not None:
        raise ConfigError("family='llama' has no sliding window: use family='mistral' (or 'qwen2')")
    out: dict[str, Any] = dict(
        architectures=[_CAUSAL_LM[cfg.family]],
        model_type=cfg.family, vocab_size=cfg.vocab_size, hidden_size=cfg.dim, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
        intermediate_size=cfg.hidden_dim, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        hidden_act=act, rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling,
        tie_word_embeddings=cfg.tie_embeddings, attention_dropout=cfg.dropout, initializer_range=cfg.init_std,
        torch_dtype=dtype_name, **ids,
    )
    if cfg.family == "llama":
        out.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
    else:
        _require(cfg, mlp_bias=False)
    if cfg.family in MOE_MODEL_TYPES:
        out.update(moe_config_to_hf(cfg))
    if cfg.family == "qwen2_moe":
        out["qkv_bias"] = cfg.qkv_bias
    if cfg.family in ("mistral", "mixtral"):
        out["sliding_window"] = cfg.sliding_window
        if cfg.layer_types is not None and "full_attention" in cfg.layer_types:
            raise ConfigError(f"family={cfg.family!r} applies its sliding window to every layer: set layer_types=None")
    if cfg.family in ("qwen2", "qwen2_moe"):
        layer_types = cfg.layer_types or ["sliding_attention" if cfg.sliding_window else "full_attention"] * cfg.n_layers
        out.update(use_sliding_window=cfg.sliding_window is not None, sliding_window=cfg.sliding_window,
                   max_window_layers=layer_types.index("sliding_attention") if "sliding_attention" in layer_types
                   else cfg.n_layers, layer_types=layer_types)
    return out


# ------------------------------------------------------------------------------ key mapping
_GPT2_LAYER = {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm", "attn.c_proj": "self_attn.o_proj",
               "mlp.c_fc": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj"}
_GPT2_TOP = {"wte.weight": "model.embed_tokens.weight", "wpe.weight": "model.embed_positions.weight",
             "ln_f.weight": "model.norm.weight", "ln_f.bias": "model.norm.bias"}
# HF tensors that are buffers or duplicates, not weights (BERT: its position-id buffer, the decoder
# bias that is cls.predictions.bias again, the next-sentence head of BertForPreTraining files)
_IGNORED = re.compile(r"(rotary_emb\.inv_freq|(?:^|\.)attn\.bias|(?:^|\.)attn\.masked_bias|embeddings\.position_ids"
                      r"|cls\.predictions\.decoder\.bias|cls\.seq_relationship\.(?:weight|bias)"
                      r"|^(?:en|de)coder\.embed_tokens\.weight)$")


def state_dict_from_hf(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF tensor names and layouts -> ours."""
    if cfg.family == "bert":
        return bert_state_dict_from_hf(hf, cfg, _IGNORED)
    if cfg.family == "t5":
        return t5_state_dict_from_hf(hf, cfg)
    if cfg.family != "gpt2":
        kept = {k: v for k, v in hf.items() if not _IGNORED.search(k)}
        return experts_from_hf(kept, cfg) if cfg.is_moe else kept
    out: dict[str, torch.Tensor] = {}
    splits = [cfg.q_dim, cfg.kv_dim, cfg.kv_dim]
    for key, t in hf.items():
        k = key.removeprefix("transformer.")
        if _IGNORED.search(k) or k == "lm_head.weight" and cfg.tie_embeddings:
            continue
        if k in _GPT2_TOP:
            out[_GPT2_TOP[k]] = t
            continue
        m = re.fullmatch(r"h\.(\d+)\.(.+)\.(weight|bias)", k)
        if not m:
            out[k] = t  # e.g. lm_head.weight of an untied model; unknown keys surface in validation
            continue
        i, part, kind = m.groups()
        prefix = f"model.layers.{i}."
        if part == "attn.c_attn":
            pieces = (t.t() if kind == "weight" else t).split(splits, dim=0)
            for name, piece in zip(("q_proj", "k_proj", "v_proj"), pieces):
                out[f"{prefix}self_attn.{name}.{kind}"] = piece.contiguous()
        elif part in _GPT2_LAYER:
            conv = kind == "weight" and not part.startswith("ln_")  # Conv1D stores (in, out)
            out[f"{prefix}{_GPT2_LAYER[part]}.{kind}"] = t.t().contiguous() if conv else t
        else:
            out[k] = t
    return out


def state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig, prefix: bool | None = None,
                     fused_experts: bool = False) -> dict[str, torch.Tensor]:
    """Our tensor names and layouts -> HF's (a tied head is written once, as the embedding).
    `prefix=False` leaves out the `bert.` prefix of BERT task models (default: as HF writes them);
    `fused_experts` writes a mixture of experts in transformers 5's fused in-memory layout."""
    sd = {k: v for k, v in sd.items() if not (cfg.tie_embeddings and k == "lm_head.weight")}
    if cfg.is_moe:
        return experts_to_hf(sd, cfg, fused_experts)
    if cfg.family == "bert":  # a task model (MLM head, classifier) keeps its body under `bert.`
        return bert_state_dict_to_hf(sd, cfg, prefix)
    if cfg.family == "t5":
        return t5_state_dict_to_hf(sd, cfg)
    if cfg.family != "gpt2":
        return sd
    top = {v: k for k, v in _GPT2_TOP.items()}
    layer = {v: k for k, v in _GPT2_LAYER.items()}
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if key in top:
            out["transformer." + top[key]] = t
            continue
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if not m:
            out[key] = t
            continue
        i, part, kind = m.groups()
        prefix = f"transformer.h.{i}."
        if part in ("self_attn.k_proj", "self_attn.v_proj"):
            continue  # fused with q below
        if part == "self_attn.q_proj":
            parts = [sd[f"model.layers.{i}.self_attn.{n}.{kind}"] for n in ("q_proj", "k_proj", "v_proj")]
            fused = torch.cat(parts, dim=0)
            out[f"{prefix}attn.c_attn.{kind}"] = fused.t().contiguous() if kind == "weight" else fused
        else:
            hf_part = layer[part]
            conv = kind == "weight" and not hf_part.startswith("ln_")
            out[f"{prefix}{hf_part}.{kind}"] = t.t().contiguous() if conv else t
    return out


# --------------------------------------------------------------------------------- loading
def read_config(path: str | os.PathLike) -> ModelConfig:
    path = Path(path)
    d = _config_json(path)
    try:
        return config_from_hf(d)
    except KeyError as e:
        raise CheckpointError(f"{path / 'config.json'} lacks the field {e.args[0]!r} that model_type "
                              f"{d.get('model_type')!r} needs") from e


def _quantization(path: Path) -> dict[str, Any] | None:
    """config.json's quantization_config when it is llmkit's weight-only format; a checkpoint
    quantised by another tool (GPTQ, AWQ, bitsandbytes, ...) is refused with what to do."""
    q = _config_json(path).get("quantization_config")
    if q is None:
        return None
    method = q.get("quant_method") if isinstance(q, dict) else None
    if method != QUANT_METHOD:
        raise CheckpointError(
            f"{path}: config.json has quantization_config.quant_method={method!r}; llmkit reads only its own "
            f"weight-only format ({QUANT_METHOD!r}): load the full-precision model and run `llmkit quantize`")
    return q


def load_pretrained(path: str | os.PathLike, device: torch.device | str | None = None,
                    dtype: str | torch.dtype | None = None) -> Transformer:
    """Build a `Transformer` from an HF directory. Every tensor name and shape is checked before
    any weight is read; on error nothing is returned and the message names the tensor."""
    path = Path(path)
    archs = _config_json(path).get("architectures") or []
    if any(str(a).endswith(("ForSequenceClassification", "ForTokenClassification")) for a in archs):
        raise CheckpointError(f"{path} is a classification model ({archs[0]}), not a language model: load it with "
                              "llmkit.models.load_classifier (a reward model: llmkit.align.load_reward_model)")
    return _load(path, device, dtype)[0]


def _score_key(cfg: ModelConfig, bias: bool = False) -> str:
    """HF's name of a classification head's weight (or bias)."""
    return ("classifier." if cfg.family == "bert" else "score.") + ("bias" if bias else "weight")


def _load(path: Path, device: torch.device | str | None, dtype: str | torch.dtype | None,
          score: bool = False) -> tuple[Transformer, dict[str, torch.Tensor]]:
    """The model, and with `score` the classification head of an HF *ForSequenceClassification /
    *ForTokenClassification checkpoint instead of an output head: {"weight": (labels, dim),
    "bias": (labels,) where it has one}. A BERT checkpoint's tensors say whether it has a pooler
    and a masked-LM head."""
    cfg = read_config(path)
    quant = _quantization(path)
    device = torch.device(device or "cpu")
    dtype = parse_dtype(dtype, device)
    own_names = quant is not None

    files, _ = _weight_files(path)
    handles = [_open(f) for f in files]
    where: dict[str, Any] = {}
    found_shapes: dict[str, tuple[int, ...]] = {}
    for h in handles:
        for k in h.keys():
            where[k] = h
            found_shapes[k] = tuple(h.get_slice(k).get_shape())
    raw_names = {k: k for k in found_shapes}
    if not own_names and cfg.family == "gpt2" and not any(k.startswith("transformer.") for k in found_shapes):
        # original OpenAI GPT-2 files have no "transformer." prefix
        raw_names = {("transformer." + k if k != "lm_head.weight" else k): k for k in found_shapes}
    if not own_names and cfg.family == "bert":  # names as in BertModel; which parts the tensors hold
        raw_names = bert_checkpoint_names(found_shapes)
        cfg = bert_parts(cfg, raw_names, score)
    if not own_names and cfg.family == "t5":  # transformers 5 always ties T5's head; older files may not
        cfg = cfg.replace(tie_embeddings="lm_head.weight" not in found_shapes)
    fused = not own_names and cfg.is_moe and is_fused(found_shapes)  # transformers 5's in-memory expert layout
    found_shapes = {k: found_shapes[raw] for k, raw in raw_names.items()}
    where = {k: where[raw] for k, raw in raw_names.items()}

    with torch.device("meta"):
        model = Transformer(cfg)
        if quant is not None:  # llmkit's own names, layouts and quantised modules
            try:
                prepare_quantized(model, quant)
            except ValueError as e:
                raise CheckpointError(f"{path}/config.json: {e}") from e
    sd = model.state_dict()
    if score:
        sd = {k: v for k, v in sd.items() if not k.startswith("lm_head.")}
    if own_names:
        expected = {k: tuple(v.shape) for k, v in sd.items() if not (k == "lm_head.weight" and cfg.tie_embeddings)}
    else:
        expected = {k: tuple(v.shape) for k, v in state_dict_to_hf(sd, cfg, prefix=False, fused_experts=fused).items()}
    if score:
        weight, bias = _score_key(cfg), _score_key(cfg, bias=True)
        shape = found_shapes.get(weight)
        if shape is None or len(shape) != 2 or shape[1] != cfg.dim:
            raise CheckpointError(f"{path}: a classification checkpoint needs {weight} of shape [labels, {cfg.dim}], "
                                  f"found {list(shape) if shape else 'none'}")
        expected[weight] = shape
        if bias in found_shapes:
            expected[bias] = (shape[0],)

    missing = [k for k in expected if k not in found_shapes]
    if missing:
        raise CheckpointError(f"{path}: missing tensor(s) {missing[:5]}{' …' if len(missing) > 5 else ''} "
                              f"({len(missing)} of {len(expected)}); the checkpoint does not match its config.json")
    for k, shape in expected.items():
        if found_shapes[k] != shape:
            raise CheckpointError(f"{path}: tensor {k} has shape {list(found_shapes[k])} but config.json implies "
                                  f"{list(shape)}")
    extra = [k for k in found_shapes if k not in expected and not _IGNORED.search(k)
             and not (k in ("lm_head.weight", "cls.predictions.decoder.weight") and cfg.tie_embeddings)]
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor(s) {extra[:5]} that config.json does not account for")

    ours: dict[str, torch.Tensor] = {}
    for k in expected:  # one tensor at a time, so the model is never held twice (GPT-2's transposes)
        try:
            t = where[k].get_tensor(raw_names[k])
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read tensor {k} from {path}: the file is damaged ({e})") from e
        # copy=True: a fresh, 64-byte aligned buffer (safetensors' own is not, and MKL's matmuls
        # run ~10% slower on misaligned weights)
        keep = not t.is_floating_point() or (own_names and k.endswith(".scale"))  # codes and scales as saved
        t = t.to(device=device, dtype=t.dtype if keep else dtype, copy=True)
        ours.update({k: t} if own_names else state_dict_from_hf({k: t}, cfg))
        del t
    del handles, where
    head = {name: ours.pop(f"score.{name}") for name in ("weight", "bias") if f"score.{name}" in ours}
    if score:
        model.lm_head = None  # a classifier reads hidden states: no output head
        model.head_transform = None
    return finish_model(model, ours, cfg, device, path), head


def finish_model(model: Transformer, state: dict[str, torch.Tensor], cfg: ModelConfig, device: torch.device,
                 where: Any) -> Transformer:
    """Put `state` (our names) into a model built on the meta device: assign the tensors, build
    the rotary buffers on the real device, tie the head; every parameter must have been given."""
    model.load_state_dict(state, strict=False, assign=True)
    # buffers (rotary frequencies) were built on meta: build them again on the real device
    if model.model.rotary is not None:
        from .layers import rope_inv_freq
        model.model.rotary.inv_freq = rope_inv_freq(cfg, device=device)
    if cfg.tie_embeddings and model.lm_head is not None and type(model.lm_head) is torch.nn.Linear:
        model.lm_head.weight = model.model.embed_tokens.weight
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise CheckpointError(f"{where}: no weights for {leftover[:5]}")
    return model.eval()


def save_pretrained(model: Transformer, path: str | os.PathLike, max_shard_bytes: int = 2 * 1024**3,
                    dtype: str | torch.dtype | None = None, sampling: dict[str, Any] | None = None) -> list[Path]:
    """Write config.json, generation_config.json and safetensors weights (sharded with an index
    above `max_shard_bytes`) that `transformers.AutoModelForCausalLM.from_pretrained` loads.
    `sampling` (the model's own settings, by `GenerationConfig` names) goes into
    generation_config.json. Every file is written atomically; stale shards of an earlier save are
    removed."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    sd = model.state_dict()
    adapted = [k for k in sd if ".base_layer." in k or "lora_" in k or k.startswith("virtual_tokens.")
               or "_adapter." in k]
    if adapted:
        raise ConfigError(f"the model carries adapters ({adapted[0]}, ...): save them with llmkit.peft.save_adapter, "
                          "or fold a LoRA in first with llmkit.peft.merge_and_unload")
    dtype = parse_dtype(dtype, "cpu") if dtype is not None else model.dtype
    hf_config = config_to_hf(cfg, dtype)
    quant = quantization_config(model)
    if quant is not None:
        # llmkit's own tensor names (codes and scales have no HF layout); transformers refuses
        # the unknown quant_method, llmkit.load reads it back quantised
        hf_config["quantization_config"] = quant
        named = {k: v for k, v in sd.items() if not (k == "lm_head.weight" and cfg.tie_embeddings)}
    else:
        named = state_dict_to_hf(sd, cfg)
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() and not (quant and k.endswith(".scale"))
                                else v.dtype).contiguous()
               for k, v in named.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(tensors):
        nbytes = tensors[k].numel() * tensors[k].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = tensors[k]
        size += nbytes
    written: list[Path] = []
    stale = set(path.glob("model*.safetensors")) | {path / INDEX_FILE}
    if len(shards) == 1:
        names = [SINGLE_FILE]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        with atomic_path(path / name) as tmp:
            save_file(shard, str(tmp), metadata={"format": "pt"})
        written.append(path / name)
    if len(shards) > 1:
        weight_map = {k: name for name, shard in zip(names, shards) for k in shard}
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        write_json_atomic(path / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
    write_json_atomic(path / "config.json", hf_config)
    for old in stale - set(written) - ({path / INDEX_FILE} if len(shards) > 1 else set()):
        old.unlink(missing_ok=True)  # shards of an earlier save, removed only once the new ones exist
    gen = {k: v for k, v in (("bos_token_id", cfg.bos_token_id), ("eos_token_id", cfg.eos_token_id),
                             ("pad_token_id", cfg.pad_token_id),
                             ("decoder_start_token_id", cfg.decoder_start_token_id)) if v is not None}
    write_json_atomic(path / "generation_config.json", {**gen, **to_hf(sampling or {})})
    log.info("saved %s (%d shard(s))", path, len(shards))
    return written
