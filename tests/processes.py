"""Helpers for tests that run llmkit commands as real processes: crash one at a checkpoint, read
the per-step metrics of a run dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from llmkit.train.logger import read_metrics


def paused_at_checkpoints(verb: str, *args: str, seconds: float = 30) -> subprocess.Popen:
    """Start `llmkit VERB ARGS` in a process that lingers `seconds` after each checkpoint (a Trainer
    callback; see pause_at_checkpoint.py), for `kill_at_checkpoint`."""
    script = Path(__file__).with_name("pause_at_checkpoint.py")
    return subprocess.Popen([sys.executable, str(script), str(seconds), verb, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def kill_at_checkpoint(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 300) -> None:
    """Wait until `proc` (from `paused_at_checkpoints`, so it lingers there) has written the
    checkpoint of `step` in `run_dir`, then kill -9 it."""
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
