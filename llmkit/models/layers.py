"""The parts of a transformer block: norms, rotary and sinusoidal positions, attention, MLP.

Module names follow Hugging Face Llama (`q_proj` … `down_proj`, `input_layernorm`,
`post_attention_layernorm`) so that checkpoints and adapter files map one to one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..quant import kernels
from ..quant.kernels import rows_linear
from .config import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), computed in fp32 like the reference."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:  # one kernel, the same numbers
            return F.rms_norm(x, (x.shape[-1],), self.weight, eps=self.eps)
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.dim, config.norm_eps)
    return nn.LayerNorm(config.dim, eps=config.norm_eps)


def activation_fn(name: str):
    if name == "silu":
        return F.silu
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":  # GPT-2's "gelu_new"
        return lambda x: F.gelu(x, approximate="tanh")
    return F.relu


# --------------------------------------------------------------------------------- positions
def rope_inv_freq(config: ModelConfig, seq_len: int | None = None, device=None) -> torch.Tensor:
    """Inverse frequencies of rotary embeddings (Su et al. 2021), with the long-context scalings:
    linear (position interpolation), dynamic NTK (base grows with the sequence) and Llama 3's
    per-wavelength blend."""
    dim = config.head_dim
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    base = config.rope_theta
    if kind == "dynamic":
        factor = scaling["factor"]
        original = config.max_seq_len
        seq_len = max(seq_len or original, original)
        base = base * ((factor * seq_len / original) - (factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))
    if kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        # long wavelengths are interpolated by `factor`, short ones kept, the band between blended
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = torch.where(medium, blended, scaled)
    return inv_freq


class RotaryEmbedding(nn.Module):
    """cos/sin tables for the given positions (HF's non-interleaved "rotate half" layout)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        scaling = config.rope_scaling or {}
        self.dynamic = scaling.get("rope_type", scaling.get("type")) == "dynamic"
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)

    def _apply(self, fn, recurse=True):
        # model.to(bf16) would round the frequencies and ruin angles beyond a few hundred
        # positions: they are recomputed in fp32 on the new device instead
        super()._apply(fn, recurse)
        if self.inv_freq.dtype != torch.float32 and not self.inv_freq.is_meta:
            self.inv_freq = rope_inv_freq(self.config, device=self.inv_freq.device)
        return self

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq
        if self.dynamic:
            seq_len = int(position_ids.max()) + 1
            if seq_len > self.config.max_seq_len:
                inv_freq = rope_inv_freq(self.config, seq_len, device=position_ids.device)
        freqs = position_ids[..., None].float() * inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (batch, heads, seq, head_dim) by the angles in cos/sin of shape (batch, seq, head_dim)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def sinusoidal_positions(position_ids: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Fixed sin/cos position encodings of "Attention Is All You Need", interleaved sin, cos."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=position_ids.device).float() / dim))
    angles = position_ids[..., None].float() * inv_freq
    pe = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)[..., :dim]
    return pe.to(dtype)


# --------------------------------------------------------------------------------- attention
class AttentionMask:
    """How one forward pass masks attention: either SDPA's own causal flag, no mask at all
    (a single query that may see every key from `key_start` on), or an explicit boolean mask
    of shape (batch or 1, 1, queries, keys) where True means "may attend". `tokens` (batch,
    queries; True = a real token, None = all are) tells a mixture of experts which rows are
    padding, to leave them out of its router losses."""

    __slots__ = ("mask", "is_causal", "key_start", "tokens")

    def __init__(self, mask: torch.Tensor | None = None, is_causal: bool = False, key_start: int = 0,
                 tokens: torch.Tensor | None = None):
        self.mask, self.is_causal, self.key_start, self.tokens = mask, is_causal, key_start, tokens


def linear_outputs(x: torch.Tensor, mods: tuple[nn.Module, ...]) -> list[torch.Tensor]:
    """`[m(x) for m in mods]` for Linears that read the same input (q/k/v, gate/up; or one alone). A
    decoding step's few rows go through `llmkit.quant.kernels`, which reads each weight once (torch's
    matmul reads it twice for two to eight rows). Quantised Linears (`llmkit.quant`) offer
    `grouped_outputs`, their own few-row path; either returns None where it does not apply."""
    first = mods[0]
    if all(type(m) is nn.Linear for m in mods):  # not a LoRA wrapper, whose .weight is its base layer's
        out = [rows_linear(x, m.weight, m.bias) for m in mods] if kernels.usable(x) else None
    else:
        grouped = getattr(first, "grouped_outputs", None)
        out = grouped(x, mods) if grouped is not None else None
    return out if out is not None and all(o is not None for o in out) else [m(x) for m in mods]


