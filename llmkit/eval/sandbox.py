"""Run untrusted, model-written code (Python source) confined, for code tasks (pass@k), PAL and tools.

The one sandbox of llmkit. Its layers, each reported by `sandbox_layers()` (and ``llmkit sandbox
check``) as active or with the reason it is not:

- **unprivileged uid**: the program runs as a fresh uid per run (from ``UID_BASE``), with no groups,
  no capabilities and no_new_privs; without root, as the caller's uid inside a user namespace;
- **process group**: its own session, SIGKILLed as a whole at the wall-clock `timeout`;
- **resource limits**: CPU seconds, address space, file size, open files and no core dumps (rlimits);
- **network namespace**: a fresh one (``unshare --net``), where no interface is up, not even
  loopback; Landlock (ABI >= 4) also refuses TCP bind and connect;
- **filesystem confinement**: a private read-only root in a mount namespace (the Python installation,
  /usr, /lib*, a few devices and its own /proc; the empty temporary work directory is the only
  writable place) and Landlock rules saying the same, so either alone keeps the host's files out;
- **process limit**: a PID namespace whose init's exit kills every process left, and RLIMIT_NPROC,
  which counts per uid and so is per sandbox only because each run has its own uid;
- **IPC namespace**: fresh IPC and UTS namespaces, so SysV shared memory, semaphores and message
  queues die with the run and no other run sees them;
- **memory cgroup**: a cgroup per run (`llmkit.eval.cgroups`; v1 memory + pids, or v2) holding the
  whole run, forked children, memfds and the work directory's tmpfs included, to `memory_mb`
  (an OOM kill there is status "memory") and to `max_processes`; removed after the run;
- **system-call filter**: seccomp (`llmkit.eval.seccomp`) refuses new namespaces (so no user
  namespace with a fresh set of capabilities), mounts, ptrace, keyrings, bpf, io_uring and the like.

The work directory is a tmpfs of `max_disk_mb` (and ``WORK_INODES`` inodes) in the private root,
holding a copy of main.py: nothing the program writes reaches the host's disk.

Plus a scrubbed environment, Python's isolated mode, and stdout and stderr read incrementally and
cut to `max_output_bytes` each (its first and last halves; `SandboxResult.truncated` says so).
The confining is done by the launcher in `llmkit.eval.confine`. A missing layer is logged as a
warning, or raised under ``CI=true``. This is defence in depth on one kernel, not a VM: a kernel bug
can still be an escape, so keep secrets off machines that run other people's code.

Where the machine allows less: without a PID namespace, the run's processes are killed by uid at
its end (``kill -1`` as that uid); without a mount namespace, Landlock alone confines the files
(and the work directory is on the host's disk, bounded per file only); without Landlock, the private
root alone does. The private root is what bubblewrap would build; the
launcher builds it itself, being root in its mount namespace already, so there is no extra binary
to install. Private uids come from [``UID_BASE``, ``UID_BASE + UID_SPAN``), drawn at random per run:
two concurrent runs sharing one (1 in 100,000) would only share their RLIMIT_NPROC, since PID
namespaces and Landlock keep them apart otherwise.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import cgroups, confine, seccomp

log = logging.getLogger(__name__)

UID_BASE, UID_SPAN = 200_000, 100_000  # private uids are drawn from [UID_BASE, UID_BASE + UID_SPAN)
MAX_OUTPUT_BYTES = 64 * 1024
LAUNCHER = os.path.abspath(confine.__file__)
NAMESPACES = ("--net", "--pid", "--mount", "--ipc", "--uts")
WORK_INODES = 4096  # files and directories the work directory's tmpfs holds at most
# read-only too when the network is on: without them a private root resolves no name and trusts no certificate
NETWORK_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/gai.conf", "/etc/ssl",
                 "/etc/ca-certificates")


@dataclass
class SandboxResult:
    status: str  # passed | failed | timeout | memory | error
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    truncated: bool = False  # stdout or stderr was longer than max_output_bytes and was cut
    uid: int | None = None  # the uid the program ran as, seen from the host

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class _Plan:
    """What this machine allows the sandbox, found once by trying it."""

    unshare: tuple[str, ...]  # the unshare command and its flags, () where none works
    namespaces: tuple[str, ...]  # those of NAMESPACES it creates
    landlock: int
    uid_mode: str  # "switch" (root: a private uid), "userns" (a user namespace) or "none"
    cgroup: int  # the cgroup version a per-run cgroup is made with, 0 for none
    seccomp: bool  # whether the system-call filter knows this architecture
    why: dict[str, str]


def _reachable(path: str) -> bool:
    """Whether every directory above `path` lets other users through (pyenv under /root does not)."""
    parts = os.path.realpath(path).split("/")
    return all(os.stat("/".join(parts[:i]) or "/").st_mode & 0o001 for i in range(1, len(parts)))


@functools.lru_cache(maxsize=1)
def _read_only_paths() -> tuple[tuple[str, ...], dict[str, str]]:
    """The directories and files the program may read (the Python installation, /usr, /lib*, the
    loader's cache, the time zone), outermost only, and the top-level symlinks to recreate."""
    links, found = {}, []
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            links[top] = os.readlink(top)
        elif os.path.isdir(top):
            found.append(top)
    python = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, sysconfig.get_config_var("LIBDIR"),
              os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))]
    found += [os.path.realpath(p) for p in python if p] + ["/usr", "/etc/ld.so.cache", "/etc/localtime"]
    kept: list[str] = []
    for path in sorted({p for p in found if os.path.exists(p) and p != "/"}, key=len):
        if not any(path.startswith(k + "/") for k in kept):
            kept.append(path)
    return tuple(sorted(kept)), links


