"""How much memory a model needs to run or to train, by dtype and method, without allocating it.

Bytes per parameter (N = all parameters, a tied head counted once; GB = 1e9 bytes):

=====================  =======  =====  =========  ================================================
method, dtype           weights  grads  optimizer  total (states)
=====================  =======  =====  =========  ================================================
inference fp32          4        –      –          4   (1B params ≈ 4 GB)
inference fp16/bf16     2        –      –          2   (≈ 2 GB)
inference int8 / int4   1 / 0.5  –      –          1 / 0.5 (given a model configuration: the layout
                                                   `llmkit quantize` writes, fp32 scales and the
                                                   rest fp32: `ModelConfig.weight_bytes`)
full fp32, AdamW        4        4      8 (m, v)   16
full, mixed precision   2        2      12         16  (ZeRO paper, Rajbhandari et al. 2020: 16-bit
                                                   weights and grads; fp32 master copy, m, v)
full bf16/fp16 (pure)   2        2      4          8   (torch keeps AdamW state in the param dtype)
lora                    base at  adapters only: 16 per adapter parameter (fp32 weight, grad, m, v)
                        dtype
qlora                   NF4 ≈ 0.516 (4 bits + double-quantised constants) + the same adapters
=====================  =======  =====  =========  ================================================

The "24 bytes/parameter for full fp32 training with Adam" rule of thumb is these 16 bytes of
states plus the textbook activation allowance of 2 activation values per parameter (8 bytes in
fp32, 4 in 16-bit). That allowance is what `estimate_memory` uses when it is given a bare
parameter count, since activations depend on the shape, not on N (override with
``activations_per_param``). Given a model configuration, it counts activations instead:

Activations (training), per layer, after Korthikanti et al. 2022 ("Reducing Activation
Recomputation in Large Transformer Models", eq. 2: s·b·h·(34 + 5·a·s/h) bytes at 16-bit), counted as
the tensors llmkit's block saves for backward, in values per token:

    attention: c·d + d + 2·q + 2·kv + (q with fused SDPA/flash attention | a·s softmax probabilities)
    MLP:       c·d + d + 4·f (SwiGLU: gate, up, act(gate), product) | 2·f (GELU)
    MoE MLP:   c·d + d + 3·k·d + 4·k·e + k  (+ 4·g + d + 1 with a shared expert)
               + E (+ 2·E + 1 with weighted router losses, + k + 1 when renormalised) router values,
                 fp32 at any precision
               + 3·k int64 indices (8 bytes each)

where d = dim, q = n_heads·head_dim, kv = n_kv_heads·head_dim, f = hidden_dim, a = n_heads,
s = seq_len, and c = values a norm saves (2 for llmkit's RMSNorm: input and normalised; 1 for
LayerNorm). For GPT shapes with LayerNorm and eager attention this is exactly Korthikanti's
34·s·b·h + 5·a·s²·b bytes less the 1-byte dropout masks (added, 2·d bytes per token, when
dropout > 0). Each value takes 4 bytes in fp32 and 2 in mixed or 16-bit training. Times
n_layers·b·s, plus the head: final norm and head input (c + 1)·d values per token, and the logits,
b·s·V values at activation precision plus three fp32 copies (cross-entropy's log-probabilities and
the two gradient buffers of its backward). Activation checkpointing of every block keeps only each
block's input (d values per token and layer, Korthikanti's 2·s·b·h bytes) plus one block's
activations while it is recomputed.

A mixture of experts (`llmkit.models.moe`; E = n_experts, k = experts_per_token, e =
expert_hidden_dim, g = shared_expert_hidden_dim) keeps what its sorted dispatch saves for backward:
each token's k gathered copies (the experts' input), the k expert outputs concatenated (kept by
the multiply with the routing weights) and the weighted outputs (kept by ``index_add_``), 3·k·d;
the SwiGLU values of the k experts the token is routed to, 4·k·e; its k routing weights in sorted
order; a shared expert's SwiGLU values, output and sigmoid gate. The router keeps its softmax
probabilities (E), the Trainer's router losses, when weighted, a copy of the logits and their
softmax (2·E + 1 with the z-loss's logsumexp; unweighted they are only logged, without a graph), renormalisation the top-k weights and their sum; the top-k choices, each
assignment's token and the sort order are int64. So weights, gradients and optimizer state count
every expert (N is all parameters), activations only the experts a token passes through
(``tests/scaling/test_memory.py`` checks the MoE terms against the bytes autograd saves).

All terms are added as if alive at once: the usual textbook sum. It is exact when gradients
persist across steps (gradient accumulation, ``zero_grad(set_to_none=False)``); when they are freed
after every step the true peak (at the start of backward) lacks most of the gradients, and the
estimate is high by up to their size. Measured peaks of fp32 AdamW steps of 10M and 42M-parameter
llmkit models are 0.83–0.95 of the estimate, of 24M and 27M-parameter mixtures of experts (10M and
13M active) 0.88–1.00 (``tests/scaling/test_memory.py``).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

from .laws import ScalingError

METHODS = ("inference", "full", "lora", "qlora")
BYTES_PER_VALUE = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}
OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd": 1}  # fp32 tensors the size of the params (SGD: momentum)
NF4_BYTES = 0.5 + (8 / 64 + 32 / (64 * 256)) / 8  # QLoRA: 4-bit + fp8 absmax per 64 + fp32 per 256 blocks
ACTIVATION_VALUES_PER_PARAM = 2.0  # textbook allowance used with a bare parameter count


@dataclass(frozen=True)
class _Shape:
    """The fields of a `ModelConfig` the estimate needs (duck-typed)."""

    params: int
    n_layers: int
    dim: int
    n_heads: int
    q_dim: int
    kv_dim: int
    hidden_dim: int
    vocab_size: int
    max_seq_len: int
    swiglu: bool
    norm_values: int
    dropout: float
    # the configuration's own count of int8 / int4 weight bytes (`ModelConfig.weight_bytes`, which
    # follows llmkit.quant's layout: this room sits below quant and asks the config instead)
    stored_bytes: Callable[[str], int] | None = None
    # a mixture of experts (n_experts = 0: a dense MLP) and the parameters one token passes through
    n_experts: int = 0
    experts_per_token: int = 0
    expert_hidden_dim: int = 0
    shared_hidden_dim: int = 0
    router_renormalize: bool = False
    router_weighted: bool = False  # router losses with a weight: their logits and softmax are kept for backward
    active_params: int = 0

    @property
    def matrices(self) -> list[tuple[int, int]]:
        """(out, in) features of each block Linear: q, k, v, o, up, down (+ gate); a mixture's router,
        every expert's gate/up/down and the shared expert's with its gate. These are what LoRA
        adapts (QLoRA's "all linear layers", PEFT's all-linear) and, but for a mixture's routers,
        what NF4, int8 and int4 quantise."""
        d, f = self.dim, self.hidden_dim
        mats = [(self.q_dim, d), (self.kv_dim, d), (self.kv_dim, d), (d, self.q_dim)]
        if self.n_experts:
            e, s = self.expert_hidden_dim, self.shared_hidden_dim
            shared = [(s, d), (s, d), (d, s), (1, d)] if s else []
            return mats + [(self.n_experts, d)] + [(e, d), (e, d), (d, e)] * self.n_experts + shared
        return mats + [(f, d), (d, f)] + [(f, d)] * self.swiglu

    @property
    def adapted_per_token(self) -> int:
        """How many of `matrices` one token passes through (a mixture: the router, k experts, the shared one)."""
        if self.n_experts:
            return 5 + 3 * self.experts_per_token + 4 * bool(self.shared_hidden_dim)
        return len(self.matrices)

    @property
    def linear_params(self) -> int:
        return self.n_layers * sum(o * i for o, i in self.matrices)

    @property
    def router_params(self) -> int:
        """A mixture's routers (and shared-expert gates), which every quantisation keeps unquantised."""
        return self.n_layers * self.dim * (self.n_experts + bool(self.shared_hidden_dim)) if self.n_experts else 0

    def mlp_activation_bytes(self, p: float) -> float:
        """Bytes per token that one block's MLP saves for backward beyond its norm and input (the
        "MLP" and "MoE MLP" lines of the module docstring past c·d + d), at `p` bytes a value."""
        if not self.n_experts:
            return (4 if self.swiglu else 2) * self.hidden_dim * p
        d, k, e, s = self.dim, self.experts_per_token, self.expert_hidden_dim, self.shared_hidden_dim
        experts = (3 * k * d + 4 * k * e + k) * p
        shared = (4 * s + d + 1) * p if s else 0.0
        losses = (2 * self.n_experts + 1) * self.router_weighted
        router = 4.0 * (self.n_experts + losses + (k + 1) * self.router_renormalize)  # fp32 whatever p is
        return experts + shared + router + 8.0 * 3 * k