def linear(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`mod(x)`, by `linear_outputs`' paths."""
    return linear_outputs(x, (mod,))[0]


def relative_position_buckets(relative: torch.Tensor, bidirectional: bool, buckets: int,
                              max_distance: int) -> torch.Tensor:
    """T5's bucket of each key-minus-query distance (Raffel et al. 2020): half the buckets for
    exact small distances, the rest log-spaced up to `max_distance`; bidirectional attention
    gives keys before and after the query separate halves, causal attention sees only the past."""
    out = torch.zeros_like(relative)
    if bidirectional:
        buckets //= 2
        out += (relative > 0).long() * buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    exact = buckets // 2
    far = exact + (torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                   * (buckets - exact)).long()
    return out + torch.where(distance < exact, distance, far.clamp(max=buckets - 1))


class RelativePositionBias(nn.Module):
    """T5's learned attention bias: one scalar per head and distance bucket, added to every
    layer's attention logits (computed once per forward, shared by the stack's layers)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.bidirectional = not config.causal
        self.buckets, self.max_distance = config.relative_buckets, config.relative_max_distance
        self.embed = nn.Embedding(config.relative_buckets, config.n_heads)

    def forward(self, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
        """(1, heads, queries, keys) bias for 1-D query and key positions."""
        relative = key_pos[None, :] - query_pos[:, None]
        bucket = relative_position_buckets(relative, self.bidirectional, self.buckets, self.max_distance)
        return self.embed(bucket).permute(2, 0, 1).unsqueeze(0)


class Attention(nn.Module):
    """Multi-head (grouped-query) attention with SDPA. `cross` makes it attend to another
    sequence (an encoder's output) instead of its own input."""

    def __init__(self, config: ModelConfig, layer_idx: int, cross: bool = False):
        super().__init__()
        self.layer_idx, self.cross, self.scale = layer_idx, cross, config.attn_scale
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.q_proj = nn.Linear(config.dim, config.q_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.dim, config.kv_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.dim, config.kv_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.q_dim, config.dim, bias=config.o_bias)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, mask: AttentionMask,
                cache=None, memory=None) -> torch.Tensor:
        """`memory` (an `EncoderMemory`): the encoder output a cross-attention reads its keys and
        values from, projected once per source and kept there."""
        b, t, _ = x.shape
        if memory is not None:
            q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
            k, v = memory.keys_values(self.layer_idx, self._source_keys_values)
            attn_mask, is_causal = memory.attention_mask(), False
        else:
            q, k, v = linear_outputs(x, (self.q_proj, self.k_proj, self.v_proj))
            q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
            k = k.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
            v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            if cache is not None:
                k, v = cache.update(self.layer_idx, k, v)
            if mask.key_start:
                k, v = k[:, :, mask.key_start:], v[:, :, mask.key_start:]
            attn_mask, is_causal = mask.mask, mask.is_causal
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_heads != self.n_heads, scale=self.scale,
        )
        return linear(self.o_proj, y.transpose(1, 2).reshape(b, t, -1))

    def _source_keys_values(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, s, _ = states.shape
        k, v = linear_outputs(states, (self.k_proj, self.v_proj))
        return (k.view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2),
                v.view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2))


class MLP(nn.Module):
    """SwiGLU (down(act(gate(x)) * up(x))) or the classic two-layer GELU MLP (down(act(up(x)))).
    A block of a mixture-of-experts model holds `moe.MoE` instead, whose experts are these."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gated = config.mlp == "swiglu"
        if self.gated:
            self.gate_proj = nn.Linear(config.dim, config.hidden_dim, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.dim, config.hidden_dim, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.hidden_dim, config.dim, bias=config.mlp_bias)
        self.act = activation_fn(config.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = linear_outputs(x, (self.gate_proj, self.up_proj))
            return linear(self.down_proj, self.act(gate) * up)
        return linear(self.down_proj, self.act(linear(self.up_proj, x)))


class Block(nn.Module):
    """A transformer block. Pre-norm (GPT-2 onwards): x + attn(norm(x)), then h + mlp(norm(h)).
    Post-norm (the original transformer, BERT): norm(x + attn(x)), then norm(h + mlp(h)); its
    norms are named after where they sit, as Gemma 2 names its post-norms. The decoder of an
    encoder-decoder (T5) cross-attends to the encoder's output between the two, pre-norm
    (``encoder_attn``, as BART and Whisper name it)."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.post_norm = config.post_norm
        if not self.post_norm:
            self.input_layernorm = make_norm(config)
        self.self_attn = Attention(config, layer_idx)
        if config.is_seq2seq:
            self.encoder_attn_layernorm = make_norm(config)
            self.encoder_attn = Attention(config, layer_idx, cross=True)
        self.post_attention_layernorm = make_norm(config)
        self.moe = config.is_moe
        if self.moe:
            from .moe import MoE  # moe builds its experts from MLP, defined here

            self.mlp = MoE(config)
        else:
            self.mlp = MLP(config)
        if self.post_norm:
            self.post_feedforward_layernorm = make_norm(config)
        self.drop = nn.Dropout(config.dropout) if config.dropout else nn.Identity()

    def forward(self, x, rope, mask: AttentionMask, cache=None, memory=None) -> torch.Tensor:
        if self.post_norm:
            h = self.post_attention_layernorm(x + self.drop(self.self_attn(x, rope, mask, cache)))
            return self.post_feedforward_layernorm(h + self.drop(self.mlp(h)))
        h = x + self.drop(self.self_attn(self.input_layernorm(x), rope, mask, cache))
        if memory is not None:
            h = h + self.drop(self.encoder_attn(self.encoder_attn_layernorm(h), None, mask, memory=memory))
        if self.moe:
            return h + self.drop(self.mlp(self.post_attention_layernorm(h), mask.tokens))
        return h + self.drop(self.mlp(self.post_attention_layernorm(h)))


class HeadTransform(nn.Module):
    """BERT's masked-LM prediction head before the output projection: norm(act(dense(h)))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.dim, config.dim)
        self.act = activation_fn(config.activation)
        self.norm = make_norm(config)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(h)))
