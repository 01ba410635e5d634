"""Sentence embeddings as a sentence-transformers directory describes them: which pooling turns
a model's last hidden states into one vector per text, whether that vector is L2-normalised, and
how many tokens a text may have.

    spec = read_embedding_spec("all-MiniLM-L6-v2")   # EmbeddingSpec(('mean',), normalize=True, 256)
    vectors = pool(hidden, attention_mask, spec)      # (batch, dim), padding excluded

A plain model directory (no ``modules.json``) has no spec: `default_spec` (mean pooling, no
normalisation) is what decoders get. The files are read here rather than through
sentence-transformers, which would import transformers and build its own model around them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .texts import pad_right, truncate_ids  # noqa: F401  (truncate_ids: where `embed` cuts, re-exported)

log = logging.getLogger(__name__)

MODULES_FILE = "modules.json"
# sentence-transformers' pooling modes, in the order it concatenates them when several are on
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "lasttoken")
_LEGACY_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


class EmbeddingSpecError(ValueError):
    """A sentence-transformers directory that llmkit cannot embed with as its files say."""


@dataclass(frozen=True)
class EmbeddingSpec:
    """How a model embeds a text: `pooling` (one or more of `POOLING_MODES`, concatenated in
    that order), `normalize` (L2, as a ``Normalize`` module does), `max_seq_length` (tokens per
    text, special tokens included; None: the model's context window) and `lowercase` (the
    ``do_lower_case`` of sentence_bert_config.json: texts are lowercased before tokenizing)."""

    pooling: tuple[str, ...] = ("mean",)
    normalize: bool = False
    max_seq_length: int | None = None
    lowercase: bool = False

    def __post_init__(self) -> None:
        bad = [m for m in self.pooling if m not in POOLING_MODES]
        if not self.pooling or bad:
            raise EmbeddingSpecError(f"pooling={list(self.pooling)!r}: use one or more of {', '.join(POOLING_MODES)}")
        if self.max_seq_length is not None and (not isinstance(self.max_seq_length, int) or self.max_seq_length < 1):
            raise EmbeddingSpecError(f"max_seq_length={self.max_seq_length!r} must be a positive integer or None")

    def describe(self) -> str:
        """One phrase: ``mean pooling, normalised, at most 256 tokens``."""
        parts = [f"{'+'.join(self.pooling)} pooling", "normalised" if self.normalize else "not normalised"]
        if self.max_seq_length:
            parts.append(f"at most {self.max_seq_length} tokens")
        return ", ".join(parts)


def default_spec() -> EmbeddingSpec:
    """What a model without sentence-transformers files embeds with: the mean of its last hidden
    states over the text's tokens, not normalised."""
    return EmbeddingSpec()


def _read_json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EmbeddingSpecError(f"{path} is missing: {path.parent} names it in {MODULES_FILE}") from None
    except (OSError, ValueError) as e:
        raise EmbeddingSpecError(f"{path} cannot be read as JSON: {e}") from e


def _pooling_modes(config: dict, path: Path) -> tuple[str, ...]:
    """The modes of a Pooling config: the ``pooling_mode`` key (sentence-transformers 5+), or the
    ``pooling_mode_*_token(s)`` booleans of older files."""
    if "pooling_mode" in config:
        raw = config["pooling_mode"]
        modes = (raw,) if isinstance(raw, str) else tuple(raw or ())
    else:
        modes = tuple(mode for key, mode in _LEGACY_KEYS.items() if config.get(key))
    if config.get("include_prompt") is False:
        log.info("%s: include_prompt=false only matters with prompts, which llmkit does not add", path)
    unsupported = [m for m in modes if m not in POOLING_MODES]
    if unsupported:
        raise EmbeddingSpecError(f"{path}: pooling mode {unsupported[0]!r} is not supported: llmkit pools with "
                                 f"{', '.join(POOLING_MODES)}")
    return modes or ("mean",)  # sentence-transformers' own default


