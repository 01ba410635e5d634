"""Training checkpoints without pickle: model and optimizer tensors in safetensors, everything
else (step, data position, RNG states, schedule) in JSON. A checkpoint directory is written
under a temporary name and renamed into place, so a crash (even kill -9) never leaves a
half-written checkpoint that a resume would trust.

    checkpoints/step_000010/  model.safetensors  optimizer.safetensors  optimizer.json
                              state.json  rng_rank0.safetensors ...
    checkpoints/latest        the name of the newest complete checkpoint
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from ..utils import write_text_atomic

log = logging.getLogger(__name__)

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


class CheckpointMismatchError(ValueError):
    pass


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rng_state() -> dict[str, Any]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return {"tensors": tensors, "meta": meta}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def _flatten_optimizer(osd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, state in osd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}::{key}"] = value.detach().contiguous()
            else:
                scalars.setdefault(name, {})[key] = value
    return tensors, {"param_groups": osd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, field = key.rsplit("::", 1)
        state.setdefault(name, {})[field] = value
    for name, fields in meta["scalars"].items():
        state.setdefault(name, {}).update(fields)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep_last: int = 2) -> Path:
    """Write checkpoint `step` of a (possibly distributed) run. Every rank must call this."""
    root = Path(run_dir) / "checkpoints"
    name = f"step_{step:06d}"
    final, tmp = root / name, root / f".tmp-{name}"
    msd = get_model_state_dict(model, options=_FULL)
    osd = get_optimizer_state_dict(model, optimizer, options=_FULL)
    rank = _rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    rng = rng_state()
    save_file(rng["tensors"], str(tmp / f"rng_rank{rank}.safetensors"))
    (tmp / f"rng_rank{rank}.json").write_text(json.dumps(rng["meta"]))
    if rank == 0:
        tensors, aliases = _dedupe(msd)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "aliases": json.dumps(aliases)})
        opt_tensors, opt_meta = _flatten_optimizer(osd)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    _barrier()
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_text_atomic(root / "latest", name + "\n")
        old = sorted(p for p in root.glob("step_*") if p.is_dir())
        for p in old[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(p, ignore_errors=True)
    _barrier()
    return final


def _dedupe(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tied weights (one tensor under two names) are stored once; `aliases` maps the others."""
    first: dict[tuple[int, tuple], str] = {}
    tensors, aliases = {}, {}
    for k, v in sd.items():
        key = (v.untyped_storage().data_ptr(), tuple(v.shape))
        if key in first:
            aliases[k] = first[key]
        else:
            first[key] = k
            tensors[k] = v.contiguous()
    return tensors, aliases


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if pointer.exists():
        path = root / pointer.read_text().strip()
        if path.is_dir():
            return path
    complete = sorted(p for p in root.glob("step_*") if (p / "state.json").exists())
    return complete[-1] if complete else None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    expect: dict[str, Any]) -> dict[str, Any]:
    """Restore model, optimizer and this rank's RNG from `path`; return the saved trainer state.
    `expect` holds values (model shape, batch geometry) that must equal the saved ones."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointMismatchError(f"checkpoint {path} is incomplete or damaged ({e}): "
                                      "delete it to resume from an earlier one, or start afresh") from e
    saved = state.get("compat", {})
    diffs = [f"{k}: checkpoint has {saved.get(k)!r}, this run has {v!r}" for k, v in expect.items() if saved.get(k) != v]
    if diffs:
        raise CheckpointMismatchError(
            f"checkpoint {path} does not match this run — " + "; ".join(diffs)
            + ". Resume with the recipe the run was started with, or use a new --out")
    rank = _rank()
    try:
        from safetensors import safe_open

        with safe_open(str(path / "model.safetensors"), framework="pt") as f:
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
        msd = load_file(str(path / "model.safetensors"))
        msd.update({k: msd[v] for k, v in aliases.items()})
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
        rng_tensors = load_file(str(path / f"rng_rank{rank}.safetensors"))
    except (SafetensorError, OSError) as e:
        raise CheckpointMismatchError(f"checkpoint {path} has a truncated or missing file ({e}): "
                                      "delete it to resume from an earlier one, or start afresh") from e
    opt_meta = json.loads((path / "optimizer.json").read_text())
    rng_meta = json.loads((path / f"rng_rank{rank}.json").read_text())
    set_model_state_dict(model, msd, options=_FULL)
    set_optimizer_state_dict(model, optimizer, _unflatten_optimizer(opt_tensors, opt_meta), options=_FULL)
    set_rng_state(rng_tensors, rng_meta)
    return state
