"""GGUF checkpoints (llama.cpp's file format) in and out, read and written with the `gguf`
package, the format's reference implementation (no hand-written parser).

Import: metadata -> an HF-style config -> `ModelConfig`; every tensor dequantised (F32, F16, BF16,
Q8_0, Q4_0/1, Q5_0/1 and the K-quants the package knows) one at a time into the model, under our
own tensor names. llama.cpp's converter permutes the query and key rows of `llama` models for its
rotary layout (interleaved pairs); that permutation is undone here (`qwen2` keeps the NeoX layout
and is not permuted). A missing ``output.weight`` means a tied head. Mixtures of experts (Mixtral
as ``llama`` with experts, ``qwen2moe``) keep their layout in `gguf_moe`.

Export: `save_gguf` writes GGUF v3 with the architecture metadata, the permutation, the
tokenizer (see `llmkit.tokenizer.gguf`) and F32 / F16 / Q8_0 / Q4_0 tensors.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterator

import torch

from .config import ModelConfig
from .hf import CheckpointError, config_from_hf, finish_model
from .sampling_defaults import to_gguf_meta
from .transformer import Transformer

log = logging.getLogger(__name__)

ARCHITECTURES = ("llama", "qwen2", "gpt2", "qwen2moe")
VERSIONS = (2, 3)
EXPORT_TYPES = ("f32", "f16", "q8_0", "q4_0")


class GGUFError(CheckpointError):
    """A GGUF file cannot be read or written; the message names the file, key or tensor."""


def _gguf():
    try:
        import gguf
    except ImportError as e:  # the `gguf` extra
        raise GGUFError("reading and writing GGUF needs the gguf package: pip install 'llmkit[gguf]'") from e
    return gguf


def _reader(path: Path):
    """The package's GGUFReader over a plain ndarray view of its memory map: slicing an
    `np.memmap` runs Python code per slice (`__array_finalize__`), and the reader slices once per
    vocabulary entry (~100k for SmolLM2: 7 s of its 8); a plain view of the same mapping is C-speed."""
    import numpy as np

    gguf = _gguf()

    class Reader(gguf.GGUFReader):
        @property
        def data(self):
            return self._plain

        @data.setter
        def data(self, value):
            self._plain = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    return Reader(path, "r")


# ------------------------------------------------------------------------------ tensor names
# llama.cpp's names -> ours, per architecture; blocks are "blk.{i}.<name>" -> "model.layers.{i}.<ours>"
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
        "position_embd": "model.embed_positions"}
_BLOCK = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
          "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
          "attn_qkv": "self_attn.qkv",  # GPT-2's fused projection, split on import
          "ffn_gate_inp": "mlp.gate", "ffn_gate_exps": "mlp.experts.gate_proj",  # experts: see gguf_moe
          "ffn_up_exps": "mlp.experts.up_proj", "ffn_down_exps": "mlp.experts.down_proj",
          "ffn_gate_shexp": "mlp.shared_expert.gate_proj", "ffn_up_shexp": "mlp.shared_expert.up_proj",
          "ffn_down_shexp": "mlp.shared_expert.down_proj", "ffn_gate_inp_shexp": "mlp.shared_expert_gate"}
_OURS_TOP = {v: k for k, v in _TOP.items()}
_OURS_BLOCK = {v: k for k, v in _BLOCK.items()}


def our_name(name: str) -> str | None:
    """llama.cpp tensor name -> ours (None for a name we do not know)."""
    stem, _, kind = name.rpartition(".")
    if stem in _TOP:
        return f"{_TOP[stem]}.{kind}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _BLOCK:
        return f"model.layers.{parts[1]}.{_BLOCK[parts[2]]}.{kind}"
    return None


def gguf_name(name: str) -> str:
    """Our tensor name -> llama.cpp's."""
    stem, _, kind = name.rpartition(".")
    if stem in _OURS_TOP:
        return f"{_OURS_TOP[stem]}.{kind}"
    parts = stem.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _OURS_BLOCK:
        return f"blk.{parts[2]}.{_OURS_BLOCK[parts[3]]}.{kind}"
    raise GGUFError(f"tensor {name} has no GGUF name")