def read_embedding_spec(directory: str | os.PathLike) -> EmbeddingSpec | None:
    """The `EmbeddingSpec` a sentence-transformers directory's files describe (``modules.json``,
    the Pooling module's ``config.json``, ``sentence_bert_config.json``), or None for a plain model
    directory. Raises `EmbeddingSpecError` for a module llmkit does not implement (e.g. ``Dense``)."""
    directory = Path(directory)
    if not (directory / MODULES_FILE).is_file():
        return None
    modules = _read_json(directory / MODULES_FILE)
    if not isinstance(modules, list):
        raise EmbeddingSpecError(f"{directory / MODULES_FILE} must be a JSON list of modules")
    pooling, normalize, max_len, lowercase = ("mean",), False, None, False
    for i, module in enumerate(sorted(modules, key=lambda m: m.get("idx", 0) if isinstance(m, dict) else 0)):
        kind = str(module.get("type", "")) if isinstance(module, dict) else ""
        short = kind.rsplit(".", 1)[-1]  # "sentence_transformers.models.Pooling" and newer spellings alike
        where = directory / str(module.get("path") or "") if isinstance(module, dict) else directory
        if short == "Transformer":
            if where != directory:
                raise EmbeddingSpecError(f"{directory / MODULES_FILE}: the Transformer module lives in {where}, not in "
                                         f"the directory itself: llmkit loads models whose weights sit beside "
                                         f"{MODULES_FILE} (sentence-transformers 2+ saves them so)")
            if (where / "sentence_bert_config.json").is_file():
                config = _read_json(where / "sentence_bert_config.json")
                max_len = config.get("max_seq_length") if isinstance(config, dict) else None
                lowercase = bool(config.get("do_lower_case")) if isinstance(config, dict) else False
        elif short == "Pooling":
            config = _read_json(where / "config.json")
            pooling = _pooling_modes(config if isinstance(config, dict) else {}, where / "config.json")
        elif short == "Normalize":
            normalize = True
        else:
            raise EmbeddingSpecError(
                f"{directory / MODULES_FILE}: module {i} is {kind or 'of no type'!r}, which llmkit does not implement: "
                f"it embeds with {', '.join(SUPPORTED_MODULES)} modules only (a Dense or other layer after pooling "
                "would change the vectors). Use sentence-transformers for this model")
    return EmbeddingSpec(pooling, normalize, max_len, lowercase)


def write_embedding_spec(directory: str | os.PathLike, spec: EmbeddingSpec, dim: int) -> None:
    """Write `spec` as sentence-transformers files into a saved model `directory`, so that both
    llmkit and sentence-transformers embed the saved copy as the original did."""
    from ..utils import write_json_atomic

    directory = Path(directory)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if spec.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    pooling = {"word_embedding_dimension": dim}
    pooling.update({key: mode in spec.pooling for key, mode in _LEGACY_KEYS.items()})
    write_json_atomic(directory / "1_Pooling" / "config.json", pooling)
    write_json_atomic(directory / "sentence_bert_config.json",
                      {"max_seq_length": spec.max_seq_length, "do_lower_case": spec.lowercase})
    write_json_atomic(directory / MODULES_FILE, modules)  # last: a directory is a sentence model once it is there


def check_texts(texts: Sequence[str]) -> list[str]:
    """`texts` as a list, each item a str (a lone str is one text): the border of every `embed`."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, dict)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"embed takes a list of strings, not {type(texts).__name__}")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__} {text!r:.60}, not a str: embed takes a list of "
                            "strings")
    return texts


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, spec: EmbeddingSpec) -> torch.Tensor:
    """One vector per row of `hidden` (batch, seq, dim): the pooling `spec` names over the
    positions `attention_mask` (batch, seq) marks 1 (padding, left or right, never counts), modes
    concatenated, then L2-normalised if the spec says so. Computed in float32."""
    h = hidden.float()
    mask = attention_mask.to(device=h.device, dtype=h.dtype)
    real = mask.unsqueeze(-1)
    count = mask.sum(1, keepdim=True).clamp(min=1e-9)
    out = []
    for mode in spec.pooling:
        if mode == "cls":  # the first real token (left padding skipped)
            first = mask.argmax(1)
            out.append(h[torch.arange(len(h), device=h.device), first])
        elif mode == "max":
            out.append(h.masked_fill(real == 0, float("-inf")).max(1).values)
        elif mode == "mean":
            out.append((h * real).sum(1) / count)
        elif mode == "mean_sqrt_len_tokens":
            out.append((h * real).sum(1) / count.sqrt())
        elif mode == "lasttoken":  # the last real token (right padding skipped)
            last = mask.shape[1] - 1 - mask.flip(1).argmax(1)
            out.append(h[torch.arange(len(h), device=h.device), last])
    vectors = torch.cat(out, -1)
    if spec.normalize:
        vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1)
    return vectors


@torch.inference_mode()
def embed_token_ids(model, inputs: list[list[int]], spec: EmbeddingSpec, pad_id: int, batch_size: int = 32,
                    progress: Callable[[int], None] | None = None,
                    autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    """float32 vectors (len(inputs), dim) of token-id lists, in input order: batches of similar
    lengths (sorted longest first, so padding stays small), right-padded with an attention mask,
    through ``model.hidden_states`` (under autocast to `autocast_dtype` when given), pooled per
    `spec` in float32. `progress(n)` is called after each batch with the number of inputs it held."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    dim = model.config.dim * len(spec.pooling)
    out = np.zeros((len(inputs), dim), dtype=np.float32)
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        ids, mask = pad_right([inputs[i] for i in rows], pad_id, model.device)
        with torch.autocast(model.device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext():
            hidden = model.hidden_states(ids, mask)
        out[rows] = pool(hidden, mask, spec).cpu().numpy()
        if progress is not None:
            progress(len(rows))
    return out
