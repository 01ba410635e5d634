"""A model's vital statistics as (label, text) rows: what `llmkit info` prints."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..quant.layout import INT4_GROUP_SIZE
from ..scaling.memory import experts_phrase
from .config import ModelConfig

if TYPE_CHECKING:
    from .catalog import StoredModel


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def mlp_text(cfg: ModelConfig) -> str:
    """The MLP of each block in words: kind and width, or a mixture's experts, top-k and shared expert."""
    if not cfg.is_moe:
        return f"MLP {cfg.mlp} {cfg.hidden_dim}"
    return "MLP: " + experts_phrase(cfg.n_experts, cfg.expert_hidden_dim, cfg.experts_per_token,
                                    cfg.router_renormalize, cfg.shared_expert_hidden_dim)


def describe(cfg: ModelConfig, context: int | None = None) -> list[tuple[str, str]]:
    """Family, parameters (a mixture of experts: total and active per token), layers, attention,
    positions, FLOPs, KV cache and weight memory by dtype."""
    ctx = context or cfg.context_window
    if ctx < 1:
        raise ValueError(f"context={ctx} must be a positive number of tokens")
    attn = "MHA" if cfg.n_kv_heads == cfg.n_heads else ("MQA" if cfg.n_kv_heads == 1 else "GQA")
    rope = ""
    if cfg.positions == "rope":
        scaling = cfg.rope_scaling
        rope = f" (theta {cfg.rope_theta:g}" + (f", {scaling.get('rope_type')} scaling x{scaling['factor']:g}"
                                                if scaling else "") + ")"
    window = ""
    if cfg.sliding_window:
        n_sliding = sum(cfg.sliding_window_for(i) is not None for i in range(cfg.n_layers))
        window = f", sliding window {cfg.sliding_window} on {n_sliding} of {cfg.n_layers} layers"
    context_note = f", context {cfg.max_seq_len}"
    if cfg.context_window != cfg.max_seq_len:
        context_note += f" (extended to {cfg.context_window} by rope scaling)"
    encoder = cfg.is_encoder
    if encoder:
        attention = f"bidirectional (encoder): {cfg.n_heads} heads, head_dim {cfg.head_dim}"
    else:
        attention = f"{attn}: {cfg.n_heads} heads, {cfg.n_kv_heads} KV heads, head_dim {cfg.head_dim}{window}"
    norm = f"{cfg.norm} (eps {cfg.norm_eps:g})" + (f", {'post' if cfg.post_norm else 'pre'}-norm" if encoder else "")
    if cfg.head == "none":
        vocabulary = f"{cfg.vocab_size}, no output head"
    else:
        vocabulary = f"{cfg.vocab_size}, embeddings {'tied' if cfg.tie_embeddings else 'separate'}"
    rows = [
        ("family", cfg.family),
        ("parameters", f"{cfg.num_parameters():,} ({cfg.num_parameters(embeddings=False):,} without embeddings)"),
    ]
    if cfg.is_moe:  # what a token passes through: what FLOPs and activations follow, not memory
        rows.append(("active parameters", f"{cfg.num_parameters(active=True):,} per token "
                     f"({cfg.num_parameters(embeddings=False, active=True):,} without embeddings): "
                     f"{cfg.experts_per_token} of {cfg.n_experts} experts"
                     + " and the shared expert" * bool(cfg.shared_expert_hidden_dim)))
    rows += [
        ("layers", (f"{cfg.n_encoder_layers} encoder + {cfg.n_layers} decoder (cross-attending)" if cfg.is_seq2seq
                    else str(cfg.n_layers)) + f" x dim {cfg.dim}, {mlp_text(cfg)}"),
        ("attention", attention),
        ("positions", f"{cfg.positions}{rope}{context_note}"),
        ("norm", norm),
        ("vocabulary", vocabulary),
    ]
    if encoder:  # what an encoder has instead of a cache: its head and extras
        extras = [f"{cfg.type_vocab_size} token types"] * bool(cfg.type_vocab_size) + ["pooler"] * cfg.pooler
        head = "masked LM" if cfg.head == "lm" else "none (hidden states)"
        rows.append(("head", head + "".join(f", {x}" for x in extras)))
    rows.append(("FLOPs/token", f"{cfg.flops_per_token(ctx) / 1e9:.3f} GFLOP forward at context {ctx}"
                 + " (active parameters)" * cfg.is_moe))
    rows.append(("KV cache", "none: an encoder reads each text whole and does not generate" if encoder
                 else f"{_size(cfg.kv_cache_bytes(ctx, 1, 2))} at context {ctx} (bf16, batch 1)"))
    rows += [(f"weights {dtype}", _size(cfg.weight_bytes(dtype))) for dtype in ("fp32", "bf16")]
    rest = "embeddings and norms fp32, as `llmkit quantize` writes it"
    rows += [("weights int8", f"{_size(cfg.weight_bytes('int8'))} (fp32 scale per row; {rest})"),
             ("weights int4", f"{_size(cfg.weight_bytes('int4'))} (fp32 scale per {INT4_GROUP_SIZE} inputs; {rest})")]
    return rows


def size_text(n: int) -> str:
    """Bytes for people: MiB, or GiB from a quarter GiB up."""
    return _size(n)


def describe_stored(stored: StoredModel) -> list[tuple[str, str]]:
    """The rows `llmkit info` adds for a model on disk (a `catalog.StoredModel`): its format and
    quantisation with the tensors of each stored type, its size on disk, the memory its weights
    take once loaded, and where it came from."""
    types = ", ".join(f"{n} {kind}" for kind, n in stored.tensor_types.items())
    rows = [("format", f"{stored.format}, {stored.quantization}" + (f" (tensors: {types})" if types else "")),
            ("on disk", f"{_size(stored.size_bytes)} ({stored.size_bytes:,} bytes)")]
    if stored.loaded_bytes is not None:
        rows.append(("in memory", f"{_size(stored.loaded_bytes)} ({stored.loaded_bytes:,} bytes): {stored.loaded_as}"))
    else:
        rows.append(("in memory", stored.loaded_as or "unknown"))
    rows.append(("source", stored.source))
    return rows
