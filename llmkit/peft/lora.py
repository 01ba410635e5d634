"""LoRA (Hu et al. 2021) as module surgery: `apply_lora` swaps matching `nn.Linear`s (or frozen
`NF4Linear`s, for QLoRA) for a `LoRALinear` that computes

    y = W₀x + (α/r)·B·A·x        A: (r, in) random, B: (out, r) zero, so training starts at the base model

The submodule names are PEFT's (``base_layer``, ``lora_A.<adapter>``, ``lora_B.<adapter>``), so a
LoRA'd model's state dict reads like a PEFT model's. One module can hold several named adapters;
`llmkit.peft.set_adapter` picks which ones run (per call, with the `adapter` context manager).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from ..quant.nf4 import NF4Linear

# module names (the last part of the path) that LoRA can target, as llmkit (= HF Llama) names them;
# a mixture of experts adds its router `gate` and Qwen2-MoE's `shared_expert_gate` (`models.moe`)
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "gate",
                "shared_expert_gate")
_EXPERT_INDEX = re.compile(r"\.experts\.\d+\.")


def matches(path: str, target: str) -> bool:
    """PEFT's rule: a target names the modules whose path is it or ends in ``.<target>``. So q_proj
    is every attention's (an encoder-decoder's cross-attention ``encoder_attn.q_proj`` too),
    ``self_attn.q_proj`` self-attention's alone, ``encoder.layers.0.self_attn.q_proj`` one layer's.
    In a mixture of experts gate_proj is every expert's and the shared expert's, ``gate`` the
    router alone (not gate_proj, not shared_expert_gate), ``shared_expert.gate_proj`` the shared
    expert's; one addition to PEFT's rule: the expert number may be left out, so that
    ``experts.gate_proj`` names the routed experts' (``experts.3.gate_proj`` names one)."""
    if path == target or path.endswith("." + target):
        return True
    any_expert = _EXPERT_INDEX.sub(".experts.", f".{path}")
    return any_expert != f".{path}" and any_expert.endswith("." + target)


@dataclass
class LoRAConfig:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # or ["all-linear"]; a name may be qualified by its parents (self_attn.q_proj, encoder_attn.v_proj): `matches`
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # also train the token embeddings (and an untied output head), as PEFT's modules_to_save: needed
    # when the chat template's special tokens were never seen in pretraining
    train_embeddings: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = [t.strip() for t in self.targets.split(",") if t.strip()]
        if self.r < 1:
            raise ValueError(f"lora.r={self.r} must be at least 1")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha={self.alpha} must be positive")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout={self.dropout} must be in [0, 1)")
        unknown = [t for t in self.targets if t.rsplit(".", 1)[-1] not in LINEAR_NAMES and t != "all-linear"]
        if unknown or not self.targets:
            raise ValueError(f"lora.targets={','.join(self.targets) or '(none)'}: "
                             f"{'unknown module name ' + repr(unknown[0]) if unknown else 'name at least one'}; "
                             f"use some of {', '.join(LINEAR_NAMES)} (qualified as self_attn.q_proj or "
                             "encoder_attn.q_proj to pick an attention, experts.gate_proj or shared_expert.gate_proj "
                             "to pick a mixture's experts; gate is its router) or all-linear")

    def target_names(self) -> tuple[str, ...]:
        return LINEAR_NAMES if "all-linear" in self.targets else tuple(self.targets)


