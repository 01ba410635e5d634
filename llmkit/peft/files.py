"""Adapter files. LoRA, prefix tuning and prompt tuning are written in PEFT's format, so that
``peft.PeftModel.from_pretrained(hf_model, DIR)`` loads them, and PEFT's own files load here:

    DIR/adapter_config.json          peft_type, r / lora_alpha / target_modules, …
    DIR/adapter_model.safetensors    LoRA: base_model.model.<HF module path>.lora_A.weight (r, in)
                                                                          .lora_B.weight (out, r)
                                     prefix / prompt tuning: prompt_embeddings

Module paths are Hugging Face's (`llmkit.peft.names`): for Llama, Mistral and Qwen2 they are ours;
GPT-2, BERT and T5 are renamed. A PEFT LoRA on GPT-2's fused ``c_attn`` (A: r×in, B: 3d×r) becomes three
LoRAs sharing A (B split by rows); our q/k/v LoRAs go out as one block-diagonal ``c_attn`` LoRA of
rank (number of targets)·r. A classifier's adapter carries its head (and BERT's pooler) in full, as
PEFT's ``modules_to_save`` of a SEQ_CLS / TOKEN_CLS model does.

Bottleneck adapters, which PEFT lacks, use the same two files with ``peft_type: LLMKIT_BOTTLENECK``
(see `llmkit.peft.bottleneck` for the keys).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..utils import atomic_path, write_json_atomic
from .lora import LoRALinear, freeze, lora_layers
from .moe import (attach_fused_lora, check_layout, fused_lora_tensors, is_expert_or_router, moe_parameter_keys,
                  param_targeted, parameter_targets, per_expert_name, pop_fused_tensors)
from .names import (PREFIX, QKV, AdapterError, classifier_head, hf_module, linear_modules, our_modules,
                    pattern_value, target_names)

log = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def _config(model: nn.Module):
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise AdapterError("the model has no config: give a llmkit Transformer")
    return cfg


# ------------------------------------------------------------------------------------- LoRA
def lora_tensors(model: nn.Module, name: str = "default",
                 expert_layout: str = "fused") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The adapter `name` as PEFT tensors and the adapter_config fields that describe them. A
    mixture of experts' expert and router LoRAs go out as transformers 5's parameter targets
    (`expert_layout="fused"`) or under transformers 4's per-expert names ("per_expert"): see
    `llmkit.peft.moe`."""
    cfg = _config(model)
    check_layout(expert_layout)
    layers = {path: layer for path, layer in lora_layers(model) if name in layer.lora_A}
    if not layers:
        raise AdapterError(f"the model has no LoRA adapter named {name!r}")
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    params: dict[str, tuple[int, float]] = {}  # transformers 5 parameter name -> (rank, alpha)
    written: set[str] = set()
    fused: dict[str, list[tuple[int, LoRALinear]]] = {}
    as_params = cfg.is_moe and expert_layout == "fused"
    per_expert = cfg.is_moe and not as_params
    if as_params:
        tensors, params, written = fused_lora_tensors(model, layers, name)
    elif per_expert and cfg.family == "qwen2_moe" and any(is_expert_or_router(p) for p in layers):
        log.warning("Qwen2-MoE expert and router LoRAs in transformers 4's per-expert layout: PEFT reads them on "
                    "transformers 4 models, but PEFT 0.21 on transformers 5 leaves them out (save with "
                    "expert_layout='fused' for that)")
    for path, layer in layers.items():
        if path in written:
            continue
        hf = per_expert_name(hf_module(path, model), model) if per_expert else hf_module(path, model)
        if cfg.family == "gpt2" and hf.endswith("attn.c_attn"):
            fused.setdefault(hf, []).append((QKV.index(path.rsplit(".", 1)[1]), layer))
            continue
        a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
        tensors[f"{PREFIX}{hf}.lora_A.weight"], tensors[f"{PREFIX}{hf}.lora_B.weight"] = a, b
        ranks[hf], alphas[hf] = a.shape[0], layer.scaling[name] * a.shape[0]
    sizes = [cfg.q_dim, cfg.kv_dim, cfg.kv_dim]
    for hf, parts in fused.items():
        parts.sort(key=lambda p: p[0])
        scale = parts[0][1].scaling[name]
        a_rows, blocks, rank = [], [], 0
        for j, layer in parts:
            # a common scaling for the fused block: fold any difference into B
            a, b = layer.lora_A[name].weight, layer.lora_B[name].weight * (layer.scaling[name] / scale)
            a_rows.append(a)
            blocks.append((j, b))
            rank += a.shape[0]
        a_full = torch.cat(a_rows, dim=0)
        b_full = torch.zeros(sum(sizes), rank, dtype=a_full.dtype, device=a_full.device)
        col = 0
        for j, b in blocks:
            row = sum(sizes[:j])
            b_full[row:row + sizes[j], col:col + b.shape[1]] = b
            col += b.shape[1]
        tensors[f"{PREFIX}{hf}.lora_A.weight"], tensors[f"{PREFIX}{hf}.lora_B.weight"] = a_full, b_full
        ranks[hf], alphas[hf] = rank, scale * rank
    # the most common (r, alpha) is the global one; the rest go to rank_pattern / alpha_pattern
    pairs = [(ranks[k], alphas[k]) for k in ranks] + list(params.values())
    r, alpha = max(set(pairs), key=pairs.count)
    universe = linear_modules(model)  # what PEFT's matching sees in the transformers model
    if as_params:
        # PEFT >= 0.22 also reads a target as transformers 4's per-expert name and moves it onto the fused
        # parameter, so a bare "up_proj" meant for a shared expert would catch the experts' gate_up_proj too
        moe = {m for m in universe if is_expert_or_router(m)}
        universe = (universe - moe) | set(moe_parameter_keys(model)) | {per_expert_name(m, model) for m in moe}
    elif per_expert:
        universe = {per_expert_name(m, model) for m in universe}
    groups = {**{k: (ranks[k], alphas[k]) for k in ranks}, **params}
    short = target_names(groups, universe)
    targets = sorted({short[k] for k in ranks})
    short.update(parameter_targets(params, model))
    rank_pattern = {short[k]: g[0] for k, g in groups.items() if g[0] != r}
    alpha_pattern = {short[k]: g[1] for k, g in groups.items() if g[1] != alpha}
    modules_to_save, head_params = classifier_head(model)
    tensors.update({f"{PREFIX}{k}": p for k, p in head_params.items()})
    modules_to_save = modules_to_save or None
    embeddings = getattr(model, "lora_trained_embeddings", None) == name
    if embeddings:
        if head_params:
            raise AdapterError("a classifier's LoRA that also trains the token embeddings cannot be saved in PEFT's "
                               "format: merge it (merge_and_unload) and save the classifier")
        emb, head = _embedding_keys(cfg)
        tensors[f"{PREFIX}{emb}.weight"] = model.model.embed_tokens.weight
        # the head too: PEFT writes it beside a tied embedding (ensure_weight_tying) and needs it
        tensors[f"{PREFIX}{head}.weight"] = model.lm_head.weight.detach().clone()
        modules_to_save = [emb.rsplit(".", 1)[-1]] + ([] if cfg.tie_embeddings else [head])
    dropout = float(getattr(next(iter(layers.values())).lora_dropout[name], "p", 0.0))
    if params and dropout:  # PEFT's ParamWrapper refuses dropout; it only regularises training
        log.warning("lora_dropout=%s is written as 0: PEFT refuses dropout on parameter targets (the experts "
                    "and router); the weights are unaffected", dropout)
        dropout = 0.0
    fields = {
        "peft_type": "LORA", "task_type": _task_type(model), "r": int(r), "lora_alpha": float(alpha),
        "target_modules": targets, "lora_dropout": dropout, "bias": "none",
        "fan_in_fan_out": cfg.family == "gpt2", "use_rslora": False, "use_dora": False,
        "modules_to_save": modules_to_save, "ensure_weight_tying": embeddings and cfg.tie_embeddings,
        "init_lora_weights": True, "layers_to_transform": None,
        "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern, "inference_mode": True,
    }
    if params:
        fields["target_parameters"] = sorted({short[k] for k in params})
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, fields


