"""Mixtures of experts in GGUF, laid out as llama.cpp's converter (convert_hf_to_gguf.py) writes
them and as its loaders (src/models/llama.cpp, qwen2moe.cpp) read them; `gguf.py` calls in here.

- Mixtral is architecture ``llama`` with ``llama.expert_count`` and ``llama.expert_used_count``:
  its experts are ``llama.feed_forward_length`` wide, q/k are permuted as for any Llama, and
  llama.cpp always renormalises the top-k weights.
- Qwen2-MoE is ``qwen2moe``: experts ``expert_feed_forward_length`` wide (default: the dense width
  over the top-k), a shared expert ``expert_shared_feed_forward_length`` wide (default: the dense
  width, ``ffn_{gate,up,down}_shexp``) behind the sigmoid gate ``ffn_gate_inp_shexp`` (llama.cpp
  declares a vector {dim}; today's converter writes 1 x dim, older ones the vector: both are read,
  the vector is written); q/k are not permuted, and llama.cpp never renormalises (its graph fixes that, whatever the model's
  ``norm_topk_prob`` or an ``expert_weights_norm`` key say). It always reads ``output.weight``, so a
  tied model is written with a copy of the embedding, which the reader recognises as a tie.
- Each block's router is ``ffn_gate_inp`` (experts x dim, kept F32 by the converter); the experts
  are stacked (the converter's ``torch.stack`` over HF's per-expert w1 / w3 / w2) into
  ``ffn_gate_exps`` and ``ffn_up_exps`` (experts, width, dim) and ``ffn_down_exps`` (experts, dim,
  width) in torch order: GGUF lists them innermost first, {dim, width, experts}.

llmkit calls a stack ``mlp.experts.gate_proj`` (as it calls GPT-2's fused projection ``qkv``): it
is split into the experts' own Linears on import and stacked again on export.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from .config import ModelConfig
from .gguf import GGUFError
from .hf_moe import STACKED, collapse

ARCHITECTURES = ("llama", "qwen2moe")  # the GGUF architectures whose experts llmkit reads and writes
# routers stay F32 at every export type, as the converter keeps them (they are small and decide the routing)
KEEP_F32 = (".mlp.gate.weight", ".mlp.shared_expert_gate.weight")



def moe_hf_config(f: Any) -> dict[str, Any]:
    """The config.json fields (model_type included) of the mixture of experts GGUFFile `f`
    describes; {} for a dense model. Refuses what llama.cpp would run differently from llmkit."""
    arch = f.architecture
    n = int(f.key("expert_count", 0) or 0)
    if not n:
        if arch == "qwen2moe":  # llama.cpp refuses it too ("n_expert must be > 0 for QWEN2MOE")
            raise GGUFError(f"{f.path}: qwen2moe.expert_count is missing or 0; a qwen2moe model needs its experts")
        return {}
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{f.path}: {arch}.expert_count={n}: llmkit reads experts in GGUF's "
                        f"{', '.join(ARCHITECTURES)} architectures (Mixtral, Qwen2-MoE), not in {arch}")
    gating = f.key("expert_gating_func", None)
    if gating not in (None, 1):  # llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX
        raise GGUFError(f"{f.path}: {arch}.expert_gating_func={gating}; llmkit's router is a softmax (1)")
    scale = float(f.key("expert_weights_scale", 0.0))
    if scale not in (0.0, 1.0):  # llama.cpp multiplies the routing weights by it; llmkit has no such factor
        raise GGUFError(f"{f.path}: {arch}.expert_weights_scale={scale} scales the routing weights, which llmkit's "
                        "Mixtral and Qwen2-MoE do not")
    used, dense = int(f.key("expert_used_count")), _one_width(f, "feed_forward_length")
    if arch == "llama":
        if int(f.key("expert_shared_feed_forward_length", 0)):
            raise GGUFError(f"{f.path}: llama.expert_shared_feed_forward_length names ungated shared experts "
                            "(Granite's); llmkit's shared expert is Qwen2-MoE's, behind a sigmoid gate")
        return dict(model_type="mixtral", num_local_experts=n, num_experts_per_tok=used)
    return dict(model_type="qwen2_moe", num_experts=n, num_experts_per_tok=used,
                moe_intermediate_size=_one_width(f, "expert_feed_forward_length", dense // used),
                shared_expert_intermediate_size=_one_width(f, "expert_shared_feed_forward_length", dense),
                norm_topk_prob=False, qkv_bias="blk.0.attn_q.bias" in f.tensors)


def _one_width(f: Any, key: str, default: Any = ...) -> int:
    """A width key, which llama.cpp also accepts as one value per layer (llmkit's layers are alike)."""
    value = f.key(key, default)
    widths = set(value) if isinstance(value, list) else {value}
    if len(widths) != 1:
        raise GGUFError(f"{f.path}: {f.architecture}.{key}={value} gives layers different widths; llmkit's are alike")
    return int(widths.pop())


def is_head_copy(f: Any) -> bool:
    """Whether a qwen2moe file's output.weight is its embedding, byte for byte (a tied head)."""
    import numpy as np

    if f.architecture != "qwen2moe" or not {"output.weight", "token_embd.weight"} <= f.tensors.keys():
        return False
    head, embedding = f.tensors["output.weight"], f.tensors["token_embd.weight"]
    if head.tensor_type != embedding.tensor_type or head.data.shape != embedding.data.shape:
        return False
    # the first row settles an untied head cheaply, before a pass over the whole (vocabulary-sized) pair
    return np.array_equal(head.data[:1], embedding.data[:1]) and np.array_equal(head.data, embedding.data)


def check_expert_tensors(f: Any, cfg: ModelConfig) -> None:
    """Refuse, by name, a file whose metadata and tensors disagree on whether it has experts."""
    stacks = [n for n in f.tensors if n.endswith("_exps.weight")]
    if cfg.is_moe and not stacks:
        dense = next((n for n in f.tensors if n.startswith("blk.0.ffn_up")), "none")
        raise GGUFError(f"{f.path}: {f.architecture}.expert_count={cfg.n_experts} says every block is a mixture of "
                        f"experts, but the file has no expert tensors (blk.N.ffn_gate_exps, ffn_up_exps, "
                        f"ffn_down_exps; its MLP tensor: {dense}): the key or the tensors are wrong")
    if stacks and not cfg.is_moe:
        raise GGUFError(f"{f.path}: tensor {stacks[0]} holds experts, but {f.architecture}.expert_count is missing; "
                        "llmkit needs it (and expert_used_count) to route tokens")


def stacked_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return collapse(shapes, lambda parts: (len(parts), *parts[0]))


def export_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict with the experts stacked, and the shared expert's gate as the vector llama.cpp
    declares ({dim}; transformers' GGUF loader reads only that form, older converters wrote it so)."""
    return {k: t.reshape(-1) if k.endswith(".mlp.shared_expert_gate.weight") else t
            for k, t in collapse(state, torch.stack).items()}


def split(ours: str, t: torch.Tensor, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]] | None:
    """A stacked expert tensor as the experts' own weights, or the shared expert's gate in our
    (1, dim) shape (llama.cpp reads it as a vector; a converter may write it so); None otherwise."""
    m = STACKED.match(ours)
    if m:
        return ((f"{m.group(1)}.{i}.{m.group(2)}.weight", w) for i, w in enumerate(t.unbind(0)))
    if ours.endswith(".mlp.shared_expert_gate.weight"):
        return iter([(ours, t.reshape(1, cfg.dim))])
    return None


def export_arch(cfg: ModelConfig) -> str:
    """The GGUF architecture a mixture of experts is written as, or a refusal that says why not."""
    if cfg.sliding_window is not None:
        raise GGUFError("a mixture of experts with sliding-window attention cannot be exported: llama.cpp's llama and "
                        "qwen2moe architectures have no window")
    if cfg.shared_expert_hidden_dim:
        if cfg.router_renormalize:
            raise GGUFError("a Qwen2-MoE with router_renormalize=True (norm_topk_prob) cannot be exported: llama.cpp's "
                            "qwen2moe never renormalises the top-k weights, so it would run a different model")
        return "qwen2moe"
    if not cfg.router_renormalize or cfg.expert_hidden_dim != cfg.hidden_dim:
        raise GGUFError(f"a mixture of experts without a shared expert is written as Mixtral (llama with experts), "
                        f"whose experts are hidden_dim wide and renormalised; this one has expert_hidden_dim="
                        f"{cfg.expert_hidden_dim}, hidden_dim={cfg.hidden_dim}, router_renormalize="
                        f"{cfg.router_renormalize}")
    return "llama"


def add_moe_metadata(w: Any, cfg: ModelConfig, arch: str) -> None:
    w.add_expert_count(cfg.n_experts)
    w.add_expert_used_count(cfg.experts_per_token)
    if arch == "qwen2moe":
        w.add_expert_feed_forward_length(cfg.expert_hidden_dim)
        w.add_expert_shared_feed_forward_length(cfg.shared_expert_hidden_dim)