def _rotary_permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's query/key row order (pairs of rotary halves interleaved per head)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _rotary_unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Inverse of `_rotary_permute`: back to the HF (rotate-half) row order."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


# ------------------------------------------------------------------------------- reading
class GGUFFile:
    """An open GGUF file: `meta` (key -> Python value; arrays as lists), `tensors` (name ->
    the package's ReaderTensor), `architecture`. Checks magic, version, architecture, tensor
    types and that every tensor lies inside the file before anything large is allocated."""

    def __init__(self, path: str | os.PathLike):
        self.path = path = Path(path)
        if not path.is_file():
            raise GGUFError(f"{path} does not exist or is not a file")
        with open(path, "rb") as f:
            head = f.read(8)
        if head[:4] != b"GGUF":
            raise GGUFError(f"{path} is not a GGUF file (it starts with {head[:4]!r}, not b'GGUF')")
        if len(head) < 8:
            raise GGUFError(f"{path} is truncated: {len(head)} bytes, too short for a GGUF header")
        version = int.from_bytes(head[4:8], "little")
        if version not in VERSIONS:
            raise GGUFError(f"{path} is GGUF version {version}; llmkit reads versions "
                            f"{', '.join(map(str, VERSIONS))} (convert it again with a current llama.cpp)")
        try:
            reader = _reader(path)
        except Exception as e:  # the package raises ValueError/IndexError/struct errors on damage
            raise GGUFError(f"cannot read {path}: it is truncated or damaged ({type(e).__name__}: {e}); "
                            "copy or download it again") from e
        self.meta: dict[str, Any] = {}
        for key, field in reader.fields.items():
            if key.startswith("GGUF."):
                continue
            try:
                self.meta[key] = field.contents()
            except Exception as e:
                raise GGUFError(f"{path}: metadata key {key} cannot be read ({e})") from e
        self.tensors = {t.name: t for t in reader.tensors}
        size = path.stat().st_size
        for t in reader.tensors:
            end = int(t.data_offset) + int(t.n_bytes)
            if end > size or t.data.nbytes != int(t.n_bytes):
                raise GGUFError(f"{path} is truncated: tensor {t.name} ends at byte {end} of a {size}-byte file; "
                                "copy or download it again")
        self.architecture = arch = self.meta.get("general.architecture")
        if arch not in ARCHITECTURES:
            experts = self.meta.get(f"{arch}.expert_count")
            kind = f" (a mixture of experts: {arch}.expert_count={experts})" if experts else ""
            raise GGUFError(f"{path}: architecture {arch!r}{kind} is not supported; llmkit reads "
                            f"{', '.join(ARCHITECTURES)} (mixtures of experts: llama with experts, i.e. Mixtral, "
                            "and qwen2moe)")
        self._check_types()
        self.reader = reader
        from .gguf_moe import is_head_copy

        self.head_copy = is_head_copy(self)  # a tied qwen2moe head, written out for llama.cpp
        self.names = [n for n in self.tensors if not (self.head_copy and n == "output.weight")]

    def _check_types(self) -> None:
        import numpy as np

        gguf = _gguf()
        seen = {t.tensor_type for t in self.tensors.values()}
        for qtype in seen:
            _, nbytes = gguf.GGML_QUANT_SIZES[qtype]
            try:  # one zero block through the package's dequantiser tells whether it has one
                gguf.quants.dequantize(np.zeros((1, nbytes), dtype=np.uint8), qtype)
            except NotImplementedError:
                users = [n for n, t in self.tensors.items() if t.tensor_type == qtype]
                raise GGUFError(f"{self.path}: tensor type {qtype.name} (e.g. {users[0]}) cannot be dequantised by the "
                                f"gguf package {getattr(gguf, '__version__', '')}; re-quantise the model to a common "
                                "type (Q8_0, Q4_K_M, F16)") from None

    def key(self, name: str, default: Any = ..., arch: bool = True) -> Any:
        full = f"{self.architecture}.{name}" if arch else name
        if full in self.meta:
            return self.meta[full]
        if default is ...:
            raise GGUFError(f"{self.path}: metadata key {full} is missing; a {self.architecture} model needs it")
        return default

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's logical shape in torch order (GGUF lists dimensions innermost first)."""
        return tuple(int(d) for d in reversed(self.tensors[name].shape.tolist()))

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor dequantised to fp32, in torch order."""
        gguf = _gguf()
        t = self.tensors[name]
        try:
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
        except Exception as e:
            raise GGUFError(f"{self.path}: tensor {name} ({t.tensor_type.name}) cannot be dequantised: {e}") from e
        arr = arr.astype("float32", copy=not arr.flags.writeable)  # F32 comes back as a view of the file
        return torch.from_numpy(arr.reshape(self.shape(name)))

    # ------------------------------------------------------------------ config
    def hf_config(self) -> dict[str, Any]:
        """The HF config.json dict this file describes."""
        arch = self.architecture
        if "token_embd.weight" not in self.tensors:
            raise GGUFError(f"{self.path}: no token_embd.weight tensor; this is not a language model checkpoint")
        vocab = self.shape("token_embd.weight")[0]
        tied = "output.weight" not in self.tensors or self.head_copy
        ids = {k: self.meta.get(f"tokenizer.ggml.{g}_token_id") for k, g in
               (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "padding"))}
        ids = {k: int(v) if v is not None else None for k, v in ids.items()}
        dim, heads = int(self.key("embedding_length")), int(self.key("attention.head_count"))
        common = dict(vocab_size=vocab, tie_word_embeddings=tied, **ids)
        if arch == "gpt2":
            return dict(model_type="gpt2", n_embd=dim, n_layer=int(self.key("block_count")), n_head=heads,
                        n_inner=int(self.key("feed_forward_length")), n_positions=int(self.key("context_length")),
                        layer_norm_epsilon=float(self.key("attention.layer_norm_epsilon")),
                        activation_function="gelu_new", **common)
        head_dim = int(self.key("attention.key_length", dim // heads))
        rot = self.key("rope.dimension_count", head_dim)
        if int(rot) != head_dim:
            raise GGUFError(f"{self.path}: {arch}.rope.dimension_count={rot} rotates part of each {head_dim}-wide head; "
                            "llmkit's rotary embedding covers whole heads")
        if "rope_freqs.weight" in self.tensors:
            raise GGUFError(f"{self.path}: the file scales rotary frequencies with a rope_freqs tensor (Llama 3.1 style); "
                            "llmkit reads that scaling from an HF config.json only: convert the HF checkpoint instead")
        scaling = None
        kind = self.key("rope.scaling.type", None)
        if kind not in (None, "none"):
            if kind != "linear":
                raise GGUFError(f"{self.path}: {arch}.rope.scaling.type={kind!r} is not supported; llmkit reads 'linear'")
            scaling = {"rope_type": "linear", "factor": float(self.key("rope.scaling.factor"))}
        out = dict(model_type=arch, hidden_size=dim, num_hidden_layers=int(self.key("block_count")),
                   num_attention_heads=heads, num_key_value_heads=int(self.key("attention.head_count_kv", heads)),
                   head_dim=head_dim, intermediate_size=int(self.key("feed_forward_length")),
                   max_position_embeddings=int(self.key("context_length")),
                   rms_norm_eps=float(self.key("attention.layer_norm_rms_epsilon")),
                   rope_theta=float(self.key("rope.freq_base", 10000.0)), rope_scaling=scaling,
                   hidden_act="silu", **common)
        if arch == "llama":
            out["attention_bias"] = "blk.0.attn_q.bias" in self.tensors
            out["mlp_bias"] = "blk.0.ffn_up.bias" in self.tensors
        from .gguf_moe import moe_hf_config

        out.update(moe_hf_config(self))  # model_type mixtral / qwen2_moe and the expert fields
        return out

    def config(self) -> ModelConfig:
        try:
            return config_from_hf(self.hf_config())
        except GGUFError:
            raise  # it names the file already
        except (ValueError, KeyError) as e:
            raise GGUFError(f"{self.path}: {e}") from e

    # ------------------------------------------------------------------ weights
    def state(self, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
        """(our name, fp32 tensor) in file order, permutation undone and GPT-2's qkv split. The
        package dequantises in numpy, which releases the GIL: a thread per core (1.7x on 2 cores)."""
        from concurrent.futures import ThreadPoolExecutor

        names = self.names
        for name in names:
            if our_name(name) is None:
                raise GGUFError(f"{self.path}: tensor {name} is not part of a {self.architecture} model llmkit knows")
        with ThreadPoolExecutor(max(1, min(8, torch.get_num_threads()))) as pool:
            for name, t in zip(names, pool.map(self.tensor, names)):
                yield from self._ours(name, t, cfg)

    def _ours(self, name: str, t: torch.Tensor, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
        from .gguf_moe import split

        ours = our_name(name)
        experts = split(ours, t, cfg)
        if experts is not None:
            yield from experts
            return
        if ours.endswith(("self_attn.qkv.weight", "self_attn.qkv.bias")):
            prefix, kind = ours.rsplit(".qkv.", 1)
            for part, piece in zip(("q_proj", "k_proj", "v_proj"), t.split([cfg.q_dim, cfg.kv_dim, cfg.kv_dim])):
                yield f"{prefix}.{part}.{kind}", piece.contiguous()
            return
        if self.architecture == "llama" and ".self_attn.q_proj." in ours:
            t = _rotary_unpermute(t, cfg.n_heads)
        elif self.architecture == "llama" and ".self_attn.k_proj." in ours:
            t = _rotary_unpermute(t, cfg.n_kv_heads)
        yield ours, t


def read_gguf_config(path: str | os.PathLike) -> ModelConfig:
    return GGUFFile(path).config()


def load_gguf(path: str | os.PathLike | GGUFFile, device: torch.device | str | None = None,
              dtype: str | torch.dtype | None = None, quantize: str | None = None) -> tuple[Transformer, Any]:
    """(model, tokenizer) from a GGUF file (a path, or a `GGUFFile` already open: its metadata
    is then not parsed again), dequantised into `dtype` (fp32 on CPU by default); `quantize`
    ("int8" / "int4") then stores the block Linears in llmkit's weight-only format."""
    from ..tokenizer.gguf import GGUFTokenizerError, tokenizer_from_gguf
    from ..utils import parse_dtype

    f = path if isinstance(path, GGUFFile) else GGUFFile(path)
    cfg = f.config()
    try:
        tokenizer = tokenizer_from_gguf(f.meta, context_length=cfg.max_seq_len)
    except GGUFTokenizerError as e:
        raise GGUFError(f"{f.path}: {e}") from e
    device = torch.device(device or "cpu")
    dtype = parse_dtype(dtype, device)
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()
                if not (cfg.tie_embeddings and k == "lm_head.weight")}
    from .gguf_moe import check_expert_tensors, stacked_shapes

    check_expert_tensors(f, cfg)
    expected = stacked_shapes(expected)  # the experts of a block as the file holds them: one tensor each kind
    found = {}
    for name in f.names:
        ours = our_name(name)
        if ours is None:
            raise GGUFError(f"{f.path}: tensor {name} is not part of a {f.architecture} model llmkit knows")
        found[ours] = f.shape(name)
        if ours.endswith("mlp.shared_expert_gate.weight") and found[ours] == (cfg.dim,):
            found[ours] = (1, cfg.dim)  # llama.cpp reads it as a vector: either shape is the same gate
    if f.architecture == "gpt2":  # the fused projection stands for its three parts
        for key in [k for k in found if ".self_attn.qkv." in k]:
            prefix, kind = key.rsplit(".qkv.", 1)
            shape = found.pop(key)
            for part, rows in (("q_proj", cfg.q_dim), ("k_proj", cfg.kv_dim), ("v_proj", cfg.kv_dim)):
                found[f"{prefix}.{part}.{kind}"] = (rows, *shape[1:])
    missing = [k for k in expected if k not in found]
    if missing:
        raise GGUFError(f"{f.path}: missing tensor(s) {[gguf_name(k) for k in missing[:5]]} "
                        f"({len(missing)} of {len(expected)}) that its metadata implies")
    extra = [k for k in found if k not in expected]
    if extra:
        raise GGUFError(f"{f.path}: unexpected tensor(s) {[gguf_name(k) for k in extra[:5]]} for its metadata")
    for k, shape in expected.items():
        if found[k] != shape:
            raise GGUFError(f"{f.path}: tensor {gguf_name(k)} has shape {list(found[k])} but the metadata implies "
                            f"{list(shape)}")
    # copy=True: fresh 64-byte aligned buffers (numpy's are 16-byte aligned; batch-1 matmuls over
    # them measured ~1.4x slower on SmolLM2)
    ours = {k: t.to(device=device, dtype=dtype, copy=True) for k, t in f.state(cfg)}
    model = finish_model(model, ours, cfg, device, f.path)
    if quantize:
        from ..quant.weight_only import quantize_model

        quantize_model(model, quantize)
    return model, tokenizer