def _task_type(model: nn.Module) -> str | None:
    """PEFT's task type, which picks the PeftModel class that wraps the transformers model: a
    classifier's; a bare BERT body (BertModel) is a feature extractor; PEFT has no masked-LM type
    (None: the plain PeftModel, which passes every input through); an encoder-decoder (T5) is
    SEQ_2_SEQ_LM."""
    if classifier_head(model)[0]:
        return "TOKEN_CLS" if model.per_token else "SEQ_CLS"
    if model.config.is_seq2seq:
        return "SEQ_2_SEQ_LM"
    if model.config.family == "bert":
        return None if model.config.head == "lm" else "FEATURE_EXTRACTION"
    return "CAUSAL_LM"


def _embedding_keys(cfg) -> tuple[str, str]:
    """HF module paths of the token embedding and the output head."""
    if cfg.family == "bert":  # its MLM decoder shares a bias with the head: not written as PEFT would
        raise AdapterError("a LoRA that trains BERT's token embeddings (train_embeddings, PEFT's modules_to_save) "
                           "cannot be saved or loaded yet: train the LoRA alone, or fine-tune in full")
    if cfg.is_seq2seq:  # T5's `shared` is its encoder's and decoder's embed_tokens too: not mapped yet
        raise AdapterError("a LoRA that trains an encoder-decoder's token embeddings (train_embeddings, PEFT's "
                           "modules_to_save) cannot be saved or loaded yet: train the LoRA alone, or fine-tune in full")
    return ("transformer.wte", "lm_head") if cfg.family == "gpt2" else ("model.embed_tokens", "lm_head")


