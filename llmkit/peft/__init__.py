"""Parameter-efficient fine-tuning as module surgery: LoRA, QLoRA (NF4 base + LoRA), bottleneck
adapters, prefix tuning and prompt tuning; adapter files PEFT reads; several adapters on one base.

    from llmkit.peft import apply_lora, save_adapter, load_adapter, merge_and_unload
    apply_lora(model, r=16, alpha=32, targets=["q_proj", "v_proj"])
    ...train...
    save_adapter(model, "runs/x/adapter", base_model="runs/quickstart/model")
    load_adapter(other_model, "runs/x/adapter", name="sql")
    with adapter(model, "sql"): ...

Targets are named our way (q_proj, …) on every family, BERT encoders, T5 and `Classifier`s included
(qualified, as self_attn.q_proj or encoder_attn.q_proj, to pick one of T5's attentions); the files
carry each family's Hugging Face names (`llmkit.peft.names`), so PEFT loads them on the transformers
model and llmkit loads PEFT's.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from torch import nn

from .bottleneck import (apply_bottleneck, bottleneck_names, bottleneck_tensors, load_bottleneck_tensors,
                         set_bottleneck)
from .files import (AdapterError, adapter_kind, load_lora_tensors, lora_tensors, read_adapter, write_adapter)
from .lora import (LoRAConfig, LoRALinear, adapter_names as lora_names, apply_lora, freeze, merge_and_unload,
                   merge_lora, set_lora_adapter, unmerge_lora)
from .virtual import VirtualTokens, apply_prefix_tuning, apply_prompt_tuning

METHODS = ("full", "lora", "qlora", "adapter", "prefix", "prompt")

__all__ = ["AdapterError", "LoRAConfig", "LoRALinear", "METHODS", "ParamReport", "adapter", "adapter_names",
           "apply_bottleneck", "apply_lora", "apply_prefix_tuning", "apply_prompt_tuning", "apply_qlora", "freeze",
           "load_adapter", "merge_and_unload", "merge_lora", "save_adapter", "set_adapter", "trainable_parameters",
           "unmerge_lora", "VirtualTokens"]


@dataclass
class ParamReport:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(1, self.total)

    def __str__(self) -> str:
        return f"trainable parameters: {self.trainable:,} of {self.total:,} ({self.percent:.3f}%)"


def trainable_parameters(model: nn.Module) -> ParamReport:
    """Trainable and total parameters (tied weights once; NF4 weights count their elements)."""
    from ..quant.nf4 import NF4Linear

    params = {id(p): p for p in model.parameters()}
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    total = sum(p.numel() for p in params.values())
    total += sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, NF4Linear))
    return ParamReport(trainable, total)


def apply_qlora(model: nn.Module, config: LoRAConfig | None = None, name: str = "default",
                double_quant: bool = True, **kwargs) -> list[str]:
    """QLoRA: store the frozen Linear weights of the blocks in NF4 (embeddings and output head
    stay), then add LoRA in full precision on the targets. A mixture of experts keeps its routers
    in full precision, as `quant.weight_only` does: a rounded router sends tokens to other experts."""
    from ..quant.nf4 import quantize_model_nf4

    quantize_model_nf4(model, double_quant=double_quant)
    return apply_lora(model, config, name, **kwargs)


# --------------------------------------------------------------------------- names, switching
def adapter_names(model: nn.Module) -> dict[str, str]:
    """name -> kind of every adapter the model holds."""
    out = {n: "lora" for n in lora_names(model)}
    out.update({n: "adapter" for n in bottleneck_names(model)})
    vt = getattr(model, "virtual_tokens", None)
    if vt is not None:
        out.update({n: m.kind for n, m in vt.adapters.items()})
    return out


def set_adapter(model: nn.Module, names: str | list[str] | None) -> None:
    """Make these adapters the active ones (None: the bare base model). One virtual-token adapter
    (prefix or prompt) at a time; LoRAs and bottlenecks combine."""
    wanted = [] if names is None else ([names] if isinstance(names, str) else list(names))
    known = adapter_names(model)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise AdapterError(f"no adapter named {unknown[0]!r}: the model has {', '.join(known) or 'none'}")
    set_lora_adapter(model, [n for n in wanted if known[n] == "lora"])
    set_bottleneck(model, tuple(n for n in wanted if known[n] == "adapter"))
    virtual = [n for n in wanted if known[n] in ("prefix", "prompt")]
    if len(virtual) > 1:
        raise AdapterError(f"only one prefix/prompt adapter can be active at a time, got {', '.join(virtual)}")
    vt = getattr(model, "virtual_tokens", None)
    if vt is not None:
        vt.active = virtual[0] if virtual else None


def active_adapters(model: nn.Module) -> list[str]:
    from .lora import lora_layers

    active: dict[str, None] = {}
    for _, layer in lora_layers(model):
        active.update(dict.fromkeys(layer.active))
    for block in model.model.layers:
        active.update(dict.fromkeys(getattr(block, "adapter_active", ())))
    vt = getattr(model, "virtual_tokens", None)
    if vt is not None and vt.active:
        active[vt.active] = None
    return list(active)


@contextlib.contextmanager
def adapter(model: nn.Module, names: str | list[str] | None) -> Iterator[nn.Module]:
    """``with adapter(model, "sql"): ...`` runs with that adapter, then restores the previous ones."""
    before = active_adapters(model)
    set_adapter(model, names)
    try:
        yield model
    finally:
        set_adapter(model, before)


# --------------------------------------------------------------------------------- files
def save_adapter(model: nn.Module, path: str | os.PathLike, name: str = "default",
                 base_model: str | None = None, expert_layout: str = "fused") -> Path:
    """Write adapter `name` to `path`: PEFT's format for LoRA, prefix and prompt tuning, ours
    (documented in `llmkit.peft.bottleneck`) for bottleneck adapters. A mixture of experts' expert
    and router LoRAs are written as transformers 5's PEFT parameter targets, or with
    `expert_layout="per_expert"` under transformers 4's per-expert names (`llmkit.peft.moe`)."""
    kind = adapter_names(model).get(name)
    if kind is None:
        raise AdapterError(f"the model has no adapter named {name!r} to save")
    cfg = model.config
    if kind == "lora":
        tensors, fields = lora_tensors(model, name, expert_layout)
    elif kind == "adapter":
        tensors, fields = bottleneck_tensors(model, name)
    else:
        enc = model.virtual_tokens.adapters[name]
        tensors = {"prompt_embeddings": enc.embedding.weight}
        common = {"task_type": "CAUSAL_LM", "num_virtual_tokens": enc.num_tokens, "num_transformer_submodules": 1,
                  "num_layers": cfg.n_layers, "inference_mode": True}
        if kind == "prefix":
            # PEFT sizes GQA prefixes by the KV heads (token_dim = head_dim · kv_heads)
            fields = {"peft_type": "PREFIX_TUNING", **common, "token_dim": cfg.n_kv_heads * cfg.head_dim,
                      "num_attention_heads": cfg.n_kv_heads, "prefix_projection": False,
                      "encoder_hidden_size": cfg.dim}
        else:
            fields = {"peft_type": "PROMPT_TUNING", **common, "token_dim": cfg.dim,
                      "num_attention_heads": cfg.n_heads, "prompt_tuning_init": "RANDOM"}
    return write_adapter(path, tensors, fields, base_model)


