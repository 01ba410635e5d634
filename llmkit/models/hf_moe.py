"""Mixtral and Qwen2-MoE in Hugging Face's layout: their config.json fields and expert tensors,
both ways.

Both are Llama-style decoders whose MLP is a `moe.MoE`; everything but the MLP keeps the Llama
names. The experts come in two layouts, and both are read:

- one tensor per expert, as checkpoints on the Hub hold them and as transformers 5 still writes
  them (Mixtral: ``block_sparse_moe.experts.N.w1/w3/w2`` = gate/up/down and
  ``block_sparse_moe.gate``; Qwen2-MoE: ``mlp.experts.N.gate_proj`` …, llmkit's own names);
- fused, as transformers 5 holds them in memory (a ``state_dict()`` saved directly):
  ``mlp.experts.gate_up_proj`` (experts, 2·width, dim; gate rows first) and
  ``mlp.experts.down_proj`` (experts, dim, width).

llmkit writes the first, which transformers 4 and 5, vLLM and llama.cpp's converter all read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from .config import ConfigError, ModelConfig
from .hf_common import CheckpointError

log = logging.getLogger(__name__)

MOE_MODEL_TYPES = ("mixtral", "qwen2_moe")
# mixtures of experts that transformers knows and llmkit does not read (named in the refusal)
OTHER_MOE_TYPES = ("qwen3_moe", "qwen3_next", "deepseek_v2", "deepseek_v3", "olmoe", "granitemoe", "granitemoeshared",
                   "jamba", "dbrx", "phimoe", "minimax", "switch_transformers", "nllb_moe", "gpt_oss", "llama4",
                   "ernie4_5_moe", "glm4_moe", "hunyuan_v1_moe", "jetmoe", "flex_olmo", "dots1")

_MIXTRAL = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
_FUSED = re.compile(r"(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")
PER_EXPERT = re.compile(r"(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
STACKED = re.compile(r"(model\.layers\.\d+\.mlp\.experts)\.(gate_proj|up_proj|down_proj)\.weight$")
T = TypeVar("T")


def refuse_unsupported_moe(model_type: Any, supported: tuple[str, ...]) -> None:
    if model_type in OTHER_MOE_TYPES:
        raise CheckpointError(f"model_type {model_type!r} is a mixture of experts that llmkit does not read: of the "
                              f"mixtures it reads {', '.join(MOE_MODEL_TYPES)} (all it reads: {', '.join(supported)})")


def moe_config_fields(d: dict[str, Any], model_type: str) -> dict[str, Any]:
    """The expert fields of a Mixtral or Qwen2-MoE config.json (the rest is read as for Llama)."""
    aux = float(d.get("router_aux_loss_coef") or 0.0) if d.get("output_router_logits") else 0.0
    z = float(d.get("router_z_loss_coef") or 0.0)  # written by llmkit (transformers' Switch reads the same key)
    if d.get("router_jitter_noise"):
        log.info("router_jitter_noise=%s is not applied by llmkit (it only perturbs training)", d["router_jitter_noise"])
    if model_type == "mixtral":
        return dict(n_experts=d["num_local_experts"], experts_per_token=d["num_experts_per_tok"],
                    router_renormalize=True, router_aux_loss_coef=aux, router_z_loss_coef=z)
    step, dense_layers = d.get("decoder_sparse_step", 1), d.get("mlp_only_layers") or []
    if step != 1 or dense_layers:
        raise CheckpointError(f"qwen2_moe with decoder_sparse_step={step} and mlp_only_layers={dense_layers} mixes "
                              "dense and expert layers, which llmkit does not build: it reads Qwen2-MoE models whose "
                              "every layer has experts (decoder_sparse_step=1, mlp_only_layers=[])")
    return dict(n_experts=d["num_experts"], experts_per_token=d["num_experts_per_tok"],
                expert_hidden_dim=d["moe_intermediate_size"],
                shared_expert_hidden_dim=d.get("shared_expert_intermediate_size") or 0,
                router_renormalize=bool(d.get("norm_topk_prob", False)), router_aux_loss_coef=aux,
                router_z_loss_coef=z)


def moe_config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The expert fields of `cfg` as its family's config.json names them."""
    if not cfg.is_moe:
        raise ConfigError(f"family={cfg.family!r} is a mixture of experts: set n_experts (e.g. 8) and "
                          "experts_per_token, or use a dense family (llama, mistral, qwen2)")
    common = dict(num_experts_per_tok=cfg.experts_per_token, router_aux_loss_coef=cfg.router_aux_loss_coef,
                  output_router_logits=cfg.router_aux_loss_coef > 0, router_z_loss_coef=cfg.router_z_loss_coef)
    if not cfg.shared_expert_hidden_dim and not cfg.router_renormalize:
        raise ConfigError("no Hugging Face family has experts without a shared expert whose top-k weights are not "
                          "renormalised: set router_renormalize=true (Mixtral), or give a shared expert with "
                          "shared_expert_hidden_dim and family='qwen2_moe'")
    if cfg.family == "mixtral":
        if cfg.shared_expert_hidden_dim or not cfg.router_renormalize:
            raise ConfigError(f"family='mixtral' has no shared expert and renormalises its top-k weights, but the "
                              f"config has shared_expert_hidden_dim={cfg.shared_expert_hidden_dim}, router_renormalize="
                              f"{cfg.router_renormalize}: use family='qwen2_moe' for a shared expert")
        # Mixtral has no dense MLP: its intermediate_size is the experts' width
        return dict(num_local_experts=cfg.n_experts, intermediate_size=cfg.expert_hidden_dim, **common)
    if not cfg.shared_expert_hidden_dim:
        raise ConfigError("family='qwen2_moe' always has a shared expert: set shared_expert_hidden_dim, or use "
                          "family='mixtral' for renormalised experts alone")
    return dict(num_experts=cfg.n_experts, moe_intermediate_size=cfg.expert_hidden_dim,
                shared_expert_intermediate_size=cfg.shared_expert_hidden_dim, norm_topk_prob=cfg.router_renormalize,
                decoder_sparse_step=1, mlp_only_layers=[], **common)


