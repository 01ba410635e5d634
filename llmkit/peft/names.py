"""Hugging Face's names for llmkit's modules, as PEFT adapter files carry them.

PEFT names a LoRA by the module's path inside the transformers model it wraps
(``base_model.model.<path>.lora_A.weight``) and chooses modules by ``target_modules``: an entry
matches a path equal to it or ending in ``.<entry>``. llmkit's paths are Llama's; other families
are renamed here, so that a LoRA targeted our way (q_proj, v_proj, …) is saved and read their way:

- GPT-2: q/k/v -> ``transformer.h.N.attn.c_attn`` (fused; `llmkit.peft.files` splits and joins the
  LoRA), o -> ``attn.c_proj``, up -> ``mlp.c_fc``, down -> ``mlp.c_proj``.
- BERT, through the one key map of `llmkit.models.hf`: q/k/v -> ``encoder.layer.N.attention.self.
  query|key|value``, o -> ``attention.output.dense``, up -> ``intermediate.dense``, down ->
  ``output.dense``; a classifier's head is ``classifier``. transformers keeps the body under
  ``bert.`` in its task models (BertForMaskedLM, BertFor…Classification) but not in ``BertModel``,
  so the prefix follows the class llmkit saves the model as; both are read.
- T5, through the same key map: ``encoder.layers.N.self_attn.q_proj`` -> ``encoder.block.N.layer.0.
  SelfAttention.q``, the decoder's (``model.``) -> ``decoder.block.N.layer.0.SelfAttention.q``, its
  cross-attention ``encoder_attn.q_proj`` -> ``layer.1.EncDecAttention.q``; gate/up/down ->
  ``DenseReluDense.wi_0``/``wi_1`` (``wi`` ungated)/``wo``. A target ``q_proj`` catches self- and
  cross-attention alike, as T5's ``q`` does; ``self_attn.q_proj`` is written ``SelfAttention.q``.
- Mixtral and Qwen2-MoE: ours (transformers 5's); their experts and router go out as PEFT's
  parameter targets (`llmkit.peft.moe`), and transformers 4's per-expert names
  (``block_sparse_moe.experts.N.w1``) are read as well.
"""

from __future__ import annotations

import re
from typing import Any, Hashable, Iterable

from torch import nn

from ..models.classifier import Classifier
from ..models.hf import state_dict_from_hf, state_dict_to_hf
from ..models.hf_moe import experts_from_hf

PREFIX = "base_model.model."

# our module path (inside a layer) -> GPT-2's
GPT2_MODULES = {"self_attn.o_proj": "attn.c_proj", "mlp.up_proj": "mlp.c_fc", "mlp.down_proj": "mlp.c_proj"}
QKV = ("q_proj", "k_proj", "v_proj")
KEY_MAPPED = ("bert", "t5")  # families renamed module by module through `llmkit.models.hf`'s key map


class AdapterError(ValueError):
    """An adapter cannot be read or does not fit the model: the message says why and what to do."""


def bert_prefixed(model: nn.Module) -> bool:
    """Whether transformers keeps this BERT's body under ``bert.``: a classifier and a model with
    its masked-LM head (saved as BertForMaskedLM) yes; a bare body (BertModel) no."""
    return isinstance(model, Classifier) or model.config.head == "lm"


def hf_key(key: str, model: nn.Module) -> str:
    """Our tensor name -> HF's, for a BERT or a T5 (other families: unchanged, as their heads are
    named alike; GPT-2's layers go through `hf_module`)."""
    if model.config.family not in KEY_MAPPED:
        return key
    renamed = state_dict_to_hf({key: None}, model.config, prefix=bert_prefixed(model))
    return next(iter(renamed), key)


def hf_module(path: str, model: nn.Module) -> str:
    """Our module path -> HF's (GPT-2's q/k/v all map to c_attn: callers fuse them)."""
    family = model.config.family
    if family in KEY_MAPPED:
        return hf_key(f"{path}.weight", model).removesuffix(".weight")
    if family != "gpt2":
        return path
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", path)
    if not m or (m.group(2) not in GPT2_MODULES and m.group(2).split(".")[-1] not in QKV):
        raise AdapterError(f"no GPT-2 name for module {path}")
    i, part = m.groups()
    if part.split(".")[-1] in QKV:
        return f"transformer.h.{i}.attn.c_attn"
    return f"transformer.h.{i}.{GPT2_MODULES[part]}"