def _load_embeddings(model: nn.Module, tensors: dict[str, torch.Tensor], source: str, name: str) -> None:
    """Copy an adapter's trained embedding (and untied head) into the model (PEFT's modules_to_save)."""
    from .lora import adapter_names

    cfg = _config(model)
    emb, head = _embedding_keys(cfg)
    if adapter_names(model):
        raise AdapterError(f"{source} trains the token embeddings (modules_to_save), which would change them for "
                           "every adapter on this model: load it alone, or merge it first")
    targets = {f"{PREFIX}{emb}.weight": model.model.embed_tokens.weight, f"{PREFIX}{head}.weight": model.lm_head.weight}
    for key, param in targets.items():
        if key in tensors:
            t = tensors.pop(key)
            if t.shape != param.shape:
                raise AdapterError(f"{source}: {key} has shape {list(t.shape)}, the model's is {list(param.shape)}")
            with torch.no_grad():
                param.copy_(t)
    model.lora_trained_embeddings = name


def _load_head(params: dict[str, nn.Parameter], tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy a classifier adapter's head tensors (HF name -> our parameter) out of `tensors`."""
    for key, param in params.items():
        t = tensors.pop(f"{PREFIX}{key}", None)
        if t is None:  # an adapter without a head (made on the bare body) leaves the classifier's own
            continue
        if t.shape != param.shape:
            raise AdapterError(f"{source}: {key} has shape {list(t.shape)} but this classifier's is "
                               f"{list(param.shape)}: the adapter was trained for another set of labels")
        with torch.no_grad():
            param.copy_(t)


def _scaling(conf: dict[str, Any], hf_path: str, r: int) -> float:
    alpha = pattern_value(conf.get("alpha_pattern"), hf_path, conf.get("lora_alpha", 8))
    return alpha / (r ** 0.5) if conf.get("use_rslora") else alpha / r


def load_lora_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], conf: dict[str, Any], name: str,
                      source: str) -> list[str]:
    """Attach PEFT LoRA tensors to `model` as adapter `name`; returns our module paths."""
    from .lora import LoRALinear

    cfg = _config(model)
    if conf.get("use_dora"):
        raise AdapterError(f"{source}: DoRA adapters are not supported by llmkit yet (use_dora in {CONFIG_FILE})")
    tensors = dict(tensors)
    # PEFT >= 0.22 lists its default task-head names (DistilBERT's pre_classifier) whether or not the model has
    # them; a name with no tensors in the file saved nothing
    kept = [m for m in conf.get("modules_to_save") or [] if any(f".{m}." in f".{k}" for k in tensors)]
    head_names, head_params = classifier_head(model)
    if head_names:  # a classifier's adapter brings its head in full
        unknown = [m for m in kept if m not in ("classifier", "score", "pooler")]
        if unknown:
            raise AdapterError(f"{source}: modules_to_save {unknown} are not supported on a classifier (only its "
                               "head and pooler)")
        _load_head(head_params, tensors, source)
    elif kept:
        emb, head = _embedding_keys(cfg)
        saved = [m for m in kept if not (emb.endswith(m) or m in (emb, head))]
        if saved:
            raise AdapterError(f"{source}: modules_to_save {saved} are not supported (only the token embedding "
                               "and output head)")
        _load_embeddings(model, tensors, source, name)
    if conf.get("bias", "none") != "none":
        raise AdapterError(f"{source}: bias={conf['bias']!r} LoRA adapters are not supported (only bias='none')")
    experts = pop_fused_tensors(tensors)  # transformers 5's fused experts (PEFT's target_parameters)
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = re.fullmatch(r"(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight", key)
        if not m:
            raise AdapterError(f"{source}: tensor {key} is not a LoRA A/B matrix (embedding LoRA, DoRA "
                               "magnitudes and biases are not supported)")
        modules.setdefault(m.group(1), {})[m.group(2)] = t
    freeze(model)
    attached = attach_fused_lora(model, experts, conf, name, source, lambda key, r: _scaling(conf, key, r)) \
        if experts else []
    for hf_path, ab in sorted(modules.items()):
        if set(ab) != {"lora_A", "lora_B"}:
            raise AdapterError(f"{source}: module {hf_path} has {', '.join(ab)} but not both lora_A and lora_B")
        a, b = ab["lora_A"], ab["lora_B"]
        r = a.shape[0]
        if b.shape[1] != r:
            raise AdapterError(f"{source}: {hf_path} has lora_A {list(a.shape)} and lora_B {list(b.shape)}: "
                               "their ranks differ")
        bare = hf_path.removeprefix(PREFIX)
        # a router targeted as a parameter (transformers 5) takes its patterns by the parameter's name
        scaling = _scaling(conf, f"{bare}.weight" if param_targeted(conf, f"{bare}.weight") else bare, r)
        ours = our_modules(hf_path, model)
        if len(ours) == 3:
            sizes = [cfg.q_dim, cfg.kv_dim, cfg.kv_dim]
            if b.shape[0] != sum(sizes):
                raise AdapterError(f"{source}: {hf_path}.lora_B has {b.shape[0]} rows but c_attn has {sum(sizes)}")
            b_parts = b.split(sizes, dim=0)
        else:
            b_parts = (b,)
        for path, b_part in zip(ours, b_parts):
            try:
                layer = model.get_submodule(path)
            except AttributeError:
                raise AdapterError(f"{source}: the model has no module {path} (adapter module {hf_path}): "
                                   "the adapter belongs to another architecture") from None
            if not isinstance(layer, LoRALinear):
                parent, _, child = path.rpartition(".")
                layer = LoRALinear(layer)
                setattr(model.get_submodule(parent), child, layer)
            if a.shape[1] != layer.in_features or b_part.shape[0] != layer.out_features:
                raise AdapterError(f"{source}: {hf_path} maps (in {a.shape[1]}, out {b_part.shape[0]}) but the "
                                   f"model's {path} is (in {layer.in_features}, out {layer.out_features})")
            layer.add_adapter(name, r, scaling * r, conf.get("lora_dropout", 0.0) or 0.0, scaling=scaling)
            with torch.no_grad():
                layer.lora_A[name].weight.copy_(a)
                layer.lora_B[name].weight.copy_(b_part)
            attached.append(path)
    return attached


