"""LoRA on a mixture of experts (Mixtral, Qwen2-MoE) in PEFT's files.

In llmkit every expert is an `MLP` of Linears (``mlp.experts.3.gate_proj``) and the router is a
Linear (``mlp.gate``), so `apply_lora` reaches them by module surgery. transformers 5 holds the
experts fused instead, as 3-D parameters (``mlp.experts.gate_up_proj`` (E, 2·I, D), gate rows
first; ``mlp.experts.down_proj`` (E, D, I)), and the router as a module with a ``weight``
parameter. PEFT (0.21) adapts those with ``target_parameters`` (its ``ParamWrapper``), which adds
one independent rank-r update to each expert's matrix:

    lora_A (E·r, in)    expert e's A is rows e·r … e·r+r-1
    lora_B (out, r·E)   expert e's B is columns e, E+e, 2E+e, …  (B.reshape(out, r, E)[:, :, e])
    ΔW_e = (α/r) · B_e A_e,  with r from rank_pattern for the parameter (the rank per expert)

Several parameters of one module nest: the first in registration order is innermost, so with
both targeted gate_up_proj is saved as ``experts.base_layer.lora_A.weight`` and down_proj as
``experts.lora_A.weight``. The router's update is an ordinary (r, D) / (E, r) pair under
``mlp.gate.lora_A.weight``, as a Linear's is.

Our per-expert LoRAs map onto this exactly: down_proj directly; gate_proj and up_proj of an
expert as one update of rank r_gate + r_up on the fused matrix, A stacked and B block-diagonal
(an expert or a projection without a LoRA contributes zero blocks). Read back, a fused update
gives gate_proj and up_proj each its rows of B and the shared A, less the rank columns whose B
block is zero, so a round trip keeps every rank.

``expert_layout="per_expert"`` writes transformers 4's names instead (Mixtral:
``block_sparse_moe.experts.N.w1/w3/w2`` and ``block_sparse_moe.gate``; Qwen2-MoE: ours), which
PEFT reads on transformers 4 models. On transformers 5, PEFT 0.21 converts that layout on load
for Mixtral (only with w1 and w3 targeted together, and lora_dropout 0) but not for Qwen2-MoE, whose expert LoRAs
it then leaves out without an error: the fused layout is the default for that reason.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from .lora import LoRALinear
from .names import PREFIX, AdapterError, pattern_value

EXPERT_LAYOUTS = ("fused", "per_expert")
_EXPERT = re.compile(r"(model\.layers\.\d+\.mlp)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)$")
_ROUTER = re.compile(r"(model\.layers\.\d+\.mlp)\.gate$")
# a fused expert LoRA tensor as PEFT saves it (any depth of nesting)
_FUSED_KEY = re.compile(rf"{re.escape(PREFIX)}(model\.layers\.\d+\.mlp)\.experts((?:\.base_layer)*)\.(lora_A|lora_B)"
                        r"(?:\.[^.]+)?\.weight")
FUSED = {"gate_up_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)}  # registration order


def check_layout(layout: str) -> None:
    if layout not in EXPERT_LAYOUTS:
        raise AdapterError(f"expert_layout={layout!r}: use 'fused' (transformers 5's PEFT target_parameters) or "
                           "'per_expert' (transformers 4's per-expert module names)")


def param_targeted(conf: dict[str, Any], key: str) -> bool:
    """PEFT's rule for ``target_parameters``: an entry names the parameters whose full name is it
    or ends in ``.<entry>``."""
    return any(key == t or key.endswith("." + t) for t in conf.get("target_parameters") or [])


def is_expert_or_router(path: str) -> bool:
    """Whether our module path is an expert's projection or a router (`fused_lora_tensors` writes those)."""
    return bool(_EXPERT.match(path) or _ROUTER.match(path))


def per_expert_name(path: str, model: nn.Module) -> str:
    """Our module path -> transformers 4's (Mixtral's ``block_sparse_moe.experts.N.w1``, …)."""
    from ..models.hf_moe import experts_to_hf

    return next(iter(experts_to_hf({f"{path}.weight": None}, model.config))).removesuffix(".weight")


def moe_parameter_keys(model: nn.Module) -> list[str]:
    """transformers 5's names of every MoE layer's fused expert and router parameters."""
    mlps = sorted({m.group(1) for path, _ in model.named_modules() if (m := _ROUTER.match(path))})
    return [f"{mlp}.{p}" for mlp in mlps for p in ("experts.gate_up_proj", "experts.down_proj", "gate.weight")]