def experts_from_hf(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF tensors of a Mixtral / Qwen2-MoE checkpoint (either expert layout) -> our names."""
    out: dict[str, torch.Tensor] = {}
    for key, t in hf.items():
        if cfg.family == "mixtral":
            key = key.replace(".block_sparse_moe.", ".mlp.")
            m = re.search(r"\.mlp\.experts\.\d+\.(w[123])\.weight$", key)
            if m:
                key = key[:m.start(1)] + _MIXTRAL[m.group(1)] + ".weight"
        fused = _FUSED.match(key)
        if fused is None:
            out[key] = t
            continue
        prefix, part = fused.groups()
        if part == "down_proj":
            pieces = {"down_proj": t}
        else:
            gate, up = t.chunk(2, dim=1)
            pieces = {"gate_proj": gate, "up_proj": up}
        for name, stacked in pieces.items():
            for i, w in enumerate(stacked.unbind(0)):
                out[f"{prefix}.{i}.{name}.weight"] = w.contiguous()
    return out


def experts_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig, fused: bool = False) -> dict[str, torch.Tensor]:
    """Our tensors -> HF's: one tensor per expert under the family's names, or with `fused`
    transformers 5's in-memory layout (which `experts_from_hf` reads back)."""
    if fused or cfg.family != "mixtral":  # transformers 5 names both families' fused experts `mlp.experts`
        return _fuse(sd) if fused else sd
    out: dict[str, torch.Tensor] = {}
    back = {v: k for k, v in _MIXTRAL.items()}
    for key, t in sd.items():
        m = PER_EXPERT.match(key)
        if m:
            key = f"{m.group(1)}.{m.group(2)}.{back[m.group(3)]}.weight"
        if ".mlp.gate." in key or ".mlp.experts." in key:
            key = key.replace(".mlp.", ".block_sparse_moe.")
        out[key] = t
    return out


def collapse(named: dict[str, T], stack: Callable[[list[T]], T]) -> dict[str, T]:
    """Our per-expert entries (``…experts.3.up_proj.weight``) replaced, in place of the first, by
    one entry per stack (``…experts.up_proj.weight``) holding `stack` of them in expert order."""
    groups: dict[str, dict[int, T]] = {}
    for name, value in named.items():
        m = PER_EXPERT.match(name)
        if m:
            groups.setdefault(f"{m.group(1)}.{m.group(3)}.weight", {})[int(m.group(2))] = value
    out: dict[str, T] = {}
    for name, value in named.items():
        m = PER_EXPERT.match(name)
        if m is None:
            out[name] = value
            continue
        key = f"{m.group(1)}.{m.group(3)}.weight"
        if key not in out:
            out[key] = stack([groups[key][i] for i in sorted(groups[key])])
    return out


def _fuse(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5's layout: each layer's stacked gate and up as one ``gate_up_proj`` (gate rows first)."""
    stacked = collapse(sd, torch.stack)
    out: dict[str, torch.Tensor] = {}
    for key, t in stacked.items():
        m = STACKED.match(key)
        if m is None:
            out[key] = t
        elif m.group(2) == "gate_proj":
            out[f"{m.group(1)}.gate_up_proj"] = torch.cat([t, stacked[f"{m.group(1)}.up_proj.weight"]], dim=1)
        elif m.group(2) == "down_proj":
            out[f"{m.group(1)}.down_proj"] = t
    return out


def is_fused(names: Any) -> bool:
    """Whether a checkpoint's tensor names hold the experts fused."""
    return any(_FUSED.match(n) for n in names)