# -------------------------------------------------------------------------------- save/load
def write_adapter(path: str | os.PathLike, tensors: dict[str, torch.Tensor], fields: dict[str, Any],
                  base_model: str | None = None) -> Path:
    """Write adapter_config.json + adapter_model.safetensors atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / WEIGHTS_FILE) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"format": "pt"})
    write_json_atomic(path / CONFIG_FILE, {**fields, "base_model_name_or_path": base_model,
                                           "revision": None})
    return path


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    path = Path(path)
    conf_file, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not conf_file.is_file():
        hint = " (PEFT's pickled adapter_model.bin is not read: re-save it with safetensors)" \
            if (path / "adapter_model.bin").exists() else ""
        raise AdapterError(f"{path} is not an adapter directory: no {CONFIG_FILE}{hint}")
    try:
        conf = json.loads(conf_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AdapterError(f"{conf_file}: not JSON ({e.msg}, line {e.lineno})") from None
    if not weights.is_file():
        raise AdapterError(f"{path}: no {WEIGHTS_FILE} beside {CONFIG_FILE}")
    try:
        with safe_open(str(weights), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"{weights}: cannot read it ({e}); the file is damaged or truncated") from None
    return conf, tensors


def adapter_kind(conf: dict[str, Any]) -> str:
    kind = str(conf.get("peft_type", "")).upper()
    kinds = {"LORA": "lora", "PREFIX_TUNING": "prefix", "PROMPT_TUNING": "prompt", "LLMKIT_BOTTLENECK": "adapter"}
    if kind not in kinds:
        raise AdapterError(f"peft_type {conf.get('peft_type')!r} is not supported: llmkit reads "
                           f"{', '.join(kinds)}")
    return kinds[kind]
