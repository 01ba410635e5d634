"""`llmkit quantize`: a full-precision checkpoint in, a weight-only int8 / int4 checkpoint out,
with what it cost in perplexity and what it saved in memory, measured on the same text.

    report = quantize_checkpoint("runs/quickstart/model", "int8", "runs/quickstart-int8")
    llm = llmkit.load("runs/quickstart-int8")     # loads quantised; serves with `llmkit serve`
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from ..infer.llm import LocalLLM, load
from ..models.resolve import local_path
from ..quant.layout import INT4_GROUP_SIZE
from ..quant.weight_only import model_bytes, quantization_config, quantize_model
from ..utils import write_json_atomic

log = logging.getLogger(__name__)

REPORT_FILE = "quantize.json"


def default_texts() -> list[str]:
    """The built-in perplexity task's test paragraphs (shipped with llmkit, so no download)."""
    from ..data.tasks import load_task

    return [ex.prompt for ex in load_task("perplexity", "test")]


def perplexity(llm: LocalLLM, texts: Sequence[str]) -> tuple[float, int]:
    scored = llm.loglikelihood_rolling(list(texts))
    logprob, tokens = sum(lp for lp, _ in scored), sum(n for _, n in scored)
    return math.exp(-logprob / tokens), tokens


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def quantize_checkpoint(model: str | os.PathLike, method: str, out: str | os.PathLike,
                        group_size: int = INT4_GROUP_SIZE,
                        head: bool = True, texts: Sequence[str] | None = None, overwrite: bool = False,
                        device: str | torch.device | None = None) -> dict[str, Any]:
    """Quantise `model` to `method` ("int8" per channel, "int4" in groups of `group_size`), write
    it (and its tokenizer) to `out`, and return (and write to OUT/quantize.json) the report:
    weight and model bytes before and after, and perplexity before and after on `texts` (default:
    the built-in perplexity test paragraphs). `out` appears only once complete."""
    if method not in ("int8", "int4"):
        raise ValueError(f"--method {method!r}: use int8 or int4")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"--out {out} exists and is not empty: pick another directory or pass --overwrite")
    where = local_path(model)
    llm = load(where, device=device, dtype="fp32")
    if quantization_config(llm.model) is not None:
        raise ValueError(f"--model {model} is already quantised: give its full-precision checkpoint")
    texts = list(texts) if texts is not None else default_texts()
    if not texts or not any(t.strip() for t in texts):
        raise ValueError("no text to measure perplexity on: give non-empty --text files")
    log.info("measuring perplexity of %s (fp32)", where)
    ppl_before, tokens = perplexity(llm, texts)
    bytes_before = model_bytes(llm.model)
    sizes = quantize_model(llm.model, method, group_size=group_size, head=head)
    if not sizes["after"]:
        raise ValueError(f"no Linear of {model} could be quantised to {method} with group_size={group_size}: every "
                         "width must be a multiple of it (try a smaller --group-size)")
    log.info("measuring perplexity of the %s model", method)
    ppl_after, _ = perplexity(llm, texts)
    qcfg = quantization_config(llm.model)
    left = [m for n, m in llm.model.named_modules() if type(m) is torch.nn.Linear and n not in qcfg["modules"]]
    suggestion = None
    if method == "int4" and left:  # the largest even group size that every width divides
        width = math.gcd(*(m.in_features for m in left), group_size)
        suggestion = width if width % 2 == 0 and width < group_size else None
    report: dict[str, Any] = {
        "model": str(where), "method": method, "group_size": group_size if method == "int4" else None,
        "quantized_modules": len(qcfg["modules"]),
        "full_precision_linears": [n for n, m in llm.model.named_modules()
                                   if type(m) is torch.nn.Linear and n not in qcfg["modules"]],
        "linear_bytes_before": sizes["before"], "linear_bytes_after": sizes["after"],
        "model_bytes_before": bytes_before, "model_bytes_after": model_bytes(llm.model),
        "perplexity_before": ppl_before, "perplexity_after": ppl_after,
        "perplexity_change": ppl_after / ppl_before - 1, "perplexity_tokens": tokens,
        "suggested_group_size": suggestion,
    }
    # written beside `out` and moved into place whole, so an interrupted run leaves no half checkpoint
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        llm.save(staging)
        report["file_bytes"] = _dir_bytes(staging)
        write_json_atomic(staging / REPORT_FILE, report)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s: %s", out, json.dumps({k: report[k] for k in ("perplexity_change", "model_bytes_after")}))
    return report