def load_adapter(model: nn.Module, path: str | os.PathLike, name: str = "default") -> str:
    """Attach the adapter at `path` (PEFT or llmkit files) as `name`, active; returns its kind."""
    conf, tensors = read_adapter(path)
    kind = adapter_kind(conf)
    if name in adapter_names(model):
        raise AdapterError(f"the model already has an adapter named {name!r}: load this one under another name")
    source = str(path)
    cfg = model.config
    if kind == "lora":
        load_lora_tensors(model, tensors, conf, name, source)
    elif kind == "adapter":
        load_bottleneck_tensors(model, tensors, conf, name, source)
    else:
        if "prompt_embeddings" not in tensors:
            raise AdapterError(f"{source}: no 'prompt_embeddings' tensor in the adapter file")
        if conf.get("prefix_projection"):
            raise AdapterError(f"{source}: prefix tuning with prefix_projection=true (an MLP reparametrisation) "
                               "is not supported: train it with prefix_projection=false")
        if conf.get("num_transformer_submodules", 1) != 1:
            raise AdapterError(f"{source}: num_transformer_submodules must be 1 for a decoder-only model")
        table = tensors["prompt_embeddings"]
        n = int(conf.get("num_virtual_tokens", table.shape[0]))
        enc = apply_prefix_tuning(model, n, name) if kind == "prefix" else apply_prompt_tuning(model, n, name)
        if tuple(table.shape) != tuple(enc.embedding.weight.shape):
            del model.virtual_tokens.adapters[name]
            model.virtual_tokens.active = None
            raise AdapterError(f"{source}: prompt_embeddings has shape {list(table.shape)} but this model "
                               f"({cfg.n_layers} layers, dim {cfg.dim}, {cfg.n_kv_heads} KV heads) needs "
                               f"{list(enc.embedding.weight.shape)}: the adapter belongs to another model")
        import torch

        with torch.no_grad():
            enc.embedding.weight.copy_(table)
    return kind


def adapter_base(path: str | os.PathLike) -> str | None:
    """The base model an adapter directory names (`base_model_name_or_path`)."""
    conf, _ = read_adapter(path)
    return conf.get("base_model_name_or_path")