@functools.lru_cache(maxsize=1)
def _plan() -> _Plan:
    why: dict[str, str] = {}
    root = os.geteuid() == 0
    unshare, namespaces = shutil.which("unshare"), ()
    command: tuple[str, ...] = ()
    if unshare is None:
        why["namespaces"] = "no unshare command (util-linux) on PATH"
    else:
        user = () if root else ("--user", "--map-root-user")
        for spaces in (NAMESPACES, NAMESPACES[:3], ("--net",)):
            flags = (*user, *spaces, "--fork", "--kill-child")
            try:
                done = subprocess.run([unshare, *flags, "true"], capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired) as e:
                why["namespaces"] = f"unshare failed: {e}"
                continue
            if done.returncode == 0:
                command, namespaces = (unshare, *flags[:len(user)], "--fork", "--kill-child"), spaces
                break
            why["namespaces"] = f"unshare {' '.join(flags)} refused: {done.stderr.strip()}"
    abi = confine.landlock_abi()
    if not abi:
        why["landlock"] = "the kernel offers no Landlock (older than 5.13, disabled, or blocked by seccomp)"
    if root and ("--mount" in namespaces or all(_reachable(p) for p in _read_only_paths()[0])):
        uid_mode = "switch"
    elif root:
        uid_mode = "none"
        why["uid"] = ("the Python installation is not reachable by other users and no mount namespace is "
                      "allowed to expose it, so the program runs as root")
    elif command:
        uid_mode = "userns"
    else:
        uid_mode = "none"
        why["uid"] = "not root and no user namespace: the program runs as the caller's own uid"
    support = cgroups.support()
    if support.why:
        why["cgroup"] = support.why
    if not seccomp.supported():
        why["seccomp"] = f"the filter knows x86_64 and aarch64 only, not {os.uname().machine}"
    return _Plan(command, namespaces, abi, uid_mode, support.version, seccomp.supported(), why)


def network_isolation() -> list[str]:
    """The command prefix that gives a process no network, or [] where that is not allowed."""
    plan = _plan()
    return [*plan.unshare, "--net"] if "--net" in plan.namespaces else []


class _Capture:
    """At most `limit` bytes of a stream, its first and last halves, and how long it really was."""

    def __init__(self, limit: int):
        self.head_size, self.tail_size = limit - limit // 2, limit // 2
        self.head, self.tail, self.total = bytearray(), bytearray(), 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_size - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk and self.tail_size:
            self.tail += chunk
            del self.tail[:-self.tail_size]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + len(self.tail)

    def text(self, name: str) -> str:
        head, tail = self.head.decode(errors="replace"), self.tail.decode(errors="replace")
        if not self.truncated:
            return head + tail
        cut = self.total - len(self.head) - len(self.tail)
        return (f"{head}\n[... {cut:,} bytes cut ...]\n{tail}\n[llmkit sandbox: {name} was {self.total:,} bytes, "
                f"cut to its first {len(self.head):,} and last {len(self.tail):,}]\n")