class LoRALinear(nn.Module):
    """A frozen base layer plus any number of named low-rank updates."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.lora_A, self.lora_B, self.lora_dropout = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.active: tuple[str, ...] = ()
        self.merged: set[str] = set()

    def add_adapter(self, name: str, r: int, alpha: float, dropout: float = 0.0, scaling: float | None = None) -> None:
        if name in self.lora_A:
            raise ValueError(f"adapter {name!r} already exists on this layer: pick another name")
        p = self.base_layer.weight if isinstance(self.base_layer, nn.Linear) else self.base_layer.absmax
        dtype = p.dtype if p.is_floating_point() else torch.float32
        a = nn.Linear(self.in_features, r, bias=False, device=p.device, dtype=dtype)
        b = nn.Linear(r, self.out_features, bias=False, device=p.device, dtype=dtype)
        nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))  # PEFT's default initialisation
        nn.init.zeros_(b.weight)
        self.lora_A[name], self.lora_B[name] = a, b
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout else nn.Identity()
        self.scaling[name] = scaling if scaling is not None else alpha / r
        self.active = self.active + (name,)

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def delta(self, name: str) -> torch.Tensor:
        """The update (α/r)·B·A as a dense (out, in) matrix."""
        return (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]

    def merge(self, name: str) -> None:
        """Fold an adapter into the base weight (inference: no extra matmuls)."""
        if name in self.merged:
            return
        if not isinstance(self.base_layer, nn.Linear):
            raise ValueError("a LoRA on a quantised (NF4) layer cannot be merged in place: merge it into the "
                             "full-precision base model (llmkit merge --model BASE --adapter DIR)")
        with torch.no_grad():
            self.base_layer.weight += self.delta(name).to(self.base_layer.weight.dtype)
        self.merged.add(name)

    def unmerge(self, name: str) -> None:
        if name not in self.merged:
            return
        with torch.no_grad():
            self.base_layer.weight -= self.delta(name).to(self.base_layer.weight.dtype)
        self.merged.discard(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        for name in self.active:
            if name in self.merged:
                continue
            a, b = self.lora_A[name], self.lora_B[name]
            h = self.lora_dropout[name](x).to(a.weight.dtype)
            # in place: the base output is not needed by the backward pass, and this saves a full
            # (tokens, out) temporary per adapted layer
            y = y.add_(b(a(h)).to(y.dtype), alpha=self.scaling[name])
        return y

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: r={self.lora_A[n].out_features}, scaling={self.scaling[n]:g}" for n in self.lora_A)


def _block_linears(model: nn.Module, names: tuple[str, ...]) -> Iterator[tuple[str, nn.Module, str, nn.Module]]:
    """(path, parent, child name, child) of the Linear-like layers inside the blocks that one of
    `names` `matches` (LoRALinear counts, so that a second adapter lands on the same layer)."""
    for path, module in list(model.named_modules()):
        if ".layers." not in f".{path}.":
            continue
        for child_name, child in list(module.named_children()):
            full = f"{path}.{child_name}"
            if isinstance(child, (nn.Linear, NF4Linear, LoRALinear)) and any(matches(full, n) for n in names):
                yield full, module, child_name, child


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def apply_lora(model: nn.Module, config: LoRAConfig | None = None, name: str = "default", **kwargs) -> list[str]:
    """Add a LoRA adapter called `name` to the targeted layers (kwargs: r, alpha, dropout,
    targets); freeze everything else. Returns the paths of the layers that got it."""
    config = config or LoRAConfig(**kwargs)
    freeze(model)
    paths = []
    for path, parent, child_name, child in _block_linears(model, config.target_names()):
        layer = child if isinstance(child, LoRALinear) else LoRALinear(child)
        layer.add_adapter(name, config.r, config.alpha, config.dropout)
        setattr(parent, child_name, layer)
        paths.append(path)
    if not paths:
        raise ValueError(f"lora.targets={','.join(config.targets)} matched no layer of this model")
    for p in lora_parameters(model, name):
        p.requires_grad_(True)
    if config.train_embeddings:
        for p in embedding_parameters(model):
            p.requires_grad_(True)
        model.lora_trained_embeddings = name  # saved with this adapter
    return paths


def embedding_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The token embedding, and the output head when it is not tied to it."""
    params = [model.model.embed_tokens.weight]
    head = getattr(model, "lm_head", None)  # a classifier has none
    if head is not None and head.weight is not model.model.embed_tokens.weight:
        params.append(head.weight)
    return params


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for path, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield path, module


def lora_parameters(model: nn.Module, name: str = "default") -> list[nn.Parameter]:
    out = []
    for _, layer in lora_layers(model):
        if name in layer.lora_A:
            out += [layer.lora_A[name].weight, layer.lora_B[name].weight]
    return out


def adapter_names(model: nn.Module) -> list[str]:
    names: dict[str, None] = {}
    for _, layer in lora_layers(model):
        names.update(dict.fromkeys(layer.lora_A))
    return list(names)


def set_lora_adapter(model: nn.Module, names: str | list[str] | None) -> None:
    """Run these adapters (None: none, the base model alone)."""
    wanted = () if names is None else ((names,) if isinstance(names, str) else tuple(names))
    for _, layer in lora_layers(model):
        layer.active = tuple(n for n in wanted if n in layer.lora_A)


def merge_lora(model: nn.Module, name: str = "default") -> None:
    for _, layer in lora_layers(model):
        if name in layer.lora_A:
            layer.merge(name)


def unmerge_lora(model: nn.Module, name: str = "default") -> None:
    for _, layer in lora_layers(model):
        layer.unmerge(name)


def merge_and_unload(model: nn.Module, name: str | None = None) -> nn.Module:
    """Fold the active adapters (or `name`) into plain nn.Linear layers and remove the LoRA
    modules: the result is an ordinary Transformer (every NF4 layer, adapted or not, dequantised)."""
    for path, layer in list(lora_layers(model)):
        base = _dense(layer.base_layer) if isinstance(layer.base_layer, NF4Linear) else layer.base_layer
        names = [name] if name else [n for n in layer.active if n not in layer.merged]
        with torch.no_grad():
            for n in names:
                if n not in layer.merged:
                    base.weight += layer.delta(n).to(base.weight.dtype)
        _replace(model, path, base)
    for path, module in list(model.named_modules()):
        if isinstance(module, NF4Linear):  # QLoRA quantises layers that carry no adapter too
            _replace(model, path, _dense(module))
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _dense(nf4: NF4Linear) -> nn.Linear:
    dense = nn.Linear(nf4.in_features, nf4.out_features, bias=nf4.bias is not None, device=nf4.codes.device)
    with torch.no_grad():
        dense.weight.copy_(nf4.weight)
        if nf4.bias is not None:
            dense.bias.copy_(nf4.bias)
    return dense


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_path), child, module)
