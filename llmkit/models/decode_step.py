"""A whole decoding step in one call: `llmkit/quant/csrc/step.cpp` runs the embedding, every block and the
head of a decoder-only model for a few rows that each add one token, reading the KV cache in place.

    step = DecodeStep.plan(model, cache)       # None where it does not apply (then call the model)
    logits = step(tokens)                      # (rows,) token ids -> (rows, vocab); the cache advances
    step = DecodeStep.for_pool(model, pool)    # the serving engine's paged cache (llmkit.infer.blocks)
    logits = step.paged(tokens, seqs, pool)    # each Sequence adds one token at its own length

Why: on a CPU a thin, deep model (SmolLM2-135M: 30 blocks, 576 wide) spends more time dispatching the
~400 torch operators of a step than reading its weights; one C++ call with one parallel region does not.
The arithmetic is the module path's (fp32, weights in their stored format: fp32, int8, int4), so greedy
tokens match it. It serves Llama-, Mistral-, Qwen2- and GPT-2-shaped models in eval mode with plain or
llmkit-quantised Linears and a `KVCache` without padding or the engine's paged cache; anything else (adapters, hooks, MoE,
encoder-decoders, dynamic rope, autocast, another device) keeps the module path, and the reason is logged
once. A plan notes the addresses of the model's and the cache's tensors (and keeps their memory alive); a
step finds them changed (a model converted or moved, a cache's rows selected) and leaves that step to the
modules. Modules swapped into the model after the plan (an adapter, quantisation) are the next plan's
business: generation plans once per call, the serving engine whenever it has been idle.
"""

from __future__ import annotations

import ctypes
import logging

import torch
from torch import nn

from ..quant import kernels
from ..quant.weight_only import Int4Linear, Int8Linear
from .cache import KVCache
from .layers import RMSNorm

log = logging.getLogger(__name__)

ACTIVATIONS = {"silu": 0, "gelu": 1, "gelu_tanh": 2, "relu": 3}
_said: set[str] = set()


class _Weight(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int64), ("w", ctypes.c_void_p), ("scale", ctypes.c_void_p),
                ("bias", ctypes.c_void_p), ("in_", ctypes.c_int64), ("out", ctypes.c_int64), ("group", ctypes.c_int64)]


class _Norm(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int64), ("w", ctypes.c_void_p), ("b", ctypes.c_void_p), ("eps", ctypes.c_double)]


class _Layer(ctypes.Structure):
    _fields_ = [("attn_norm", _Norm), ("q", _Weight), ("k", _Weight), ("v", _Weight), ("o", _Weight),
                ("mlp_norm", _Norm), ("gate", _Weight), ("up", _Weight), ("down", _Weight), ("window", ctypes.c_int64)]


_SCRATCH = ("x", "xn", "tmp", "q", "k", "v", "att", "h1", "h2", "scores")


class _Model(ctypes.Structure):
    _fields_ = ([(n, ctypes.c_int64) for n in ("dim", "n_heads", "n_kv_heads", "head_dim", "hidden", "n_layers",
                                                "max_len", "rows", "activation")]
                + [("attn_scale", ctypes.c_double)]
                + [(n, ctypes.c_void_p) for n in ("embed", "positions", "cos", "sin")]
                + [("final_norm", _Norm), ("head", _Weight), ("cache_k", ctypes.c_void_p), ("cache_v", ctypes.c_void_p),
                   ("block_size", ctypes.c_int64), ("slots", ctypes.c_int64), ("layers", ctypes.POINTER(_Layer))]
                + [(n, ctypes.c_void_p) for n in _SCRATCH])


class Unsupported(Exception):
    """Why a model or cache is left to the module path."""


def _ptr(t: torch.Tensor | None, keep: list) -> int | None:
    """`t`'s address, noted in `keep` with `t` itself (watched before each step: a model moved or converted
    since the plan is not read through stale pointers) and a detached view that keeps the memory alive
    whatever happens to `t`."""
    if t is None:
        return None
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.int8, torch.uint8) or not t.is_contiguous():
        raise Unsupported(f"a {t.dtype} tensor on {t.device} (contiguous={t.is_contiguous()})")
    keep.append((t, t.data_ptr(), t.detach()))
    return t.data_ptr()


def _weight(mod: nn.Module | None, keep: list) -> _Weight:
    if mod is None:
        return _Weight()
    bias = getattr(mod, "bias", None)
    if type(mod) is nn.Linear:
        if mod.weight.dtype != torch.float32:
            raise Unsupported(f"a {mod.weight.dtype} Linear")
        return _Weight(0, _ptr(mod.weight, keep), None, _ptr(bias, keep), mod.in_features, mod.out_features, 0)
    if type(mod) in (Int8Linear, Int4Linear) and mod.fused:
        int4 = type(mod) is Int4Linear
        if int4 and mod.group_size % 16:
            raise Unsupported(f"int4 groups of {mod.group_size} (the kernel takes multiples of 16)")
        return _Weight(2 if int4 else 1, _ptr(mod.qweight, keep), _ptr(mod.scale, keep), _ptr(bias, keep),
                       mod.in_features, mod.out_features, mod.group_size if int4 else 0)
    raise Unsupported(f"a {type(mod).__name__} (adapters and other wrapped layers run as modules)")