# ------------------------------------------------------------------------------------ writing
def fused_lora_tensors(model: nn.Module, layers: dict[str, LoRALinear], name: str
                       ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, float]], set[str]]:
    """The expert and router LoRAs among `layers` (our path -> layer) as PEFT's parameter-target
    tensors. Returns the tensors, each adapted parameter's transformers 5 name -> (rank per
    expert, alpha), and the paths of the layers written."""
    cfg = model.config
    experts: dict[str, dict[str, dict[int, LoRALinear]]] = {}  # mlp path -> projection -> expert -> layer
    tensors: dict[str, torch.Tensor] = {}
    params: dict[str, tuple[int, float]] = {}
    done: set[str] = set()
    for path, layer in layers.items():
        if m := _EXPERT.match(path):
            experts.setdefault(m.group(1), {}).setdefault(m.group(3), {})[int(m.group(2))] = layer
            done.add(path)
        elif _ROUTER.match(path):  # a Linear's update as it is, the parameter being its weight
            a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
            tensors[f"{PREFIX}{path}.lora_A.weight"], tensors[f"{PREFIX}{path}.lora_B.weight"] = a, b
            params[f"{path}.weight"] = (a.shape[0], layer.scaling[name] * a.shape[0])
            done.add(path)
    widths = {"gate_proj": cfg.expert_hidden_dim, "up_proj": cfg.expert_hidden_dim, "down_proj": cfg.dim}
    for mlp, projections in experts.items():
        present = [p for p, parts in FUSED.items() if any(part in projections for part in parts)]
        for depth, param in enumerate(present):  # the first targeted is innermost: `base_layer` once per outer one
            module = f"{PREFIX}{mlp}.experts" + ".base_layer" * (len(present) - 1 - depth)
            a, b, r, scale = _fuse(projections, FUSED[param], widths, cfg.n_experts, name)
            tensors[f"{module}.lora_A.weight"], tensors[f"{module}.lora_B.weight"] = a, b
            params[f"{mlp}.experts.{param}"] = (r, scale * r)
    return tensors, params, done


def _fuse(projections: dict[str, dict[int, LoRALinear]], parts: tuple[str, ...], widths: dict[str, int],
          n_experts: int, name: str) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """One fused parameter's (A, B, rank per expert, scaling) from the LoRAs of its parts."""
    found = [layer for part in parts for layer in projections.get(part, {}).values()]
    scale = found[0].scaling[name]  # one scaling for the fused update: differences go into B
    like = found[0].lora_A[name].weight
    rank = max(sum(projections[p][e].lora_A[name].weight.shape[0] for p in parts if e in projections.get(p, {}))
               for e in range(n_experts))
    in_features = found[0].in_features
    out = sum(widths[p] for p in parts)
    a = torch.zeros(n_experts, rank, in_features, dtype=like.dtype, device=like.device)
    b = torch.zeros(out, rank, n_experts, dtype=like.dtype, device=like.device)
    for e in range(n_experts):
        col, row = 0, 0
        for part in parts:
            layer = projections.get(part, {}).get(e)
            if layer is not None:
                la, lb = layer.lora_A[name].weight, layer.lora_B[name].weight * (layer.scaling[name] / scale)
                a[e, col:col + la.shape[0]] = la
                b[row:row + widths[part], col:col + la.shape[0], e] = lb
                col += la.shape[0]
            row += widths[part]
    return a.reshape(n_experts * rank, in_features), b.reshape(out, rank * n_experts), rank, scale


def parameter_targets(params: dict[str, tuple[int, float]], model: nn.Module) -> dict[str, str]:
    """PEFT's ``target_parameters`` entry for each adapted parameter: ``experts.gate_up_proj``,
    ``experts.down_proj`` or ``mlp.gate.weight`` where every layer has it in one (rank, alpha), the
    layer's own (``layers.0.mlp.experts.down_proj``) where not. These match no other parameter of
    the transformers model (a bare ``weight`` would catch every Linear's)."""
    every = moe_parameter_keys(model)
    names = {}
    for key in params:
        kind = key.split(".mlp.", 1)[1]
        same = [k for k in every if k.endswith("." + kind)]
        shared = all(k in params and params[k] == params[key] for k in same)
        names[key] = ("mlp." + kind if kind == "gate.weight" else kind) if shared else key.removeprefix("model.")
    return names


