"""Helpers for tests that run llmkit commands as real processes: crash one at a checkpoint, read
the per-step metrics of a run dir."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from llmkit.train.logger import read_metrics


def kill_at_checkpoint(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 300) -> None:
    """Wait until `proc` (started with LLMKIT_PAUSE_AFTER_CHECKPOINT set, so it lingers there) has
    written the checkpoint of `step` in `run_dir`, then kill -9 it."""
    marker = run_dir / "checkpoints" / f"step_{step:06d}" / "state.json"
    deadline = time.time() + timeout
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in time"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def losses(run: Path, key: str = "loss") -> dict[int, float]:
    """{step: value} of one metric of a run dir's metrics.jsonl."""
    return {r["step"]: r[key] for r in read_metrics(run) if key in r}