def _collect(proc: subprocess.Popen, status_fd: int, timeout: float, limit: int,
             kill: Callable[[], None]) -> tuple[_Capture, _Capture, str, bool]:
    """Read stdout, stderr and the launcher's status lines as they come, never more than `limit`
    bytes of each kept; at `timeout` call `kill`. Returns them and whether it timed out. Once the
    launcher is gone, whatever still holds the output pipes (only possible without a PID namespace)
    gets a second, then `kill` too."""
    out, err, status = _Capture(limit), _Capture(limit), _Capture(1 << 16)
    sel = selectors.DefaultSelector()
    for fd, capture in ((proc.stdout.fileno(), out), (proc.stderr.fileno(), err), (status_fd, status)):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, capture)
    deadline, phase, timed_out = time.monotonic() + timeout, "running", False
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0 and phase == "killed":
                break  # killed, yet something still holds a pipe open: stop waiting for it
            if left <= 0:
                timed_out = phase == "running"
                kill()
                phase, deadline = "killed", time.monotonic() + 5
                continue
            for key, _ in sel.select(left):
                try:
                    data = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if data:
                    key.data.add(data)
                    continue
                sel.unregister(key.fd)
                if key.fd == status_fd and phase == "running":
                    phase, deadline = "ended", min(deadline, time.monotonic() + 1)
    finally:
        sel.close()
    return out, err, status.text("status"), timed_out


