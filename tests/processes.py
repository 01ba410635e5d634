"""Helpers for tests that run llmkit commands as real processes: run a training verb with a Trainer
callback (see run_with_callback.py), crash one at a checkpoint, read the per-step metrics of a run
dir, and run code that may crash the interpreter (llama.cpp) where a crash fails one test only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from llmkit.train.logger import read_metrics

RUN_WITH_CALLBACK = str(Path(__file__).with_name("run_with_callback.py"))


def with_callback(callback: str, verb: str, *args: str, nproc: int = 1) -> list[str]:
    """The command line that runs `llmkit VERB ARGS` (verb "align ppo" etc.) with one of
    run_with_callback.py's callbacks ("pause=30", "weights=1"); under torchrun for `nproc` > 1."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port())]
    return [*launcher, RUN_WITH_CALLBACK, callback, *verb.split(), *args]


def free_port() -> int:
    """A TCP port nobody listens on now (for torchrun's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def paused_at_checkpoints(verb: str, *args: str, seconds: float = 30) -> subprocess.Popen:
    """Start `llmkit VERB ARGS` in a process that lingers `seconds` after each checkpoint (a Trainer
    callback), for `kill_at_checkpoint`."""
    return subprocess.Popen(with_callback(f"pause={seconds}", verb, *args), stdout=subprocess.DEVNULL,
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


def run_or_fail(cmd: list[str], input: str | None = None, timeout: float = 600, env: dict | None = None) -> str:
    """Run `cmd` and return its stdout; if it dies (a signal such as SIGSEGV, a non-zero exit, a
    timeout) fail the calling test with how it ended and the end of its stderr. For code that can
    take the interpreter down with it (a native library's crash), which would end pytest itself."""
    import pytest

    try:
        r = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr or ""
        pytest.fail(f"{cmd[:3]} ran past {timeout} s; its stderr ends:\n{err[-3000:]}", pytrace=False)
    if r.returncode != 0:
        how = f"was killed by {signal.Signals(-r.returncode).name}" if r.returncode < 0 else \
            f"exited with code {r.returncode}"
        pytest.fail(f"{cmd[:3]} {how}; its stderr ends:\n{r.stderr[-3000:]}", pytrace=False)
    return r.stdout
