"""Run a few AdamW training steps of an llmkit model in a fresh process and record peak memory.

Usage: python peak_memory_probe.py '<json spec>' OUT.json, where the spec holds ModelConfig overrides
("config") of a preset ("preset", default "tiny-llama"), "batch_size", "seq_len" and "steps". A
mixture of experts trains as the Trainer trains it: its router losses are added to the loss.

Peak memory is the kernel's resident-set high-water mark (VmHWM in /proc/self/status), reset just
before the model is built by writing 5 to /proc/self/clear_refs, minus the resident set at that
moment. Unlike polling RSS from a thread, the high-water mark cannot miss a short spike (the
cross-entropy buffers live for milliseconds). A warm-up step on a tiny model first loads kernels,
thread pools and allocator arenas, so they are not charged to the measured model. Where
clear_refs is unavailable, getrusage's ru_maxrss (the same high-water mark, never reset) is used.

glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MiB), after
which tensors come from the heap and freed ones stay resident: RSS then exceeds the live tensors
by 10-25% depending on the order of frees. With ``"fixed_mmap_threshold": true`` (the default) the
probe pins the threshold at glibc's initial 128 KiB (mallopt M_MMAP_THRESHOLD), so every tensor
larger than that is its own mapping, returned to the kernel when freed, and the RSS high-water
mark measures the tensors themselves (what the estimator counts) rather than allocator policy.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import sys

import torch
import torch.nn.functional as F

from llmkit.models import Transformer, preset
from llmkit.models.moe import record_router, router_losses


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak(reset: bool) -> int:
    if reset:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _train(model: Transformer, batch: int, seq: int, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cfg = model.config
    router = record_router(model)  # as the Trainer does: the router losses keep their own activations
    loss = torch.zeros(())
    for _ in range(steps):
        ids = torch.randint(cfg.vocab_size, (batch, seq + 1))
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        penalty = router_losses(model).penalty if router else None
        if penalty is not None:  # the router-loss weights are 0 in the warm-up model
            loss = loss + penalty
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def main() -> None:
    spec = json.loads(sys.argv[1])
    fixed = spec.get("fixed_mmap_threshold", True)
    if fixed:
        M_MMAP_THRESHOLD = -3
        fixed = bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 128 * 1024))
    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    torch.manual_seed(0)
    _train(Transformer(preset(spec.get("preset", "tiny-llama"), vocab_size=512)), 2, 32, 2)  # warm-up
    gc.collect()
    base = _rss()
    reset = _reset_peak()
    model = Transformer(preset(spec.get("preset", "tiny-llama"), **spec["config"]))
    loss = _train(model, spec["batch_size"], spec["seq_len"], spec["steps"])
    result = {"peak_bytes": _peak(reset) - base, "baseline_bytes": base, "loss": loss,
              "params": model.num_parameters(), "hwm_reset": reset,
              "fixed_mmap_threshold": fixed}
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