def _shape(model: Any) -> _Shape | None:
    if isinstance(model, numbers.Real):
        return None
    cfg = model if hasattr(model, "n_layers") else getattr(model, "config", model)
    try:
        head_dim = cfg.head_dim or cfg.dim // cfg.n_heads
        n_kv = cfg.n_kv_heads or cfg.n_heads
        params = int(cfg.num_parameters(embeddings=True))
        n_experts = int(getattr(cfg, "n_experts", 0) or 0)
        moe: dict[str, Any] = {}
        if n_experts:
            moe = dict(n_experts=n_experts, experts_per_token=cfg.experts_per_token,
                       expert_hidden_dim=cfg.expert_hidden_dim or cfg.hidden_dim,
                       shared_hidden_dim=cfg.shared_expert_hidden_dim or 0, router_renormalize=cfg.router_renormalize,
                       router_weighted=bool(getattr(cfg, "router_aux_loss_coef", 0) or getattr(cfg, "router_z_loss_coef", 0)),
                       active_params=int(cfg.num_parameters(embeddings=True, active=True)))
        return _Shape(
            params=params, n_layers=cfg.n_layers, dim=cfg.dim,
            n_heads=cfg.n_heads, q_dim=cfg.n_heads * head_dim, kv_dim=n_kv * head_dim, hidden_dim=cfg.hidden_dim,
            vocab_size=cfg.vocab_size, max_seq_len=cfg.max_seq_len, swiglu=cfg.mlp == "swiglu",
            norm_values=1 if getattr(cfg, "norm", "rmsnorm") == "layernorm" else 2,
            dropout=float(getattr(cfg, "dropout", 0.0) or 0.0), stored_bytes=getattr(cfg, "weight_bytes", None),
            **moe,
        )
    except AttributeError as e:
        raise ScalingError(
            f"cannot size {type(model).__name__}: need a parameter count (int) or a model configuration "
            f"with num_parameters(), n_layers, dim, n_heads, hidden_dim, vocab_size ... (a mixture of experts: "
            f"experts_per_token, expert_hidden_dim, shared_expert_hidden_dim, router_renormalize) ({e})"
        ) from None


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes by component; `total` is their sum. `notes` say which assumptions were made."""

    method: str
    dtype: str
    params: int
    trainable: int
    weights: float
    gradients: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    kv_cache: float = 0.0
    notes: tuple[str, ...] = field(default=())
    active: int = 0  # parameters one token passes through (a mixture of experts); 0: all of them

    @property
    def active_params(self) -> int:
        return self.active or self.params

    @property
    def states(self) -> float:
        """Weights + gradients + optimizer state: what does not depend on batch or sequence."""
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> float:
        return self.states + self.activations + self.kv_cache

    @property
    def bytes_per_param(self) -> float:
        return self.total / self.params

    def table(self) -> str:
        """A small text table of the components, in GB (1e9 bytes)."""
        rows = [("weights", self.weights), ("gradients", self.gradients), ("optimizer", self.optimizer),
                ("activations", self.activations), ("kv_cache", self.kv_cache), ("total", self.total)]
        active = f"{self.active:,} active per token, " if self.active and self.active != self.params else ""
        lines = [f"{self.method} · {self.dtype} · {self.params:,} params ({active}{self.trainable:,} trainable)"]
        lines += [f"  {name:<12}{_fmt(value):>12}  {value / self.params:6.2f} B/param" for name, value in rows]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _weight_bytes(shape: _Shape | None, params: int, dtype: str) -> float:
    """Weights stored as `dtype`. int8 / int4 of a configuration: its layout (scales, what stays
    unquantised); of a bare count, the codes alone. NF4 (QLoRA) quantises the block Linears
    and keeps embeddings, norms and head in 16-bit."""
    per = NF4_BYTES if dtype == "nf4" else BYTES_PER_VALUE[dtype]
    if shape is not None and dtype in ("int8", "int4") and shape.stored_bytes is not None:
        return float(shape.stored_bytes(dtype))
    if shape is None or dtype != "nf4":
        return params * per
    lin = shape.linear_params - shape.router_params
    return lin * per + 2.0 * (params - lin)


def _training_activations(s: _Shape, batch: int, seq: int, p: float, flash: bool, ckpt: bool,
                          adapter_rank: int = 0) -> float:
    """The activation formula of the module docstring, in bytes."""
    d, c = s.dim, s.norm_values
    attn = c * d + d + 2 * s.q_dim + 2 * s.kv_dim + (s.q_dim if flash else s.n_heads * seq)
    layer = (attn + c * d + d + adapter_rank * s.adapted_per_token) * p + s.mlp_activation_bytes(p)
    layer += 2 * d if s.dropout > 0 else 0
    tokens = batch * seq
    body = s.n_layers * d * p + layer if ckpt else s.n_layers * layer
    head = (c + 1) * d * p + s.vocab_size * (p + 12.0)
    return tokens * (body + head)


def estimate_memory(model: Any, *, method: str = "inference", dtype: str = "fp32", batch_size: int = 1,
                    seq_len: int | None = None, optimizer: str = "adamw", mixed_precision: bool = False,
                    lora_rank: int = 16, activation_checkpointing: bool = False, flash_attention: bool = True,
                    activations_per_param: float | None = None) -> MemoryEstimate:
    """Estimate the memory to run (`method="inference"`) or train (`"full"`, `"lora"`, `"qlora"`) a
    model: a `ModelConfig` (or anything with its fields, or a model with ``.config``), or a bare
    parameter count. See the module docstring for the accounting and the activation formula.

    `dtype` is the weight format: fp32, bf16, fp16, int8, int4 (quantised formats for inference
    and as a LoRA base; QLoRA's base is always NF4 with 16-bit compute). ``mixed_precision=True``
    trains with 16-bit compute and fp32 master weights (16 bytes/param of states, ZeRO's figure).
    `seq_len` defaults to the model's ``max_seq_len``. For a bare count, inference is weights only
    and training adds `activations_per_param` bytes/param (default: 2 values/param, 8 B in fp32).
    """
    if method not in METHODS:
        raise ScalingError(f"method={method!r} is not supported: use one of {', '.join(METHODS)}")
    if dtype not in BYTES_PER_VALUE:
        raise ScalingError(f"dtype={dtype!r} is not supported: use one of {', '.join(BYTES_PER_VALUE)}")
    if optimizer not in OPTIMIZER_STATES:
        raise ScalingError(f"optimizer={optimizer!r} is not supported: use one of {', '.join(OPTIMIZER_STATES)}")
    if method == "full" and dtype in ("int8", "int4"):
        raise ScalingError(f"full training of {dtype} weights is not possible: use method='lora' (a quantised "
                           "frozen base) or 'qlora', or a float dtype")
    if batch_size < 1 or (seq_len is not None and seq_len < 1) or lora_rank < 1:
        raise ScalingError(f"batch_size={batch_size}, seq_len={seq_len} and lora_rank={lora_rank} must be positive")
    shape = _shape(model)
    params = shape.params if shape is not None else int(model)
    if params <= 0:
        raise ScalingError(f"the model has {params} parameters: give a positive count")
    seq = seq_len or (shape.max_seq_len if shape is not None else 2048)
    notes: list[str] = []
    active = shape.active_params if shape is not None else 0
    if active:
        notes.append(_moe_note(shape, method))
    if method == "inference":
        return _inference(shape, params, dtype, batch_size, seq, notes)

    sixteen = mixed_precision or method == "qlora" or dtype != "fp32"
    act_bytes = 2.0 if sixteen else 4.0
    n_states = OPTIMIZER_STATES[optimizer]
    if method == "full":
        trainable = params
        if mixed_precision:
            weights, grads, opt = 2.0 * params, 2.0 * params, 4.0 * (1 + n_states) * params
            notes.append("mixed precision: 16-bit weights and grads, fp32 master weights and optimizer state (ZeRO)")
        else:
            per = BYTES_PER_VALUE[dtype]
            weights, grads, opt = per * params, per * params, per * n_states * params
    else:
        if shape is not None:
            mats = shape.matrices
            trainable = shape.n_layers * lora_rank * sum(i + o for i, o in mats)
        else:  # guess the width from N ≈ 12·L·d² at the usual aspect ratio d/L ≈ 128: d = (128·N/12)^(1/3)
            width = (128 * params / 12) ** (1 / 3)
            trainable = int(2 * lora_rank / width * params)
            notes.append(f"adapters estimated for a width of ~{width:.0f} (no shape given)")
        base = "nf4" if method == "qlora" else dtype
        weights = _weight_bytes(shape, params, base) + 4.0 * trainable
        grads = 4.0 * trainable
        opt = 4.0 * n_states * trainable
        notes.append(f"{method}: frozen {base} base, rank-{lora_rank} adapters on every block Linear in fp32")
    if shape is not None:
        acts = _training_activations(shape, batch_size, seq, act_bytes, flash_attention, activation_checkpointing,
                                     lora_rank if method != "full" else 0)
    else:
        allowance = ACTIVATION_VALUES_PER_PARAM * act_bytes if activations_per_param is None else activations_per_param
        acts = allowance * params
        notes.append(f"activations: allowance of {allowance:g} B/param (no shape given; pass a config for a "
                     "batch- and sequence-based estimate)")
    label = "nf4" if method == "qlora" else dtype
    return MemoryEstimate(method, label, params, trainable, weights, grads, opt, acts, 0.0, tuple(notes), active)


def experts_phrase(n_experts: int, width: int, top_k: int, renormalize: bool, shared: int) -> str:
    """A mixture of experts' MLP in words ("mixture of 8 experts x 14336, top 2 (renormalised)"),
    as `llmkit info` and the memory estimate name it."""
    renorm = " (renormalised)" if renormalize else ""
    shared_text = f"; shared expert {shared}" if shared else ""
    return f"mixture of {n_experts} experts x {width}, top {top_k}{renorm}{shared_text}"


def _moe_note(s: _Shape, method: str) -> str:
    states = "weights, gradients and optimizer state" if method == "full" else "weights"
    phrase = experts_phrase(s.n_experts, s.expert_hidden_dim, s.experts_per_token, s.router_renormalize,
                            s.shared_hidden_dim)
    return (f"{phrase}: {states} count all {s.params:,} parameters; activations only the experts each token is routed to "
            f"({s.active_params:,} parameters active per token)")


def _inference(shape: _Shape | None, params: int, dtype: str, batch: int, seq: int,
               notes: list[str]) -> MemoryEstimate:
    weights = _weight_bytes(shape, params, dtype)
    if shape is None:
        notes.append("weights only (no shape given for the KV cache and activations)")
        return MemoryEstimate("inference", dtype, params, 0, weights, notes=tuple(notes))
    p = 4.0 if dtype == "fp32" else 2.0  # quantised weights compute in 16-bit
    kv = 2.0 * shape.n_layers * batch * seq * shape.kv_dim * p
    # prefill working set of one block (residual, normed input, MLP intermediates) + last-token logits;
    # a mixture's intermediates are those of each token's k experts, on gathered copies of the tokens
    if shape.n_experts:
        mlp = shape.experts_per_token * (2 * shape.dim + 3 * shape.expert_hidden_dim) + 3 * shape.shared_hidden_dim
    else:
        mlp = (3 if shape.swiglu else 2) * shape.hidden_dim
    acts = batch * seq * (2 * shape.dim + mlp) * p + batch * shape.vocab_size * 4.0
    notes.append(f"KV cache for {batch}×{seq} tokens; activations: one block's prefill working set")
    return MemoryEstimate("inference", dtype, params, 0, weights, 0.0, 0.0, acts, kv, tuple(notes),
                          shape.active_params)