def _norm(mod: nn.Module, keep: list) -> _Norm:
    if type(mod) is RMSNorm:
        return _Norm(0, _ptr(mod.weight, keep), None, mod.eps)
    if type(mod) is nn.LayerNorm and mod.weight is not None and len(mod.normalized_shape) == 1:
        return _Norm(1, _ptr(mod.weight, keep), _ptr(mod.bias, keep), mod.eps)
    raise Unsupported(f"a {type(mod).__name__} norm")


def _drops(model: nn.Module) -> bool:
    """Whether the model would apply dropout (a module in training mode with a nonzero rate)."""
    return any(m.training and (isinstance(m, nn.Dropout) and m.p or getattr(m, "dropout", 0))
               for m in model.modules())


def _check(model: nn.Module) -> None:
    cfg = model.config
    hooks = (getattr(nn.modules.module, "_global_forward_hooks", None),
             getattr(nn.modules.module, "_global_forward_pre_hooks", None))
    for what, bad in ((f"a model on {model.device}", model.device.type != "cpu"),
                      ("an encoder-decoder", cfg.is_seq2seq), ("bidirectional attention", not cfg.causal),
                      ("post-norm blocks", cfg.post_norm), ("a mixture of experts", cfg.is_moe),
                      ("token types", cfg.type_vocab_size), ("an MLM head", cfg.head_transform or cfg.head != "lm"),
                      ("a scaled tied head", cfg.scale_tied_head),
                      (f"{cfg.positions} positions", cfg.positions not in ("rope", "learned", "none")),
                      ("dynamic rope scaling", cfg.positions == "rope" and model.model.rotary.dynamic),
                      ("no output head", model.lm_head is None or model.head_transform is not None),
                      ("training mode", model.training or _drops(model)),
                      ("autocast", torch.is_autocast_enabled("cpu")),
                      (f"an MLP {cfg.hidden_dim} wide (not a multiple of 8)", cfg.hidden_dim % 8),
                      ("forward hooks", any(hooks) or any(m._forward_hooks or m._forward_pre_hooks
                                                          for m in model.modules()))):
        if bad:
            raise Unsupported(what)


