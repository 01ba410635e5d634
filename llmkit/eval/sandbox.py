"""Run untrusted, model-written code in a subprocess with limits, for code tasks (pass@k).

Limits: CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS), file size (RLIMIT_FSIZE), number of
processes (RLIMIT_NPROC — not enforced for root, which the kernel exempts), a wall-clock timeout
that kills the whole process group, an empty temporary working directory, a scrubbed environment,
Python's isolated mode, and no network where the machine allows a private network namespace
(``unshare -n``; then even loopback is down). This is a guard against accidents and runaway
programs, not a security boundary against a determined attacker: use a VM or container for that.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class SandboxResult:
    status: str  # passed | failed | timeout | memory | error
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.lru_cache(maxsize=1)
def network_isolation() -> list[str]:
    """The command prefix that gives a process no network, or [] where that is not allowed."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    for prefix in ([unshare, "--net"], [unshare, "--net", "--map-root-user"]):
        try:
            if subprocess.run(prefix + ["true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    log.warning("cannot create a private network namespace here: sandboxed code keeps network access")
    return []


def _limits(cpu_seconds: int, memory_bytes: int, max_processes: int, max_file_bytes: int):
    def apply() -> None:
        import resource

        os.setsid()  # its own process group, so a timeout kills children too
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))
        except (ValueError, OSError):
            pass

    return apply


def run_code(program: str, timeout: float = 10.0, memory_mb: int = 512, cpu_seconds: int | None = None,
             max_processes: int = 16, max_file_mb: int = 16, network: bool = False) -> SandboxResult:
    """Run `program` (Python source) with the limits above; "passed" means exit status 0."""
    cpu = cpu_seconds if cpu_seconds is not None else max(1, int(timeout))
    with tempfile.TemporaryDirectory(prefix="llmkit-sandbox-") as workdir:
        script = os.path.join(workdir, "main.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(program)
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        cmd = ([] if network else network_isolation()) + [sys.executable, "-I", script]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace",
                                preexec_fn=_limits(cpu, memory_mb * 2**20, max_processes, max_file_mb * 2**20))
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            return SandboxResult("timeout", None, out[-10000:], err[-10000:], time.perf_counter() - start)
        seconds = time.perf_counter() - start
    code = proc.returncode
    if code == 0:
        status = "passed"
    elif code in (-signal.SIGXCPU, -signal.SIGKILL) or "MemoryError" in err:
        status = "memory" if "MemoryError" in err else "timeout"
    elif "AssertionError" in err:
        status = "failed"
    else:
        status = "error"
    return SandboxResult(status, code, out[-10000:], err[-10000:], seconds)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
