"""Bottleneck adapters (Houlsby et al. 2019): a small MLP after the attention and the MLP sublayer
of every block, added to the sublayer's output before the residual sum,

    h = f(x);  h = h + up(act(down(h)))        up initialised to zero: training starts at the base model

They are attached with forward hooks, so module paths (and with them LoRA and HF key names) stay
as they are. PEFT has no such adapter, so its files are ours, in PEFT's two-file layout:

    adapter_config.json        {"peft_type": "LLMKIT_BOTTLENECK", "bottleneck": 64, "activation": "gelu",
                                "placement": ["attn", "mlp"], "base_model_name_or_path": ...}
    adapter_model.safetensors  model.layers.<i>.<attn|mlp>_adapter.{down,up}.{weight,bias}
                               down: (bottleneck, dim), up: (dim, bottleneck)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.layers import activation_fn

PLACEMENTS = ("attn", "mlp")


class Bottleneck(nn.Module):
    def __init__(self, dim: int, size: int, activation: str = "gelu"):
        super().__init__()
        self.down = nn.Linear(dim, size)
        self.up = nn.Linear(size, dim)
        self.activation = activation
        self.act = activation_fn(activation)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(h.to(self.down.weight.dtype)))).to(h.dtype)


def _hook(block: nn.Module, where: str):
    def hook(_module, _inputs, output):
        adapters = getattr(block, f"{where}_adapter")
        for name in block.adapter_active:
            if name in adapters:
                output = output + adapters[name](output)
        return output
    return hook


def _blocks(model: nn.Module) -> list[nn.Module]:
    return list(model.model.layers)


def apply_bottleneck(model: nn.Module, size: int = 64, activation: str = "gelu", name: str = "default",
                     placement: tuple[str, ...] = PLACEMENTS) -> list[Bottleneck]:
    """Add a bottleneck adapter of width `size` to every block and freeze the model."""
    from .lora import freeze

    if size < 1:
        raise ValueError(f"adapter.size={size} must be at least 1")
    bad = [p for p in placement if p not in PLACEMENTS]
    if bad or not placement:
        raise ValueError(f"adapter.placement={list(placement)}: use attn, mlp or both")
    freeze(model)
    made = []
    dim, device = model.config.dim, model.device
    for block in _blocks(model):
        for where in PLACEMENTS:
            attr = f"{where}_adapter"
            if not hasattr(block, attr):
                setattr(block, attr, nn.ModuleDict())
                block.adapter_active = ()
                sub = block.self_attn if where == "attn" else block.mlp
                sub.register_forward_hook(_hook(block, where))
            if where in placement:
                if name in getattr(block, attr):
                    raise ValueError(f"adapter {name!r} already exists: pick another name")
                adapter = Bottleneck(dim, size, activation).to(device)
                getattr(block, attr)[name] = adapter
                made.append(adapter)
        block.adapter_active = tuple(dict.fromkeys(block.adapter_active + (name,)))
    return made


def bottleneck_names(model: nn.Module) -> list[str]:
    names: dict[str, None] = {}
    for block in _blocks(model):
        for where in PLACEMENTS:
            names.update(dict.fromkeys(getattr(block, f"{where}_adapter", {})))
    return list(names)


def set_bottleneck(model: nn.Module, names: tuple[str, ...]) -> None:
    for block in _blocks(model):
        if hasattr(block, "adapter_active"):
            block.adapter_active = tuple(n for n in names if n in block.attn_adapter or n in block.mlp_adapter)


def bottleneck_tensors(model: nn.Module, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, size, activation, placement = {}, None, None, []
    for i, block in enumerate(_blocks(model)):
        for where in PLACEMENTS:
            adapters = getattr(block, f"{where}_adapter", {})
            if name not in adapters:
                continue
            a = adapters[name]
            size, activation = a.down.out_features, a.activation
            if where not in placement:
                placement.append(where)
            for part in ("down", "up"):
                for kind in ("weight", "bias"):
                    tensors[f"model.layers.{i}.{where}_adapter.{part}.{kind}"] = getattr(getattr(a, part), kind)
    if not tensors:
        raise ValueError(f"the model has no bottleneck adapter named {name!r}")
    return tensors, {"peft_type": "LLMKIT_BOTTLENECK", "bottleneck": size, "activation": activation,
                     "placement": placement, "format_version": 1}


def load_bottleneck_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], conf: dict[str, Any], name: str,
                            source: str) -> None:
    from .files import AdapterError

    size, placement = conf.get("bottleneck"), tuple(conf.get("placement") or PLACEMENTS)
    if not isinstance(size, int) or size < 1:
        raise AdapterError(f"{source}: 'bottleneck' in adapter_config.json must be a positive integer, got {size!r}")
    apply_bottleneck(model, size, conf.get("activation", "gelu"), name, placement)
    expected = set(bottleneck_tensors(model, name)[0])
    missing, extra = expected - set(tensors), set(tensors) - expected
    if missing or extra:
        raise AdapterError(f"{source}: tensors do not fit this model: missing {sorted(missing)[:3]}, unexpected "
                           f"{sorted(extra)[:3]} (is it an adapter of another model?)")
    for i, block in enumerate(_blocks(model)):
        for where in placement:
            a = getattr(block, f"{where}_adapter")[name]
            for part in ("down", "up"):
                for kind in ("weight", "bias"):
                    t = tensors[f"model.layers.{i}.{where}_adapter.{part}.{kind}"]
                    p = getattr(getattr(a, part), kind)
                    if t.shape != p.shape:
                        raise AdapterError(f"{source}: model.layers.{i}.{where}_adapter.{part}.{kind} has shape "
                                           f"{list(t.shape)}, the model needs {list(p.shape)}")
                    with torch.no_grad():
                        p.copy_(t)