class DecodeStep:
    """The C++ decoding step over one model and its cache (see the module docstring): a `KVCache`
    (`plan`, then `step(tokens)`) or the serving engine's `BlockPool` (`for_pool`, then
    `step.paged(tokens, seqs, pool)`)."""

    def __init__(self, model: nn.Module, k: torch.Tensor, v: torch.Tensor, rows: int, max_len: int, block_size: int,
                 lib: ctypes.CDLL):
        cfg, keep = model.config, []
        dim, d = cfg.dim, cfg.head_dim
        layers = (_Layer * cfg.n_layers)()
        for i, block in enumerate(model.model.layers):
            attn, mlp = block.self_attn, block.mlp
            layers[i] = _Layer(_norm(block.input_layernorm, keep), *(_weight(getattr(attn, n), keep)
                                                                      for n in ("q_proj", "k_proj", "v_proj", "o_proj")),
                               _norm(block.post_attention_layernorm, keep),
                               _weight(mlp.gate_proj if mlp.gated else None, keep), _weight(mlp.up_proj, keep),
                               _weight(mlp.down_proj, keep), cfg.sliding_window_for(i) or 0)
        cos = sin = positions = None
        if cfg.positions == "rope":
            cos, sin = model.model.rotary(torch.arange(max_len)[None], torch.float32)
            cos, sin = cos[0].contiguous(), sin[0].contiguous()
        elif cfg.positions == "learned":
            positions = model.model.embed_positions.weight
        if model.model.embed_tokens.weight.dtype != torch.float32:
            raise Unsupported(f"{model.model.embed_tokens.weight.dtype} embeddings")
        q_dim, kv_dim = cfg.n_heads * d, cfg.n_kv_heads * d
        sizes = {"x": dim, "xn": dim, "tmp": dim, "q": q_dim, "k": kv_dim, "v": kv_dim, "att": q_dim,
                 "h1": cfg.hidden_dim, "h2": cfg.hidden_dim, "scores": cfg.n_heads * max_len}
        scratch = {n: torch.empty(rows * sizes[n]) for n in _SCRATCH}
        slots = k.shape[1] if block_size else 0
        self.model_struct = _Model(dim, cfg.n_heads, cfg.n_kv_heads, d, cfg.hidden_dim, cfg.n_layers, max_len,
                                   rows, ACTIVATIONS[cfg.activation],
                                   cfg.attn_scale if cfg.attn_scale is not None else d ** -0.5,
                                   _ptr(model.model.embed_tokens.weight, keep), _ptr(positions, keep),
                                   _ptr(cos, keep), _ptr(sin, keep), _norm(model.model.norm, keep),
                                   _weight(model.lm_head, keep), _ptr(k, keep), _ptr(v, keep), block_size, slots,
                                   layers, *(_ptr(scratch[n], keep) for n in _SCRATCH))
        self._keep, self._layers = keep, layers
        self.rows, self.max_len, self.block_size = rows, max_len, block_size
        # a conversion or a move replaces every tensor, so every 8th is watched (each costs ~0.3 us a step);
        # one tensor replaced by hand is still kept alive by `keep`, never read freed
        self._watch = [(t, at) for t, at, _ in keep[::8]]
        self.cache_at = (k.data_ptr(), v.data_ptr())
        self.vocab, self.lib = cfg.vocab_size, lib
        self.max_positions = min(max_len, cfg.max_seq_len if cfg.positions == "learned" else max_len)
        self.cache: KVCache | None = None

    @classmethod
    def _make(cls, model: nn.Module, checks: tuple[tuple[str, bool], ...], *args) -> DecodeStep | None:
        try:
            _check(model)
            for what, bad in checks:
                if bad:
                    raise Unsupported(what)
            lib = kernels.library()
            return None if lib is None else cls(model, *args, lib)
        except Unsupported as e:
            if str(e) not in _said:
                _said.add(str(e))
                log.info("the C++ decoding step does not serve %s: decoding runs the model's modules", e)
            return None

    @classmethod
    def plan(cls, model: nn.Module, cache: KVCache) -> DecodeStep | None:
        """A step for `model` and `cache`, or None where the C++ step does not serve them (said once)."""
        checks = ((f"a {type(cache).__name__}", type(cache) is not KVCache),
                  ("a cache with padding", getattr(cache, "valid", None) is not None),
                  (f"{cache.batch_size} rows (at most {kernels.MAX_ROWS})", cache.batch_size > kernels.MAX_ROWS))
        step = cls._make(model, checks, cache.k, cache.v, cache.batch_size, cache.max_len, 0)
        if step is not None:
            step.cache = cache
        return step

    @classmethod
    def for_pool(cls, model: nn.Module, pool) -> DecodeStep | None:
        """A step for up to `kernels.MAX_ROWS` requests of the serving engine at a time, over its `BlockPool`
        (`llmkit.infer.blocks`), or None where the C++ step does not serve the model (said once)."""
        checks = (("a pool of another layout", pool.k.dim() != 4 or not pool.k.is_contiguous()),)
        # no request holds more positions than the pool has slots: that bounds the rope tables and scores
        return cls._make(model, checks, pool.k, pool.v, kernels.MAX_ROWS, min(model.config.context_window, pool.sink),
                         pool.block_size)

    def _changed(self, k: torch.Tensor, v: torch.Tensor) -> bool:
        """Whether the model or the cache moved since the plan (then the module path reads them as they are)."""
        return (k.data_ptr(), v.data_ptr()) != self.cache_at or any(t.data_ptr() != at for t, at in self._watch)

    def _run(self, tokens: torch.Tensor, positions: list[int], blocks: torch.Tensor | None = None) -> torch.Tensor | None:
        ids = tokens.reshape(-1).to(torch.int64).contiguous()
        rows = len(positions)
        if ids.numel() != rows or not 0 < rows <= self.rows or int(ids.min()) < 0 or int(ids.max()) >= self.vocab:
            return None
        where = torch.tensor(positions, dtype=torch.int64)
        logits = torch.empty(rows, self.vocab)
        self.lib.decode_step(ctypes.addressof(self.model_struct), rows, ids.data_ptr(), where.data_ptr(),
                             None if blocks is None else blocks.data_ptr(), 0 if blocks is None else blocks.shape[1],
                             logits.data_ptr(), torch.get_num_threads())
        return logits

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """Logits (rows, vocab) after adding one token per row of the planned `KVCache`; None (nothing written)
        where the step cannot take it: the caller then runs the model, which also raises the errors of a
        full cache."""
        cache = self.cache
        pos = cache.length
        if (pos >= self.max_positions or cache.batch_size != self.rows or cache.valid is not None
                or self._changed(cache.k, cache.v)):
            return None
        logits = self._run(tokens, [pos] * cache.batch_size)
        if logits is not None:
            cache.advance(1)
        return logits

    def paged(self, tokens: torch.Tensor, seqs: list, pool) -> torch.Tensor | None:
        """Logits (rows, vocab) after each `Sequence` of `pool` adds its token (one per row) at its own length;
        their blocks must already hold that position. None (nothing written) where the step cannot take it."""
        bs = self.block_size
        if (pool.block_size != bs or self._changed(pool.k, pool.v)
                or any(s.length >= self.max_positions or len(s.blocks) * bs <= s.length for s in seqs)):
            return None
        width = max(len(s.blocks) for s in seqs)
        blocks = torch.tensor([s.blocks + [0] * (width - len(s.blocks)) for s in seqs], dtype=torch.int64)
        logits = self._run(tokens, [s.length for s in seqs], blocks)
        if logits is not None:
            for s in seqs:
                s.length += 1
        return logits
