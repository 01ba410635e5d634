"""A model's own sampling settings, as its authors ship them: what generation uses when a caller
leaves the options unset (transformers reads ``generation_config.json`` for the same purpose; vLLM
takes the same keys). A temperature without ``do_sample`` counts as sampling, as vLLM reads it
(transformers would decode greedily and warn); ``do_sample: false`` means greedy, as in both.

Where they come from, by file:
- a Hugging Face directory: ``generation_config.json`` (temperature, top_p, top_k, min_p,
  repetition_penalty, max_new_tokens; ``do_sample: false`` means greedy);
- a GGUF file: its ``general.sampling.*`` metadata (llama.cpp's keys), then a
  ``generation_config.json`` beside the file, then the recommended settings that llmkit's pull
  registry ships for the packaged models (`resolve.PACKAGED_SAMPLING`), because a GGUF file
  usually carries none.

The result uses `GenerationConfig`'s field names and holds only the keys the model sets.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# generation_config.json key -> GenerationConfig field
_HF_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
            "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_new_tokens"}
# GGUF metadata key -> GenerationConfig field
_GGUF_KEYS = {"general.sampling.temp": "temperature", "general.sampling.top_p": "top_p",
              "general.sampling.top_k": "top_k", "general.sampling.min_p": "min_p",
              "general.sampling.penalty_repeat": "repetition_penalty"}
_INTS = {"top_k", "max_new_tokens"}
GENERATION_CONFIG = "generation_config.json"


def _typed(field: str, value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if field in _INTS else float(value)


def _pick(raw: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    """The entries of `raw` named in `keys` (file key -> field), typed, under their field names."""
    typed = {field: _typed(field, raw.get(key)) for key, field in keys.items()}
    return {field: value for field, value in typed.items() if value is not None}


def from_hf(raw: dict[str, Any]) -> dict[str, Any]:
    """The sampling fields of a ``generation_config.json`` dict (see the module's note on do_sample)."""
    out = _pick(raw, _HF_KEYS)
    if raw.get("do_sample") is False:
        out["temperature"] = 0.0  # transformers decodes greedily whatever the temperature says
    return out


def to_hf(sampling: dict[str, Any]) -> dict[str, Any]:
    """`sampling` as ``generation_config.json`` keys, the inverse of `from_hf` (temperature 0 is
    written as transformers says greedy: ``do_sample: false``)."""
    out = {key: sampling[field] for key, field in _HF_KEYS.items() if field in sampling}
    if "temperature" in out:
        out["do_sample"] = out["temperature"] > 0
        if not out["do_sample"]:
            del out["temperature"]
    return out


def read_generation_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The sampling fields of ``DIR/generation_config.json`` ({} when there is none or it is not
    JSON: a damaged optional file must not stop the model from loading)."""
    path = Path(directory) / GENERATION_CONFIG
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.warning("ignoring %s: %s", path, e)
        return {}
    return from_hf(raw) if isinstance(raw, dict) else {}


def from_gguf_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The sampling fields of a GGUF file's ``general.sampling.*`` metadata."""
    return _pick(meta, _GGUF_KEYS)


def to_gguf_meta(sampling: dict[str, Any]) -> dict[str, int | float]:
    """`sampling` (GenerationConfig names) as GGUF metadata keys, the inverse of `from_gguf_meta`."""
    keys = {field: key for key, field in _GGUF_KEYS.items()}
    return {keys[f]: (int(v) if f in _INTS else float(v)) for f, v in sampling.items() if f in keys}


def packaged_sampling(gguf_file: str | os.PathLike) -> dict[str, Any]:
    """The registry's recommended settings for a GGUF file that `llmkit pull` knows by name."""
    from .resolve import PACKAGED, PACKAGED_SAMPLING

    name = Path(gguf_file).name
    for model, (_, member) in PACKAGED.items():
        if Path(member).name == name:
            return dict(PACKAGED_SAMPLING.get(model, {}))
    return {}


def sampling_defaults(path: str | os.PathLike, gguf_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model's own sampling settings for a local model path (HF directory or .gguf file);
    `gguf_meta` spares re-reading a GGUF file already open."""
    path = Path(path)
    if path.suffix != ".gguf":
        return read_generation_config(path)
    if gguf_meta is None:
        from .gguf import _reader

        fields = _reader(path).fields  # only the few sampling keys are decoded
        gguf_meta = {k: fields[k].contents() for k in _GGUF_KEYS if k in fields}
    out = packaged_sampling(path)
    out.update(read_generation_config(path.parent))
    out.update(from_gguf_meta(gguf_meta))  # the file's own metadata wins
    return out