# ------------------------------------------------------------------------------------ reading
def pop_fused_tensors(tensors: dict[str, torch.Tensor]) -> dict[tuple[str, str], dict[str, torch.Tensor]]:
    """Take PEFT's fused expert LoRA tensors out of `tensors`: (mlp path, nesting) -> lora_A/B."""
    found: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key in list(tensors):
        if m := _FUSED_KEY.fullmatch(key):
            found.setdefault((m.group(1), m.group(2)), {})[m.group(3)] = tensors.pop(key)
    return found


def attach_fused_lora(model: nn.Module, found: dict[tuple[str, str], dict[str, torch.Tensor]],
                      conf: dict[str, Any], name: str, source: str, scaling_of) -> list[str]:
    """Give each expert's gate/up/down Linear its part of the fused updates in `found`; returns
    the paths adapted. `scaling_of(param_key, rank)` reads alpha (and rank) patterns."""
    cfg = model.config
    if not cfg.is_moe:
        raise AdapterError(f"{source}: the adapter holds fused expert LoRAs (mlp.experts) but the model "
                           f"({cfg.family}) has no experts")
    E, D, I = cfg.n_experts, cfg.dim, cfg.expert_hidden_dim
    shapes = {(D, 2 * I): "gate_up_proj", (I, D): "down_proj"}  # (in, out): never both, as I > 0
    attached = []
    for (mlp, nesting), ab in sorted(found.items()):
        module = f"{mlp}.experts{nesting}"
        if set(ab) != {"lora_A", "lora_B"}:
            raise AdapterError(f"{source}: {module} has {', '.join(ab)} but not both lora_A and lora_B")
        a, b = ab["lora_A"], ab["lora_B"]
        param = shapes.get((a.shape[1], b.shape[0]))
        if param is None or a.shape[0] != b.shape[1] or a.shape[0] % E:
            raise AdapterError(f"{source}: {module} has lora_A {list(a.shape)} and lora_B {list(b.shape)}, which fit "
                               f"neither experts.gate_up_proj (in {D}, out {2 * I}) nor experts.down_proj (in {I}, "
                               f"out {D}) of {E} experts: the adapter belongs to another model")
        r = a.shape[0] // E
        stated = pattern_value(conf.get("rank_pattern"), f"{mlp}.experts.{param}", conf.get("r"))
        if stated and a.shape[0] != stated * E:  # the rows divide by E, but into another count of experts
            raise AdapterError(f"{source}: {module} has {a.shape[0]} rows of lora_A, which at rank {stated} are "
                               f"{a.shape[0] / stated:g} experts' updates, but the model has {E} experts")
        scaling = scaling_of(f"{mlp}.experts.{param}", r)
        a_e, b_e = a.reshape(E, r, -1), b.reshape(b.shape[0], r, E)
        parts = FUSED[param]
        rows = b_e.split(b.shape[0] // len(parts), dim=0)
        untrained = not b.any()  # fresh (B = 0): no zero block tells the parts apart, so each gets all of A
        for part, b_part in zip(parts, rows):
            for e in range(E):
                keep = torch.ones(r, dtype=torch.bool) if untrained else b_part[:, :, e].ne(0).any(dim=0)
                if not keep.any():
                    continue  # this expert's projection has no update of its own
                path = f"{mlp}.experts.{e}.{part}"
                _attach(model, path, a_e[e][keep], b_part[:, keep, e], scaling, conf, name)
                attached.append(path)
    return attached


def _attach(model: nn.Module, path: str, a: torch.Tensor, b: torch.Tensor, scaling: float, conf: dict[str, Any],
            name: str) -> None:
    layer = model.get_submodule(path)
    if not isinstance(layer, LoRALinear):
        parent, _, child = path.rpartition(".")
        layer = LoRALinear(layer)
        setattr(model.get_submodule(parent), child, layer)
    r = a.shape[0]
    layer.add_adapter(name, r, scaling * r, conf.get("lora_dropout", 0.0) or 0.0, scaling=scaling)
    with torch.no_grad():
        layer.lora_A[name].weight.copy_(a)
        layer.lora_B[name].weight.copy_(b)
