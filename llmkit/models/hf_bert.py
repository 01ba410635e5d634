"""BERT in Hugging Face's layout: its config.json and tensor names, both ways.

BERT is the one model with ``causal=False``, post-norm blocks, token types, a pooler and the
masked-LM head (`ModelConfig` fields); this module is only its naming. Task models (`BertForMaskedLM`,
`*ForSequenceClassification`, `*ForTokenClassification`) keep the body under ``bert.``; `BertModel`
files have no prefix. Which parts a checkpoint holds (pooler, masked-LM head) is read from its
tensors, since config.json does not say; the original Google checkpoints' LayerNorm ``gamma`` /
``beta`` are read as ``weight`` / ``bias``, as transformers does.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import torch

from .config import ModelConfig
from .hf_common import HF_ACTIVATIONS, CheckpointError, key_patterns, rename, require

BERT_ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForSequenceClassification", "BertForTokenClassification")

# BERT's names -> ours (after the `bert.` prefix of its task models); {} is one name part
BODY_KEYS = {
    "embeddings.word_embeddings.weight": "model.embed_tokens.weight",
    "embeddings.position_embeddings.weight": "model.embed_positions.weight",
    "embeddings.token_type_embeddings.weight": "model.embed_types.weight",
    "embeddings.LayerNorm.{}": "model.embed_norm.{}",
    "encoder.layer.{}.attention.self.query.{}": "model.layers.{}.self_attn.q_proj.{}",
    "encoder.layer.{}.attention.self.key.{}": "model.layers.{}.self_attn.k_proj.{}",
    "encoder.layer.{}.attention.self.value.{}": "model.layers.{}.self_attn.v_proj.{}",
    "encoder.layer.{}.attention.output.dense.{}": "model.layers.{}.self_attn.o_proj.{}",
    "encoder.layer.{}.attention.output.LayerNorm.{}": "model.layers.{}.post_attention_layernorm.{}",
    "encoder.layer.{}.intermediate.dense.{}": "model.layers.{}.mlp.up_proj.{}",
    "encoder.layer.{}.output.dense.{}": "model.layers.{}.mlp.down_proj.{}",
    "encoder.layer.{}.output.LayerNorm.{}": "model.layers.{}.post_feedforward_layernorm.{}",
    "pooler.dense.{}": "model.pooler.{}",
}
HEAD_KEYS = {  # outside the `bert.` prefix
    "cls.predictions.transform.dense.{}": "head_transform.dense.{}",
    "cls.predictions.transform.LayerNorm.{}": "head_transform.norm.{}",
    "cls.predictions.decoder.weight": "lm_head.weight",
    "cls.predictions.bias": "lm_head.bias",
    "classifier.{}": "score.{}",
}
_LEGACY_NORM = re.compile(r"LayerNorm\.(gamma|beta)$")


# ------------------------------------------------------------------------------- config.json
def bert_config_from_hf(d: dict[str, Any], common: dict[str, Any]) -> ModelConfig:
    """`ModelConfig` of a BERT config.json; unsupported variants are named with the supported ones."""
    archs = [str(a) for a in d.get("architectures") or []]
    unsupported = [a for a in archs if a not in BERT_ARCHITECTURES]
    if unsupported:
        raise CheckpointError(f"BERT variant {unsupported[0]} is not supported: llmkit reads {', '.join(BERT_ARCHITECTURES)}")
    if d.get("is_decoder") or d.get("add_cross_attention"):
        raise CheckpointError("a BERT with is_decoder/add_cross_attention (a causal BERT) is not supported: "
                              f"llmkit reads the encoder ({', '.join(BERT_ARCHITECTURES)})")
    kind = d.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise CheckpointError(f"position_embedding_type {kind!r} is not supported: llmkit reads absolute positions")
    act = d.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise CheckpointError(f"hidden_act {act!r} is not supported: use one of {sorted(HF_ACTIVATIONS)}")
    lm = not archs or "BertForMaskedLM" in archs  # refined from the tensors by `bert_parts`
    return ModelConfig(
        family="bert", dim=d["hidden_size"], n_layers=d["num_hidden_layers"], n_heads=d["num_attention_heads"],
        hidden_dim=d["intermediate_size"], max_seq_len=d.get("max_position_embeddings", 512), norm="layernorm",
        norm_eps=d.get("layer_norm_eps", 1e-12), positions="learned", mlp="gelu", activation=HF_ACTIVATIONS[act],
        qkv_bias=True, o_bias=True, mlp_bias=True, causal=False, type_vocab_size=d.get("type_vocab_size", 2),
        post_norm=True, pooler=not archs or any(a in ("BertModel", "BertForSequenceClassification") for a in archs),
        head="lm" if lm else "none", head_transform=lm, head_bias=lm,
        tie_embeddings=lm and bool(d.get("tie_word_embeddings", True)), **common,
    )


def bert_config_to_hf(cfg: ModelConfig, dtype_name: str, ids: dict[str, Any]) -> dict[str, Any]:
    """The config.json of `cfg`: a `BertForMaskedLM` with the MLM head, else a `BertModel`."""
    require(cfg, norm="layernorm", positions="learned", mlp="gelu", qkv_bias=True, o_bias=True, mlp_bias=True,
            n_kv_heads=cfg.n_heads, head_dim=cfg.dim // cfg.n_heads, sliding_window=None, causal=False,
            post_norm=True, head_transform=cfg.head == "lm", head_bias=cfg.head == "lm")
    return dict(architectures=["BertForMaskedLM" if cfg.head == "lm" else "BertModel"], model_type="bert",
                vocab_size=cfg.vocab_size, hidden_size=cfg.dim, num_hidden_layers=cfg.n_layers,
                num_attention_heads=cfg.n_heads, intermediate_size=cfg.hidden_dim,
                max_position_embeddings=cfg.max_seq_len, layer_norm_eps=cfg.norm_eps,
                hidden_act={"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}[cfg.activation],
                type_vocab_size=cfg.type_vocab_size, position_embedding_type="absolute",
                hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
                tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std, torch_dtype=dtype_name, **ids)


# ------------------------------------------------------------------------------ tensor names
def _maps(prefixed: bool) -> tuple[list, list]:
    """(HF -> ours, ours -> HF) rename patterns; task models put the body under `bert.`."""
    body = "bert." if prefixed else ""
    to_ours = key_patterns(BODY_KEYS, body, "") + key_patterns(HEAD_KEYS, "", "")
    to_hf = key_patterns({v: k for k, v in BODY_KEYS.items()}, "", body) + \
        key_patterns({v: k for k, v in HEAD_KEYS.items()}, "", "")
    return to_ours, to_hf


def bert_state_dict_from_hf(hf: dict[str, torch.Tensor], cfg: ModelConfig, ignored: re.Pattern) -> dict[str, torch.Tensor]:
    """HF BERT names -> ours (a tied decoder weight is dropped; unknown keys surface in validation)."""
    to_ours = _maps(any(k.startswith("bert.") for k in hf))[0]
    out = {}
    for k, v in hf.items():
        if ignored.search(k) or (k == "cls.predictions.decoder.weight" and cfg.tie_embeddings):
            continue
        k = _LEGACY_NORM.sub(lambda m: "LayerNorm." + {"gamma": "weight", "beta": "bias"}[m.group(1)], k)
        out[rename(k, to_ours) or k] = v
    return out


def bert_state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig, prefix: bool | None = None) -> dict[str, torch.Tensor]:
    """Our names -> HF BERT's; `prefix` None: the `bert.` prefix when a head (MLM, classifier) is present."""
    to_hf = _maps(cfg.head == "lm" or "score.weight" in sd if prefix is None else prefix)[1]
    return {(rename(k, to_hf) or k): v for k, v in sd.items()}


def bert_checkpoint_names(keys: Iterable[str]) -> dict[str, str]:
    """{name as a BertModel / head key without `bert.` and with LayerNorm weight/bias: the file's own key}."""
    return {_LEGACY_NORM.sub(lambda m: "LayerNorm." + {"gamma": "weight", "beta": "bias"}[m.group(1)],
                             k.removeprefix("bert.")): k for k in keys}


def bert_parts(cfg: ModelConfig, names: Iterable[str], score: bool = False) -> ModelConfig:
    """`cfg` with the pooler and masked-LM head the checkpoint's tensors (`bert_checkpoint_names`)
    hold; a classifier (`score`) reads its body only."""
    names = set(names)
    lm = "cls.predictions.bias" in names and not score
    return cfg.replace(pooler="pooler.dense.weight" in names, head="lm" if lm else "none", head_transform=lm,
                       head_bias=lm, tie_embeddings=lm and "cls.predictions.decoder.weight" not in names)