def _sweep(uid: int) -> None:
    """Without a PID namespace, processes that left the process group (setsid) outlive the run: kill
    every process of the run's private uid, as that uid (``kill -1`` reaches exactly those), in rounds
    until none is left (a process being killed cannot fork, so each round leaves fewer)."""
    subprocess.run(["/bin/sh", "-c", "i=0; while kill -9 -1 2>/dev/null && [ $i -lt 10000 ]; do i=$((i+1)); done"],
                   user=uid, group=uid, extra_groups=[], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # unshare, the launcher (the namespace's init) and all below
    except (ProcessLookupError, PermissionError):
        proc.kill()


def run_code(program: str, timeout: float = 10.0, memory_mb: int = 512, cpu_seconds: int | None = None,
             max_processes: int = 16, max_file_mb: int = 16, network: bool = False,
             max_output_bytes: int = MAX_OUTPUT_BYTES, max_disk_mb: int = 64, max_open_files: int = 256) -> SandboxResult:
    """Run `program` (Python source) in the sandbox (see the module's docstring); "passed" means exit
    status 0, "failed" an AssertionError, "memory" a MemoryError or a process killed by the run's
    memory cgroup, "timeout" the wall clock or CPU limit. `memory_mb` bounds each process's address
    space and, where there is a memory cgroup, all the run's memory together (the work directory's
    files included); `max_disk_mb` bounds the work directory (a tmpfs), `max_file_mb` each file in
    it, `max_processes` the processes and threads, `max_open_files` each process's descriptors.
    `network=True` leaves the network on. Raises RuntimeError if the sandbox cannot be set up, or
    under ``CI=true`` if a layer is missing on this machine."""
    from .sandbox_probe import check_layers

    if not timeout > 0 or max_output_bytes < 0 or min(memory_mb, max_disk_mb, max_open_files, max_processes) < 1:
        raise ValueError(f"run_code needs timeout > 0, max_output_bytes >= 0 and positive limits, got "
                         f"timeout={timeout}, max_output_bytes={max_output_bytes}, memory_mb={memory_mb}, "
                         f"max_disk_mb={max_disk_mb}, max_open_files={max_open_files}, max_processes={max_processes}")
    check_layers()
    return _run(program, timeout, memory_mb, cpu_seconds, max_processes, max_file_mb, network, max_output_bytes,
                max_disk_mb, max_open_files)


def _run(program: str, timeout: float, memory_mb: int, cpu_seconds: int | None, max_processes: int,
         max_file_mb: int, network: bool, max_output_bytes: int, max_disk_mb: int = 64,
         max_open_files: int = 256) -> SandboxResult:
    plan = _plan()
    read_only, links = _read_only_paths()
    cpu = cpu_seconds if cpu_seconds is not None else max(1, int(min(timeout, 1e6)))
    uid = {"switch": UID_BASE + secrets.randbelow(UID_SPAN), "userns": os.getuid(), "none": None}[plan.uid_mode]
    namespaces = [n for n in plan.namespaces if not (network and n == "--net")]
    mount = "--mount" in namespaces
    try:
        cgroup = cgroups.RunCgroup(memory_mb * 2**20, max_processes) if plan.cgroup else None
    except OSError as e:
        raise RuntimeError(f"the sandbox could not make the run's cgroup: {e}") from e
    try:
        with tempfile.TemporaryDirectory(prefix="llmkit-sandbox-") as base:
            result, proc = _launch(program, base, plan, uid, namespaces, mount, cgroup, read_only, links, timeout,
                                   {"network": network, "cpu_seconds": cpu, "memory_bytes": memory_mb * 2**20,
                                    "file_bytes": max_file_mb * 2**20, "max_processes": max_processes,
                                    "max_open_files": max_open_files}, max_disk_mb, max_output_bytes)
    finally:
        if cgroup is not None:
            oom_kills = cgroup.oom_kills()
            try:
                cgroup.remove()
            except OSError as e:  # a process still inside: it is bounded by the cgroup, which stays
                log.warning("the sandbox could not remove the run's cgroup %s: %s", cgroup.dirs, e)
    out, err, status, timed_out, seconds = result
    report: dict = {}
    for line in status.splitlines():
        if line.startswith("{"):
            report.update(json.loads(line))
    stdout, stderr, truncated = out.text("stdout"), err.text("stderr"), out.truncated or err.truncated
    if "error" in report:
        raise RuntimeError(f"{report['error']}\n{stderr[-2000:]}")
    if timed_out:
        return SandboxResult("timeout", None, stdout, stderr, seconds, truncated, uid)
    if "signal" in report:
        code = -report["signal"]
    elif "exit" in report:
        code = report["exit"]
    else:
        raise RuntimeError(f"the sandbox's launcher ended (status {proc.returncode}) without reporting on the "
                           f"program: {stderr[-2000:]}")
    status = "memory" if code != 0 and cgroup is not None and oom_kills else _status(code, stderr)
    return SandboxResult(status, code, stdout, stderr, seconds, truncated, uid)


def _launch(program: str, base: str, plan: _Plan, uid: int | None, namespaces: list[str], mount: bool,
            cgroup: cgroups.RunCgroup | None, read_only: tuple[str, ...], links: dict[str, str], timeout: float,
            limits: dict, max_disk_mb: int, max_output_bytes: int) -> tuple[tuple, subprocess.Popen]:
    """Start the launcher on `program` in the directory `base` and collect what it says, until it ends."""
    os.chmod(base, 0o711)  # other uids may pass through (where there is no private root) but not list it
    workdir, new_root = os.path.join(base, "work"), os.path.join(base, "root")
    os.mkdir(workdir, 0o700)  # with a private root, only main.py's source: the program's is a tmpfs at this path
    with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
        f.write(program)
    if plan.uid_mode == "switch" and not mount:
        os.chown(workdir, uid, uid)
    if mount:
        os.mkdir(new_root)
    owner = f",uid={uid},gid={uid}" if plan.uid_mode == "switch" else ""
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    status_r, status_w = os.pipe()
    cfg = {"status_fd": status_w, "workdir": workdir, "new_root": new_root if mount else None,
           "work_options": f"size={max_disk_mb}m,nr_inodes={WORK_INODES},mode=0700{owner}",
           "read_only": list(read_only) + [p for p in NETWORK_FILES if limits["network"] and os.path.exists(p)],
           "read_write": [workdir], "links": links, "landlock": plan.landlock > 0,
           "uid": uid, "gid": uid if plan.uid_mode == "switch" else os.getgid(),
           "switch_uid": plan.uid_mode == "switch", "proc": mount and "--pid" in namespaces,
           "cgroups": cgroup.procs if cgroup else [], "seccomp": plan.seccomp, "timeout": timeout, **limits,
           "argv": [sys.executable, "-I", "main.py"], "env": env}
    prefix = [*plan.unshare[:-2], *namespaces, *plan.unshare[-2:]] if plan.unshare and namespaces else []
    cmd = prefix + [sys.executable, "-I", "-S", LAUNCHER, json.dumps(cfg)]
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, cwd=base, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(status_w,), start_new_session=True)
    except OSError:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)
    sweep = plan.uid_mode == "switch" and "--pid" not in namespaces

    def kill() -> None:
        _kill_group(proc)
        if sweep:
            _sweep(uid)

    try:
        out, err, status, timed_out = _collect(proc, status_r, timeout, max_output_bytes, kill)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kill()
            proc.wait()
    finally:
        os.close(status_r)
        proc.stdout.close()
        proc.stderr.close()
        if sweep:
            _sweep(uid)
    return (out, err, status, timed_out, time.perf_counter() - start), proc


def _status(code: int, stderr: str) -> str:
    if code == 0:
        return "passed"
    if "MemoryError" in stderr:
        return "memory"
    if code in (-signal.SIGXCPU, -signal.SIGKILL):  # the CPU limit's signals
        return "timeout"
    return "failed" if "AssertionError" in stderr else "error"


def __getattr__(name: str):
    """`sandbox_layers` and `Layer` live in `sandbox_probe` (which runs this module's sandbox) and are
    reachable from here too, imported on first use so that neither module imports the other at load."""
    if name in ("sandbox_layers", "Layer"):
        from . import sandbox_probe

        return getattr(sandbox_probe, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