def our_modules(hf_path: str, model: nn.Module) -> list[str]:
    """HF module path (with or without PEFT's prefix) -> our module path(s) (c_attn -> q/k/v)."""
    hf_path = hf_path.removeprefix(PREFIX)
    family = model.config.family
    if family in KEY_MAPPED:
        ours = state_dict_from_hf({f"{hf_path}.weight": None}, model.config)
        if not ours:  # a buffer or a tied duplicate (BERT's MLM decoder, T5's head): nothing of its own to adapt
            raise AdapterError(f"adapter module {hf_path}: {family.upper()}'s {hf_path} has no weight of its own "
                               "in llmkit")
        return [next(iter(ours)).removesuffix(".weight")]
    if model.config.is_moe:  # transformers 4's per-expert names (Mixtral's block_sparse_moe.experts.N.w1) too
        return [next(iter(experts_from_hf({f"{hf_path}.weight": None}, model.config))).removesuffix(".weight")]
    if family != "gpt2":
        return [hf_path]
    m = re.fullmatch(r"(?:transformer\.)?h\.(\d+)\.(.+)", hf_path)
    if not m:
        raise AdapterError(f"adapter module {hf_path} is not a GPT-2 layer module")
    i, part = m.groups()
    if part == "attn.c_attn":
        return [f"model.layers.{i}.self_attn.{n}" for n in QKV]
    ours = {v: k for k, v in GPT2_MODULES.items()}
    if part not in ours:
        raise AdapterError(f"adapter module {hf_path}: GPT-2 module {part!r} has no LoRA counterpart in llmkit "
                           f"(supported: attn.c_attn, {', '.join(GPT2_MODULES.values())})")
    return [f"model.layers.{i}.{ours[part]}"]


def linear_modules(model: nn.Module) -> set[str]:
    """HF paths of every Linear-like module of `model`, adapted or not: what PEFT's matching sees."""
    from ..quant.nf4 import NF4Linear
    from .lora import LoRALinear

    inner = tuple(f"{p}." for p, m in model.named_modules() if isinstance(m, LoRALinear))  # its base and A/B
    out = set()
    for path, module in model.named_modules():
        if isinstance(module, (nn.Linear, NF4Linear, LoRALinear)) and not path.startswith(inner):
            try:
                out.add(hf_module(path, model))
            except AdapterError:  # outside GPT-2's blocks (its head): named alike in HF
                out.add(path)
    return out


def pattern_value(patterns: dict[str, Any] | None, path: str, default: Any) -> Any:
    """PEFT's lookup in rank_pattern / alpha_pattern: the first key (a regex) that the end of
    `path` matches after a dot or at its start."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def _suffixes(path: str) -> Iterable[str]:
    """The last name of `path`, then longer tails up to the whole path (none starting at a layer number)."""
    parts = path.split(".")
    for k in range(1, len(parts) + 1):
        if not parts[-k].isdigit():
            yield ".".join(parts[-k:])


def target_names(groups: dict[str, Hashable], universe: Iterable[str]) -> dict[str, str]:
    """PEFT's ``target_modules`` entry for each adapted module of `groups` (HF path -> its (rank,
    alpha)): the shortest tail of its path that matches, by PEFT's rule, no module of `universe`
    outside its group. So BERT's q_proj is "query"; a LoRA on down_proj alone is "layer.N.output.dense",
    since "output.dense" would also catch the attention's "attention.output.dense"; and an entry
    names one (rank, alpha), so rank_pattern / alpha_pattern can use it as their key."""
    universe = set(universe) | set(groups)
    names = {}
    for path, group in groups.items():
        others = [m for m in universe if groups.get(m) != group]
        names[path] = next(name for name in _suffixes(path)
                           if not any(m == name or m.endswith("." + name) for m in others))
    return names


def classifier_head(model: nn.Module) -> tuple[list[str], dict[str, nn.Parameter]]:
    """A classifier's head as PEFT saves it beside a LoRA (``modules_to_save``): its module names
    and HF tensor name -> our parameter; empty for a plain model. The head is new (a base model
    has none), so it goes with the adapter; so does BERT's pooler of a sequence classifier, which
    classify training trains and a body pretrained without one gets fresh (unless it carries a
    LoRA itself: PEFT keeps LoRA and modules_to_save apart)."""
    if not isinstance(model, Classifier):
        return [], {}
    bert = model.config.family == "bert"
    params = {f"score.{n}": p for n, p in model.score.named_parameters()}
    names = ["classifier" if bert else "score"]
    pooler = getattr(model.model, "pooler", None)
    if bert and not model.per_token and isinstance(pooler, nn.Linear):
        params.update({f"model.pooler.{n}": p for n, p in pooler.named_parameters()})
        names.append("pooler")
    return names, {hf_key(k, model): p for k, p in params.items()}
