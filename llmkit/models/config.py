"""`ModelConfig`: every family is a set of values, not a subclass; plus named presets.

The fields cover decoder-only transformers of the GPT-2, Llama, Mistral, Qwen2 and SmolLM2
families, mixtures of experts (Mixtral, Qwen2-MoE), BERT-style encoders and T5: norm kind and
placement, position scheme, token types, attention heads and KV heads, causal or bidirectional
attention, MLP kind and experts, biases, tying, sliding windows, RoPE scaling, pooler and output head. Analytical counts (parameters, FLOPs, memory) live here too,
so that `llmkit info` can describe a 7B preset without allocating it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..quant.layout import FULL_BYTES, INT4_GROUP_SIZE, WEIGHT_FORMATS, linear_bytes

NORMS = ("rmsnorm", "layernorm")
POSITIONS = ("rope", "learned", "sinusoidal", "relative", "none")
MLPS = ("swiglu", "gelu")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")
ROPE_TYPES = ("default", "linear", "dynamic", "llama3")
LAYER_TYPES = ("full_attention", "sliding_attention")
HEADS = ("lm", "none")


class ConfigError(ValueError):
    """A model configuration value is invalid; the message names the field and the fix."""


@dataclass
class ModelConfig:
    """Hyper-parameters of one `Transformer`. Names follow the papers; HF names are in comments."""

    family: str = "llama"  # HF `model_type` written on export: llama | mistral | qwen2 | gpt2 | bert
    vocab_size: int = 32000
    dim: int = 4096  # hidden_size / n_embd
    n_layers: int = 32  # num_hidden_layers / n_layer
    n_heads: int = 32  # num_attention_heads / n_head
    n_kv_heads: int | None = None  # num_key_value_heads: None = n_heads (MHA), 1 = MQA, else GQA
    head_dim: int | None = None  # None = dim // n_heads
    hidden_dim: int = 11008  # intermediate_size / n_inner (MLP width)
    max_seq_len: int = 2048  # max_position_embeddings / n_positions
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    positions: str = "rope"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": linear|dynamic|llama3, "factor": ..., ...}
    mlp: str = "swiglu"
    activation: str = "silu"
    qkv_bias: bool = False  # bias on q/k/v projections (GPT-2, Qwen2)
    o_bias: bool = False  # bias on the attention output projection (GPT-2)
    mlp_bias: bool = False  # bias on MLP projections (GPT-2)
    tie_embeddings: bool = False
    causal: bool = True  # False: bidirectional attention (encoders)
    type_vocab_size: int = 0  # token-type (segment) embeddings, BERT's sentence A/B; 0: none
    post_norm: bool = False  # BERT's post-LayerNorm: norm after each residual add and on the embeddings, none at the end
    pooler: bool = False  # BERT's pooler tanh(dense(h[:, 0])), read by sequence classification
    head: str = "lm"  # "lm": logits over the vocabulary (next or masked token); "none": hidden states (HF BertModel)
    head_transform: bool = False  # BERT's MLM head: dense + activation + norm before the output projection
    head_bias: bool = False  # bias on the output projection (BERT's MLM decoder and classifier)
    # encoder-decoder (T5): an encoder of this many bidirectional blocks; the n_layers decoder
    # blocks then cross-attend to its output. 0: decoder-only (or encoder-only with causal=False)
    n_encoder_layers: int = 0
    relative_buckets: int = 32  # positions="relative" (T5): buckets of the learned per-head position bias
    relative_max_distance: int = 128  # ... and the distance beyond which all share the last bucket
    attn_scale: float | None = None  # scale of q·k; None: 1/sqrt(head_dim) (T5: 1, folded into its init)
    scale_tied_head: bool = False  # T5: a tied head reads h * dim**-0.5
    decoder_start_token_id: int | None = None  # the decoder's first input token (T5: the pad token)
    # mixture of experts (Mixtral, Qwen2-MoE): each block's MLP becomes n_experts MLPs of which a
    # router picks experts_per_token for every token. 0: one dense MLP
    n_experts: int = 0  # num_local_experts (Mixtral) / num_experts (Qwen2-MoE)
    experts_per_token: int = 2  # num_experts_per_tok: the router's top-k
    expert_hidden_dim: int | None = None  # moe_intermediate_size; None: hidden_dim (Mixtral's experts)
    shared_expert_hidden_dim: int = 0  # Qwen2-MoE's shared expert, seen by every token behind a sigmoid gate; 0: none
    router_renormalize: bool = True  # top-k probabilities divided by their sum (Mixtral; Qwen2-MoE's norm_topk_prob)
    router_aux_loss_coef: float = 0.0  # weight of the load-balancing loss while training (Switch, Mixtral)
    router_z_loss_coef: float = 0.0  # weight of the router z-loss while training (ST-MoE)
    sliding_window: int | None = None  # keys further than this many positions back are not attended
    layer_types: list[str] | None = None  # per layer "full_attention" | "sliding_attention" (None: all sliding if a window is set)
    dropout: float = 0.0  # embedding, attention-probability and residual dropout while training
    init_std: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ConfigError(
                    f"dim={self.dim} is not divisible by n_heads={self.n_heads}: "
                    "choose dim as a multiple of n_heads, or set head_dim explicitly"
                )
            self.head_dim = self.dim // self.n_heads
        if self.n_experts and self.expert_hidden_dim is None:
            self.expert_hidden_dim = self.hidden_dim
        if self.head == "none":  # no output projection: nothing to transform, bias or tie
            self.head_transform = self.head_bias = self.tie_embeddings = False
        self.validate()

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise `ConfigError` naming the field, the value and the fix for any inconsistent value."""
        for name, allowed in (("norm", NORMS), ("positions", POSITIONS), ("mlp", MLPS), ("activation", ACTIVATIONS),
                              ("head", HEADS)):
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"{name}={value!r} is not supported: use one of {', '.join(allowed)}")
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}: "
                "grouped-query attention shares each KV head among a whole number of query heads"
            )
        if self.positions == "rope" and self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for rotary positions")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ConfigError(f"sliding_window={self.sliding_window} must be a positive integer or None")
        if self.layer_types is not None:
            if len(self.layer_types) != self.n_layers:
                raise ConfigError(
                    f"layer_types has {len(self.layer_types)} entries but n_layers={self.n_layers}: give one per layer"
                )
            bad = [t for t in self.layer_types if t not in LAYER_TYPES]
            if bad:
                raise ConfigError(f"layer_types contains {bad[0]!r}: use one of {', '.join(LAYER_TYPES)}")
        if self.n_encoder_layers < 0:
            raise ConfigError(f"n_encoder_layers={self.n_encoder_layers} must be 0 (no encoder) or positive")
        if self.n_encoder_layers and not self.causal:
            raise ConfigError("n_encoder_layers > 0 makes an encoder-decoder, whose decoder is causal: set causal=true "
                              "(the encoder is bidirectional by construction)")
        if self.positions == "relative" and (self.relative_buckets < 2 or self.relative_max_distance < 2):
            raise ConfigError(f"relative_buckets={self.relative_buckets} and relative_max_distance="
                              f"{self.relative_max_distance} must both be at least 2")
        if not isinstance(self.type_vocab_size, int) or self.type_vocab_size < 0:
            raise ConfigError(f"type_vocab_size={self.type_vocab_size!r} must be 0 (no token types) or a positive integer")
        if self.causal and self.head == "none":
            raise ConfigError("head='none' (hidden states only) is for encoders: set causal=false, or use head='lm'")
        self._validate_experts()
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout} must be in [0, 1)")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            if kind not in ROPE_TYPES:
                raise ConfigError(f"rope_scaling.rope_type={kind!r} is not supported: use one of {', '.join(ROPE_TYPES)}")
            if kind != "default" and "factor" not in self.rope_scaling:
                raise ConfigError(f"rope_scaling of type {kind!r} needs a 'factor'")
            if kind == "llama3":
                for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                    if key not in self.rope_scaling:
                        raise ConfigError(f"rope_scaling of type 'llama3' needs {key!r}")

    def _validate_experts(self) -> None:
        if not isinstance(self.n_experts, int) or isinstance(self.n_experts, bool) or self.n_experts < 0:
            raise ConfigError(f"n_experts={self.n_experts!r} must be 0 (a dense MLP) or a positive number of experts")
        for name in ("router_aux_loss_coef", "router_z_loss_coef"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name}={value!r} must be a weight >= 0")
            if value and not self.n_experts:
                raise ConfigError(f"{name}={value} weighs a router loss, but the model is dense (n_experts=0): set "
                                  f"n_experts (and experts_per_token) to make its MLPs a mixture of experts, or "
                                  f"{name}=0")
        if not self.n_experts:
            for name in EXPERT_FIELDS:
                if getattr(self, name) != _DEFAULTS[name]:
                    raise ConfigError(f"{name}={getattr(self, name)!r} describes experts, but the model is dense "
                                      f"(n_experts=0): set n_experts to make its MLPs a mixture of experts, or leave "
                                      f"{name} at its default ({_DEFAULTS[name]!r})")
            return
        if not isinstance(self.experts_per_token, int) or isinstance(self.experts_per_token, bool) \
                or not 1 <= self.experts_per_token <= self.n_experts:
            raise ConfigError(f"experts_per_token={self.experts_per_token!r} must be between 1 and n_experts="
                              f"{self.n_experts}: the router picks that many of the experts for each token")
        if not isinstance(self.expert_hidden_dim, int) or self.expert_hidden_dim <= 0:
            raise ConfigError(f"expert_hidden_dim={self.expert_hidden_dim!r} must be a positive integer")
        if self.mlp != "swiglu" or self.mlp_bias:
            raise ConfigError(f"n_experts={self.n_experts} with mlp={self.mlp!r}, mlp_bias={self.mlp_bias}: experts are "
                              "SwiGLU MLPs without biases here (Mixtral, Qwen2-MoE); set mlp=swiglu, mlp_bias=false")
        if self.is_encoder or self.is_seq2seq or self.post_norm:
            raise ConfigError("n_experts > 0 is for pre-norm decoders (Mixtral, Qwen2-MoE): not for encoders, "
                              "encoder-decoders or post-norm blocks")
        if self.shared_expert_hidden_dim < 0:
            raise ConfigError(f"shared_expert_hidden_dim={self.shared_expert_hidden_dim} must be 0 (none) or positive")

    @property
    def is_moe(self) -> bool:
        """Each block's MLP is a mixture of experts."""
        return self.n_experts > 0

    @property
    def is_encoder(self) -> bool:
        """Bidirectional attention: the model reads whole texts (embeddings, masked LM,
        classification) and cannot generate."""
        return not self.causal

    @property
    def is_seq2seq(self) -> bool:
        """An encoder-decoder (T5): the encoder reads the source, the decoder generates the target."""
        return self.n_encoder_layers > 0

    def encoder_config(self) -> "ModelConfig":
        """The encoder stack of an encoder-decoder as a config of its own: bidirectional blocks,
        no cross-attention, no output head."""
        if not self.is_seq2seq:
            raise ConfigError("encoder_config() is for encoder-decoders (n_encoder_layers > 0)")
        return self.replace(n_layers=self.n_encoder_layers, n_encoder_layers=0, causal=False, head="none",
                            layer_types=None, sliding_window=None)

    def sliding_window_for(self, layer: int) -> int | None:
        """The attention window of layer `layer` (None: full causal attention)."""
        if self.sliding_window is None:
            return None
        if self.layer_types is None or self.layer_types[layer] == "sliding_attention":
            return self.sliding_window
        return None

    @property
    def context_window(self) -> int:
        """Longest sequence the model is meant to handle: max_seq_len, stretched by the factor
        of dynamic NTK rope scaling (whose max_seq_len is the original training length)."""
        scaling = self.rope_scaling or {}
        if self.positions == "rope" and scaling.get("rope_type", scaling.get("type")) == "dynamic":
            return int(self.max_seq_len * scaling["factor"])
        return self.max_seq_len

    # ------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s) {unknown}: known fields are {sorted(known)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed (validated again). A head_dim that was derived from
        dim // n_heads is derived again when dim or n_heads change, a multi-head model keeps
        n_kv_heads = n_heads, and experts as wide as the MLP (Mixtral) follow a new hidden_dim."""
        derived = self.head_dim == self.dim // self.n_heads
        if derived and "head_dim" not in changes and ({"dim", "n_heads"} & set(changes)):
            changes["head_dim"] = None
        if self.n_kv_heads == self.n_heads and "n_heads" in changes and "n_kv_heads" not in changes:
            changes["n_kv_heads"] = None  # multi-head attention stays multi-head
        if self.expert_hidden_dim == self.hidden_dim and "hidden_dim" in changes and "expert_hidden_dim" not in changes:
            changes["expert_hidden_dim"] = None  # Mixtral's experts keep the MLP width
        if self.n_experts and "n_experts" in changes and not changes["n_experts"]:
            for name in EXPERT_FIELDS + ("router_aux_loss_coef", "router_z_loss_coef"):  # a dense model keeps none
                changes.setdefault(name, _DEFAULTS[name])
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------- analytical sizes
    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def layer_parameters(self, active: bool = False) -> int:
        """Parameters of one transformer block; `active`: only those one token passes through (a
        mixture of experts' router, shared expert and `experts_per_token` of its experts)."""
        d, h = self.dim, self.hidden_dim
        weights = sum(out * inp for out, inp in self.linear_shapes())
        if active and self.is_moe:
            idle = (self.n_experts - self.experts_per_token) * 3 * d * self.expert_hidden_dim
            weights -= idle
        biases = (self.q_dim + 2 * self.kv_dim) * self.qkv_bias + d * self.o_bias
        if self.mlp_bias:  # (experts have none: validate() refuses them)
            biases += (2 if self.mlp == "swiglu" else 1) * h + d
        norm = d if self.norm == "rmsnorm" else 2 * d
        cross = (2 * self.q_dim * d + 2 * self.kv_dim * d + norm) if self.is_seq2seq else 0  # encoder_attn
        return weights + biases + 2 * norm + cross

    def num_parameters(self, embeddings: bool = True, active: bool = False) -> int:
        """Trainable parameters. `embeddings=False` leaves out token/position embeddings and the
        output head (Kaplan's N, the count that scaling laws and FLOP estimates use). `active`
        counts what one token passes through: for a mixture of experts, the shared layers plus
        `experts_per_token` experts (the same as the total for a dense model)."""
        norm = self.dim if self.norm == "rmsnorm" else 2 * self.dim
        n = self.n_layers * self.layer_parameters(active) + norm  # the final norm, or post-norm's embedding norm
        n += (self.dim * self.dim + self.dim) * self.pooler
        if self.positions == "relative":
            n += self.relative_buckets * self.n_heads
        if self.is_seq2seq:  # the encoder stack (its embeddings are the decoder's)
            n += self.encoder_config().num_parameters(embeddings=False)
        if self.head == "lm" and self.head_transform:
            n += self.dim * self.dim + self.dim + norm
        if embeddings:
            n += self.vocab_size * self.dim + self.type_vocab_size * self.dim
            if self.positions == "learned":
                n += self.max_seq_len * self.dim
            if self.head == "lm":
                n += self.vocab_size * (self.head_bias + (not self.tie_embeddings) * self.dim)
        return n

    def flops_per_token(self, seq_len: int | None = None, training: bool = False) -> int:
        """Forward FLOPs per token (Kaplan et al.): 2·N plus attention over the context
        (2·n_layers·seq_len·q_dim for QKᵀ and the weighted sum), plus the output head. N counts
        the parameters a token passes through (a mixture of experts: its active ones).
        Training (forward + backward) is three times that."""
        seq_len = self.max_seq_len if seq_len is None else seq_len
        n = self.num_parameters(embeddings=False, active=True) + self.vocab_size * self.dim * (self.head == "lm")  # the head too
        attn = sum(2 * min(seq_len, self.sliding_window_for(i) or seq_len) * self.q_dim for i in range(self.n_layers))
        forward = 2 * n + attn
        return 3 * forward if training else forward

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(out, in) features of one block's Linear weights: q, k, v, o, then the MLP's (a mixture
        of experts: the router, every expert's gate/up/down, the shared expert and its gate)."""
        d, h = self.dim, self.hidden_dim
        mlp = [(h, d), (h, d), (d, h)] if self.mlp == "swiglu" else [(h, d), (d, h)]
        if self.is_moe:
            e, s = self.expert_hidden_dim, self.shared_expert_hidden_dim
            mlp = [(self.n_experts, d)] + [(e, d), (e, d), (d, e)] * self.n_experts
            if s:
                mlp += [(s, d), (s, d), (d, s), (1, d)]
        return [(self.q_dim, d), (self.kv_dim, d), (self.kv_dim, d), (d, self.q_dim)] + mlp

    def weight_bytes(self, dtype: str = "fp32", group_size: int = INT4_GROUP_SIZE) -> int:
        """Bytes of all weights stored as `dtype`: fp32, fp16 or bf16, or int8 / int4 as `llmkit
        quantize` writes them (`llmkit.quant.layout`): every block Linear and the output head
        quantised (a tied head as a quantised copy beside the embedding), the rest fp32."""
        n = self.num_parameters()
        if dtype == "fp32":
            return 4 * n
        if dtype in ("fp16", "bf16"):
            return 2 * n
        if dtype not in WEIGHT_FORMATS:
            raise ConfigError(f"dtype={dtype!r} is not supported: use fp32, fp16, bf16, int8 or int4")
        head = (self.vocab_size, self.dim)
        linears = self.linear_shapes() * self.n_layers + [head]
        if self.is_moe:  # routers stay in full precision (`quant.weight_only` keeps them)
            routers = [(self.n_experts, self.dim)] + [(1, self.dim)] * bool(self.shared_expert_hidden_dim)
            for shape in routers * self.n_layers:
                linears.remove(shape)
        quantised = sum(linear_bytes(out, inp, dtype, group_size) for out, inp in linears)
        counted = sum(out * inp for out, inp in linears) - (head[0] * head[1] if self.tie_embeddings else 0)
        return quantised + FULL_BYTES * (n - counted)

    def kv_cache_bytes(self, seq_len: int, batch_size: int = 1, bytes_per_value: int = 4) -> int:
        return 2 * self.n_layers * batch_size * seq_len * self.kv_dim * bytes_per_value


# fields that only a mixture of experts may set (the router-loss weights are refused by name above)
EXPERT_FIELDS = ("experts_per_token", "expert_hidden_dim", "shared_expert_hidden_dim", "router_renormalize")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}


# ---------------------------------------------------------------------------------- presets
def _gpt2(dim: int, layers: int, heads: int, **kw: Any) -> ModelConfig:
    return ModelConfig(
        family="gpt2", vocab_size=50257, dim=dim, n_layers=layers, n_heads=heads, hidden_dim=4 * dim,
        max_seq_len=1024, norm="layernorm", norm_eps=1e-5, positions="learned", mlp="gelu",
        activation="gelu_tanh", qkv_bias=True, o_bias=True, mlp_bias=True, tie_embeddings=True,
        bos_token_id=50256, eos_token_id=50256, **kw,
    )


def _bert(dim: int, layers: int, heads: int, hidden: int, **kw: Any) -> ModelConfig:
    base: dict[str, Any] = dict(
        family="bert", vocab_size=30522, dim=dim, n_layers=layers, n_heads=heads, hidden_dim=hidden, max_seq_len=512,
        norm="layernorm", norm_eps=1e-12, positions="learned", mlp="gelu", activation="gelu", qkv_bias=True,
        o_bias=True, mlp_bias=True, tie_embeddings=True, causal=False, type_vocab_size=2, post_norm=True,
        head="lm", head_transform=True, head_bias=True, pad_token_id=0)
    base.update(kw)
    return ModelConfig(**base)


def _t5(dim: int, layers: int, heads: int, hidden: int, gated: bool = False, **kw: Any) -> ModelConfig:
    """T5 v1.0 (ReLU MLP, the tied head reading h * dim**-0.5) or, `gated`, v1.1's gated-GELU MLP
    without the scaling (tied, as transformers 5 always ties T5's head)."""
    base: dict[str, Any] = dict(
        family="t5", vocab_size=32128, dim=dim, n_layers=layers, n_encoder_layers=layers, n_heads=heads,
        head_dim=dim // heads, hidden_dim=hidden, max_seq_len=512, norm="rmsnorm", norm_eps=1e-6,
        positions="relative", mlp="swiglu" if gated else "gelu", activation="gelu_tanh" if gated else "relu",
        attn_scale=1.0, tie_embeddings=True, scale_tied_head=not gated, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0)
    base.update(kw)
    return ModelConfig(**base)


def _llama(**kw: Any) -> ModelConfig:
    base: dict[str, Any] = dict(family="llama", norm="rmsnorm", positions="rope", mlp="swiglu", activation="silu")
    base.update(kw)
    return ModelConfig(**base)


def _llama3_scaling(factor: float) -> dict[str, Any]:
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}


