"""T5 in Hugging Face's layout (`T5ForConditionalGeneration`, t5 and v1.1 configs): its
config.json and tensor names, both ways.

T5 is the one model with an encoder (``n_encoder_layers``), cross-attention, relative position
buckets, unscaled attention and RMSNorm without bias (`ModelConfig` fields); this module is only
its naming. HF keeps the relative position bias in the first block's attention
(``block.0.layer.0.SelfAttention.relative_attention_bias``); llmkit keeps it on the stack
(``encoder.relative`` / ``model.relative``), since every layer uses it. v1.0 checkpoints scale the
decoder output by dim**-0.5 before a tied head; v1.1 ones do not (``scale_decoder_outputs`` in
transformers 5, ``tie_word_embeddings: false`` before it). Whether the head is tied is read from
the tensors: transformers 5 always ties it, older files may carry their own ``lm_head.weight``.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import ModelConfig
from .hf_common import HF_ACTIVATIONS, CheckpointError, key_patterns, rename, require

T5_ARCHITECTURES = ("T5ForConditionalGeneration",)

_STACK = {  # within encoder./decoder. ; {} is a layer index or weight
    "block.{}.layer.0.SelfAttention.q.{}": "layers.{}.self_attn.q_proj.{}",
    "block.{}.layer.0.SelfAttention.k.{}": "layers.{}.self_attn.k_proj.{}",
    "block.{}.layer.0.SelfAttention.v.{}": "layers.{}.self_attn.v_proj.{}",
    "block.{}.layer.0.SelfAttention.o.{}": "layers.{}.self_attn.o_proj.{}",
    "block.{}.layer.0.layer_norm.{}": "layers.{}.input_layernorm.{}",
    "block.0.layer.0.SelfAttention.relative_attention_bias.{}": "relative.embed.{}",
    "final_layer_norm.{}": "norm.{}",
}
_FF = {"DenseReluDense.wi.{}": "mlp.up_proj.{}", "DenseReluDense.wi_0.{}": "mlp.gate_proj.{}",
       "DenseReluDense.wi_1.{}": "mlp.up_proj.{}", "DenseReluDense.wo.{}": "mlp.down_proj.{}",
       "layer_norm.{}": "post_attention_layernorm.{}"}
_CROSS = {"block.{}.layer.1.EncDecAttention.q.{}": "layers.{}.encoder_attn.q_proj.{}",
          "block.{}.layer.1.EncDecAttention.k.{}": "layers.{}.encoder_attn.k_proj.{}",
          "block.{}.layer.1.EncDecAttention.v.{}": "layers.{}.encoder_attn.v_proj.{}",
          "block.{}.layer.1.EncDecAttention.o.{}": "layers.{}.encoder_attn.o_proj.{}",
          "block.{}.layer.1.layer_norm.{}": "layers.{}.encoder_attn_layernorm.{}"}


def _table() -> dict[str, str]:
    """HF name -> ours, for the whole model."""
    out = {"shared.weight": "model.embed_tokens.weight", "lm_head.weight": "lm_head.weight"}
    for hf, ours, ff_layer in (("encoder.", "encoder.", 1), ("decoder.", "model.", 2)):
        out.update({hf + k: ours + v for k, v in _STACK.items()})
        out.update({f"{hf}block.{{}}.layer.{ff_layer}.{k}": f"{ours}layers.{{}}.{v}" for k, v in _FF.items()})
    out.update({"decoder." + k: "model." + v for k, v in _CROSS.items()})
    return out


_TO_OURS = key_patterns(_table())
_TO_HF = key_patterns({v: k for k, v in _table().items() if not k.endswith("wi.{}")})
_TO_HF_PLAIN = key_patterns({v: k for k, v in _table().items() if not k.endswith("wi_1.{}")})


def t5_config_from_hf(d: dict[str, Any], common: dict[str, Any]) -> ModelConfig:
    """`ModelConfig` of a T5 config.json."""
    archs = [str(a) for a in d.get("architectures") or []]
    unsupported = [a for a in archs if a not in T5_ARCHITECTURES]
    if unsupported:
        raise CheckpointError(f"T5 variant {unsupported[0]} is not supported: llmkit reads {', '.join(T5_ARCHITECTURES)}")
    proj = d.get("feed_forward_proj", "relu")
    gated, act = proj.startswith("gated-"), proj.removeprefix("gated-")
    act = "gelu_new" if proj == "gated-gelu" else act  # T5 v1.1's "gated-gelu" means the tanh GELU
    if act not in HF_ACTIVATIONS:
        raise CheckpointError(f"feed_forward_proj {proj!r} is not supported: use relu, gelu, gated-gelu or gated-silu")
    scale = d.get("scale_decoder_outputs", d.get("tie_word_embeddings", True) is not False)
    dim, heads = d["d_model"], d["num_heads"]
    return ModelConfig(
        family="t5", dim=dim, n_layers=d.get("num_decoder_layers") or d["num_layers"], n_encoder_layers=d["num_layers"],
        n_heads=heads, head_dim=d.get("d_kv", dim // heads), hidden_dim=d["d_ff"],
        max_seq_len=d.get("n_positions") or 512, norm="rmsnorm", norm_eps=d.get("layer_norm_epsilon", 1e-6),
        positions="relative", relative_buckets=d.get("relative_attention_num_buckets", 32),
        relative_max_distance=d.get("relative_attention_max_distance", 128), mlp="swiglu" if gated else "gelu",
        activation=HF_ACTIVATIONS[act], attn_scale=1.0, scale_tied_head=bool(scale),
        tie_embeddings=bool(d.get("tie_word_embeddings", True)),
        decoder_start_token_id=d.get("decoder_start_token_id", common.get("pad_token_id") or 0), **common,
    )


def t5_config_to_hf(cfg: ModelConfig, dtype_name: str, ids: dict[str, Any]) -> dict[str, Any]:
    require(cfg, norm="rmsnorm", positions="relative", qkv_bias=False, o_bias=False, mlp_bias=False, causal=True,
            sliding_window=None, attn_scale=1.0, post_norm=False, type_vocab_size=0, head="lm")
    if not cfg.is_seq2seq:
        raise CheckpointError("family='t5' needs n_encoder_layers > 0 (an encoder-decoder)")
    act = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu"}[cfg.activation]
    proj = ("gated-gelu" if act == "gelu_new" else f"gated-{act}") if cfg.mlp == "swiglu" else act
    return dict(architectures=["T5ForConditionalGeneration"], model_type="t5", vocab_size=cfg.vocab_size,
                d_model=cfg.dim, d_kv=cfg.head_dim, d_ff=cfg.hidden_dim, num_layers=cfg.n_encoder_layers,
                num_decoder_layers=cfg.n_layers, num_heads=cfg.n_heads, layer_norm_epsilon=cfg.norm_eps,
                relative_attention_num_buckets=cfg.relative_buckets,
                relative_attention_max_distance=cfg.relative_max_distance, feed_forward_proj=proj,
                tie_word_embeddings=cfg.tie_embeddings, scale_decoder_outputs=cfg.scale_tied_head,
                dropout_rate=cfg.dropout, initializer_factor=1.0, is_encoder_decoder=True,
                decoder_start_token_id=cfg.decoder_start_token_id, torch_dtype=dtype_name, **ids)


def t5_state_dict_from_hf(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF T5 names -> ours (the tied copies of the embedding are dropped; unknown keys surface in validation)."""
    out = {}
    for k, v in hf.items():
        if k in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight") or \
                (k == "lm_head.weight" and cfg.tie_embeddings):
            continue
        out[rename(k, _TO_OURS) or k] = v
    return out


def t5_state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our names -> HF T5's (one copy of the shared embedding)."""
    patterns = _TO_HF if cfg.mlp == "swiglu" else _TO_HF_PLAIN
    return {(rename(k, patterns) or k): v for k, v in sd.items() if k != "encoder.embed_tokens.weight"}