# ------------------------------------------------------------------------------- writing
def save_gguf(model: Transformer, tokenizer: Any, path: str | os.PathLike, type: str = "f32",
              name: str | None = None, sampling: dict[str, Any] | None = None) -> Path:
    """Write `model` and `tokenizer` as GGUF v3 (atomically). `type`: f32, f16, q8_0 or q4_0 for
    the 2-D weights (norms, biases and - at q4_0 - tensors whose rows are not a multiple of the
    32-wide block stay f32 / f16 as llama.cpp expects). `sampling` (the model's own settings, by
    `GenerationConfig` names) goes into llama.cpp's ``general.sampling.*`` keys."""
    import numpy as np

    from ..quant.weight_only import is_quantized
    from ..tokenizer.gguf import GGUFTokenizerError, gguf_tokenizer_metadata
    from ..utils import atomic_path

    gguf = _gguf()
    if type not in EXPORT_TYPES:
        raise GGUFError(f"type={type!r} is not a GGUF export type llmkit writes: use one of {', '.join(EXPORT_TYPES)}")
    if is_quantized(model):
        raise GGUFError("the model is stored in llmkit's int8/int4 format: export the full-precision model "
                        "(llama.cpp quantises with its own block types: --type q8_0 or q4_0)")
    cfg = model.config
    arch = cfg.family
    if cfg.is_moe:
        from .gguf_moe import export_arch

        arch = export_arch(cfg)
    elif arch == "mistral":
        arch = "llama"  # llama.cpp reads Mistral as llama (no sliding window there)
        if cfg.sliding_window is not None:
            raise GGUFError("a sliding-window model cannot be exported to GGUF's llama architecture")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"family={cfg.family!r} cannot be exported to GGUF: llmkit writes {', '.join(ARCHITECTURES)}")
    if cfg.family == "qwen2" and cfg.layer_types and "sliding_attention" in cfg.layer_types:
        raise GGUFError("qwen2 sliding-window layers have no GGUF metadata: export a model without them")
    if cfg.rope_scaling and cfg.rope_scaling.get("rope_type") != "linear":
        raise GGUFError(f"rope scaling {cfg.rope_scaling.get('rope_type')!r} has no GGUF metadata llmkit writes")
    try:
        tok_meta = gguf_tokenizer_metadata(tokenizer)
    except GGUFTokenizerError as e:
        raise GGUFError(str(e)) from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[type]
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_name(name or path.stem)
        w.add_file_type({"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2}[type])
        for key, value in to_gguf_meta(sampling or {}).items():
            (w.add_int32 if isinstance(value, int) else w.add_float32)(key, value)
        w.add_block_count(cfg.n_layers)
        w.add_context_length(cfg.max_seq_len)
        w.add_embedding_length(cfg.dim)
        w.add_feed_forward_length(cfg.hidden_dim)
        w.add_head_count(cfg.n_heads)
        if arch == "gpt2":
            w.add_layer_norm_eps(cfg.norm_eps)
        else:
            w.add_head_count_kv(cfg.n_kv_heads)
            w.add_layer_norm_rms_eps(cfg.norm_eps)
            w.add_rope_freq_base(cfg.rope_theta)
            w.add_rope_dimension_count(cfg.head_dim)
            if cfg.head_dim != cfg.dim // cfg.n_heads:
                w.add_key_length(cfg.head_dim)
                w.add_value_length(cfg.head_dim)
            if cfg.rope_scaling:
                w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
                w.add_rope_scaling_factor(float(cfg.rope_scaling["factor"]))
        w.add_vocab_size(cfg.vocab_size)
        if cfg.is_moe:
            from .gguf_moe import KEEP_F32, add_moe_metadata, export_experts

            add_moe_metadata(w, cfg, arch)
        _add_tokenizer(w, tok_meta)
        # (qwen2moe: a tied head is written as a copy of the embedding, which llama.cpp requires there)
        sd = {k: v for k, v in model.state_dict().items()
              if not (cfg.tie_embeddings and k == "lm_head.weight" and arch != "qwen2moe")}
        if cfg.is_moe:
            sd = export_experts(sd)
        for ours, t in _export_tensors(sd, cfg, arch):
            arr = t.detach().to("cpu", torch.float32).contiguous().numpy()
            if arr.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32 or (cfg.is_moe and ours.endswith(KEEP_F32)):
                w.add_tensor(gguf_name(ours), arr)
                continue
            if qtype == gguf.GGMLQuantizationType.F16:
                w.add_tensor(gguf_name(ours), arr.astype(np.float16))
                continue
            block = gguf.GGML_QUANT_SIZES[qtype][0]
            if arr.shape[-1] % block:
                log.info("%s stays f16: its rows (%d) are not a multiple of the %d-wide block", ours, arr.shape[-1], block)
                w.add_tensor(gguf_name(ours), arr.astype(np.float16))
                continue
            data = gguf.quants.quantize(arr, qtype)
            w.add_tensor(gguf_name(ours), data, raw_shape=data.shape, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


def _add_tokenizer(w: Any, meta: dict[str, Any]) -> None:
    w.add_tokenizer_model(meta["tokenizer.ggml.model"])
    if "tokenizer.ggml.pre" in meta:
        w.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    w.add_token_list(meta["tokenizer.ggml.tokens"])
    w.add_token_types(meta["tokenizer.ggml.token_type"])
    if "tokenizer.ggml.scores" in meta:
        w.add_token_scores(meta["tokenizer.ggml.scores"])
    if meta.get("tokenizer.ggml.merges"):
        w.add_token_merges(meta["tokenizer.ggml.merges"])
    for key, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("unknown", w.add_unk_token_id),
                     ("padding", w.add_pad_token_id)):
        if f"tokenizer.ggml.{key}_token_id" in meta:
            add(meta[f"tokenizer.ggml.{key}_token_id"])
    w.add_add_bos_token(meta["tokenizer.ggml.add_bos_token"])
    w.add_add_eos_token(meta["tokenizer.ggml.add_eos_token"])
    if "tokenizer.ggml.add_space_prefix" in meta:
        w.add_add_space_prefix(meta["tokenizer.ggml.add_space_prefix"])
    if "tokenizer.chat_template" in meta:
        w.add_chat_template(meta["tokenizer.chat_template"])


def _export_tensors(sd: dict[str, torch.Tensor], cfg: ModelConfig, arch: str) -> Iterator[tuple[str, torch.Tensor]]:
    for k, t in sd.items():
        if arch == "gpt2" and ".self_attn." in k and not k.split(".self_attn.")[1].startswith("o_proj"):
            part, kind = k.split(".self_attn.")[1].split(".")
            if part != "q_proj":
                continue  # fused with q
            prefix = k.split(".self_attn.")[0]
            fused = torch.cat([sd[f"{prefix}.self_attn.{p}.{kind}"] for p in ("q_proj", "k_proj", "v_proj")])
            yield f"{prefix}.self_attn.qkv.{kind}", fused
            continue
        if arch == "llama" and ".self_attn.q_proj." in k:
            t = _rotary_permute(t, cfg.n_heads)
        elif arch == "llama" and ".self_attn.k_proj." in k:
            t = _rotary_permute(t, cfg.n_kv_heads)
        yield k, t