def _qwen25(**kw: Any) -> ModelConfig:
    return _llama(family="qwen2", qkv_bias=True, norm_eps=1e-6, rope_theta=1_000_000.0, bos_token_id=151643,
                  eos_token_id=151645, **kw)


_PRESETS: dict[str, Any] = {
    # GPT-2 (Radford et al. 2019)
    "gpt2": lambda: _gpt2(768, 12, 12),
    "gpt2-medium": lambda: _gpt2(1024, 24, 16),
    "gpt2-large": lambda: _gpt2(1280, 36, 20),
    "gpt2-xl": lambda: _gpt2(1600, 48, 25),
    # Llama 2 and 3.x
    "llama-2-7b": lambda: _llama(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, hidden_dim=11008,
                                 max_seq_len=4096, norm_eps=1e-5, bos_token_id=1, eos_token_id=2),
    "llama-3.2-1b": lambda: _llama(vocab_size=128256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64,
                                   hidden_dim=8192, max_seq_len=131072, rope_theta=500000.0,
                                   rope_scaling=_llama3_scaling(32.0), tie_embeddings=True,
                                   bos_token_id=128000, eos_token_id=128001),
    "llama-3.2-3b": lambda: _llama(vocab_size=128256, dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, head_dim=128,
                                   hidden_dim=8192, max_seq_len=131072, rope_theta=500000.0,
                                   rope_scaling=_llama3_scaling(32.0), tie_embeddings=True,
                                   bos_token_id=128000, eos_token_id=128001),
    "llama-3.1-8b": lambda: _llama(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                                   hidden_dim=14336, max_seq_len=131072, rope_theta=500000.0,
                                   rope_scaling=_llama3_scaling(8.0), bos_token_id=128000, eos_token_id=128001),
    # Mistral 7B v0.1 (sliding-window attention)
    "mistral-7b": lambda: _llama(family="mistral", vocab_size=32000, dim=4096, n_layers=32, n_heads=32,
                                 n_kv_heads=8, hidden_dim=14336, max_seq_len=32768, sliding_window=4096,
                                 bos_token_id=1, eos_token_id=2),
    # Qwen2.5 (q/k/v bias)
    "qwen2.5-0.5b": lambda: _qwen25(vocab_size=151936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2,
                                    hidden_dim=4864, max_seq_len=32768, tie_embeddings=True),
    "qwen2.5-1.5b": lambda: _qwen25(vocab_size=151936, dim=1536, n_layers=28, n_heads=12, n_kv_heads=2,
                                    hidden_dim=8960, max_seq_len=32768, tie_embeddings=True),
    "qwen2.5-7b": lambda: _qwen25(vocab_size=152064, dim=3584, n_layers=28, n_heads=28, n_kv_heads=4,
                                  hidden_dim=18944, max_seq_len=32768),
    # SmolLM2 (Llama architecture)
    "smollm2-135m": lambda: _llama(vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, hidden_dim=1536,
                                   max_seq_len=8192, rope_theta=100000.0, tie_embeddings=True,
                                   bos_token_id=1, eos_token_id=2),
    "smollm2-360m": lambda: _llama(vocab_size=49152, dim=960, n_layers=32, n_heads=15, n_kv_heads=5, hidden_dim=2560,
                                   max_seq_len=8192, rope_theta=100000.0, tie_embeddings=True,
                                   bos_token_id=1, eos_token_id=2),
    "smollm2-1.7b": lambda: _llama(vocab_size=49152, dim=2048, n_layers=24, n_heads=32, n_kv_heads=32,
                                   hidden_dim=8192, max_seq_len=8192, rope_theta=130000.0, tie_embeddings=True,
                                   bos_token_id=1, eos_token_id=2),
    # Mixtures of experts: Mixtral 8x7B (Jiang et al. 2024; 8 experts, top 2) and Qwen1.5-MoE-A2.7B
    # (60 experts, top 4, a shared expert behind a sigmoid gate)
    "mixtral-8x7b": lambda: _llama(family="mixtral", vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                                   hidden_dim=14336, max_seq_len=32768, rope_theta=1_000_000.0, n_experts=8,
                                   experts_per_token=2, bos_token_id=1, eos_token_id=2),
    "qwen1.5-moe-a2.7b": lambda: _llama(family="qwen2_moe", vocab_size=151936, dim=2048, n_layers=24, n_heads=16,
                                        hidden_dim=5632, max_seq_len=8192, qkv_bias=True, norm_eps=1e-6,
                                        rope_theta=1_000_000.0, n_experts=60, experts_per_token=4,
                                        expert_hidden_dim=1408, shared_expert_hidden_dim=5632,
                                        router_renormalize=False, bos_token_id=151643, eos_token_id=151643),
    # T5 (Raffel et al. 2020): encoder-decoder with relative position buckets
    "t5-small": lambda: _t5(512, 6, 8, 2048),
    # BERT (Devlin et al. 2018): post-norm encoder with token types and the masked-LM head
    # (BertForMaskedLM's layout: a classifier made from it gets a fresh pooler, as in transformers)
    "bert-base-uncased": lambda: _bert(768, 12, 12, 3072),
    "bert-large-uncased": lambda: _bert(1024, 24, 16, 4096),
    # Tiny presets for tests and laptops: every family's features at a few hundred thousand parameters.
    "tiny-llama": lambda: _llama(vocab_size=2048, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=176,
                                 max_seq_len=512, tie_embeddings=True),
    "tiny-gpt2": lambda: _gpt2(64, 2, 4).replace(vocab_size=2048, max_seq_len=512, bos_token_id=None,
                                                 eos_token_id=None),
    "tiny-mistral": lambda: _llama(family="mistral", vocab_size=2048, dim=64, n_layers=2, n_heads=4, n_kv_heads=1,
                                   hidden_dim=176, max_seq_len=512, sliding_window=32),
    "tiny-t5": lambda: _t5(64, 2, 4, 176, vocab_size=2048, gated=True),
    "tiny-bert": lambda: _bert(64, 2, 4, 176, vocab_size=2048, max_seq_len=512),
    "tiny-mixtral": lambda: _llama(family="mixtral", vocab_size=2048, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                   hidden_dim=88, max_seq_len=512, tie_embeddings=True, n_experts=4,
                                   experts_per_token=2),
    "tiny-qwen2-moe": lambda: _llama(family="qwen2_moe", vocab_size=2048, dim=64, n_layers=2, n_heads=4,
                                     n_kv_heads=2, hidden_dim=176, max_seq_len=512, qkv_bias=True, norm_eps=1e-6,
                                     rope_theta=1_000_000.0, tie_embeddings=True, n_experts=4, experts_per_token=2,
                                     expert_hidden_dim=48, shared_expert_hidden_dim=80, router_renormalize=False),
    "tiny-qwen2": lambda: _llama(family="qwen2", vocab_size=2048, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                 hidden_dim=176, max_seq_len=512, qkv_bias=True, norm_eps=1e-6,
                                 rope_theta=1_000_000.0, tie_embeddings=True),
}


def list_presets() -> list[str]:
    """Names accepted by `preset()`."""
    return sorted(_PRESETS)


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The `ModelConfig` of a named preset, e.g. ``preset("llama-3.2-1b")``; keyword arguments
    override fields (``preset("tiny-llama", vocab_size=4096)``)."""
    key = name.lower()
    if key not in _PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(list_presets())}")
    config = _PRESETS[key]()
    return config.replace(**overrides) if overrides else config
