"""Models with adapters: load a base plus any number of adapter directories as one `LocalLLM`,
and fold a LoRA into its base for good (`llmkit merge`).

    llm = load_with_adapters("runs/quickstart", ["sql=runs/sql/adapter", "runs/chat/adapter"])
    with llmkit.peft.adapter(llm.model, "sql"): llm.generate(...)
    merge_adapter("runs/quickstart", "runs/sql/adapter", "merged/")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from ..infer.llm import LocalLLM, load
from ..models.hf import load_pretrained, save_pretrained
from ..models.resolve import local_path
from ..quant.weight_only import is_quantized, quantize_model
from ..peft import AdapterError, adapter_base, adapter_names, load_adapter, merge_and_unload, set_adapter
from ..tokenizer import Tokenizer


def _split(spec: str | os.PathLike, index: int) -> tuple[str, Path]:
    text = str(spec)
    name, sep, path = text.partition("=")
    if sep and name and not Path(text).exists():
        return name, Path(path)
    return ("default" if index == 0 else f"adapter{index}"), Path(text)


def adapter_only_run(name: str | os.PathLike) -> Path | None:
    """RUN/adapter when `name` is a run dir that holds an adapter but no merged model."""
    p = Path(name)
    if p.is_dir() and (p / "adapter" / "adapter_config.json").is_file() and not (p / "model" / "config.json").is_file():
        return p / "adapter"
    return None


def load_with_adapters(model: str | os.PathLike, adapters: Sequence[str | os.PathLike] = (),
                       device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                       api_key: str | None = None, quantize: str | None = None):
    """The model `model` with `adapters` ("path" or "name=path") attached and all active. A run
    dir of an adapter method (RUN/adapter, no RUN/model) loads its base model with it.
    `quantize` ("int8" / "int4") then quantises the base weights (weight-only; adapters stay)."""
    adapters = list(adapters)
    own = adapter_only_run(model)
    if own is not None:
        base = adapter_base(own)
        if not base:
            raise AdapterError(f"{own}: adapter_config.json names no base_model_name_or_path: give --model BASE "
                               f"--adapter {own}")
        model, adapters = base, [str(own), *adapters]
    llm = load(model, device=device, dtype=dtype, api_key=api_key)
    if not isinstance(llm, LocalLLM) and (adapters or quantize):
        raise ValueError(f"--{'adapter' if adapters else 'quantize'} needs a local model: a remote server applies "
                         "its own")
    if adapters:
        _attach(llm, adapters)
    if quantize:
        if is_quantized(llm.model):
            raise ValueError(f"--quantize {quantize}: {model} is already quantised")
        quantize_model(llm.model, quantize)
    return llm


def _attach(llm: LocalLLM, adapters: list[str | os.PathLike]) -> None:
    names = []
    for i, spec in enumerate(adapters):
        name, path = _split(spec, i)
        load_adapter(llm.model, path, name=name)
        names.append(name)
    llm.model.to(llm.device)
    kinds = adapter_names(llm.model)
    virtual = [n for n in names if kinds[n] in ("prefix", "prompt")]
    # every LoRA and bottleneck adapter runs; of several prefix/prompt adapters, the last one
    set_adapter(llm.model, [n for n in names if n not in virtual] + virtual[-1:])


def merge_adapter(model: str | os.PathLike, adapter: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Fold the LoRA at `adapter` into the base `model` and write a plain HF checkpoint to `out`."""
    where = local_path(model)
    base = load_pretrained(where)
    kind = load_adapter(base, adapter)
    if kind != "lora":
        raise AdapterError(f"{adapter} is a {kind} adapter: only LoRA folds into the weights (prefix, prompt and "
                           "bottleneck adapters add computation; load them with --adapter instead)")
    merged = merge_and_unload(base)
    out = Path(out)
    save_pretrained(merged, out, dtype=torch.float32)
    Tokenizer.from_dir(where).save(out)
    return out
