"""Which layers of the code sandbox are active on this machine, found by a probe that looks from inside.

`sandbox_layers()` runs one small program in the sandbox (once per process) that reports its uid and
capabilities, its namespaces, its rlimits, its cgroups, its seccomp mode and whether a raw
``unshare(CLONE_NEWUSER)`` is refused, the size of its work directory, and whether it can read a
world-readable file, write into a world-writable directory, or list / outside its work directory;
each layer is called active only when the probe saw it work. `check_layers()`, called by `run_code`, logs a warning for a missing
layer, or raises under ``CI=true`` (where a machine that cannot confine code is a failed build).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import tempfile
from dataclasses import dataclass

from . import cgroups, sandbox
from .sandbox import MAX_OUTPUT_BYTES, UID_BASE, UID_SPAN, _Plan

log = logging.getLogger(__name__)

LAYERS = ("unprivileged uid", "process group", "resource limits", "network namespace", "filesystem confinement",
          "process limit", "IPC namespace", "memory cgroup", "system-call filter")


@dataclass(frozen=True)
class Layer:
    """One layer of the sandbox: whether it is active on this machine, and how (or why not)."""

    name: str
    active: bool
    detail: str


_PROBE = '''
import ctypes, errno, json, os, resource
facts = {"uid": os.getuid(), "euid": os.geteuid(), "groups": os.getgroups()}
try:
    with open("/proc/self/status") as f:
        status = dict(l.split(":", 1) for l in f if ":" in l)
    facts["cap_eff"], facts["seccomp"] = int(status["CapEff"], 16), int(status["Seccomp"])
except (OSError, KeyError, ValueError) as e:
    facts["cap_eff"] = facts["seccomp"] = None
for space in ("net", "pid", "ipc", "uts"):
    try:
        facts[space] = os.readlink(f"/proc/self/ns/{space}")
    except OSError:
        facts[space] = None
try:
    with open("/proc/self/cgroup") as f:
        facts["cgroups"] = dict(l.rstrip("\\n").split(":", 2)[1:] for l in f)
except OSError:
    facts["cgroups"] = {}
facts["rlimits"] = [resource.getrlimit(getattr(resource, n))[0]
                    for n in ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NPROC", "RLIMIT_NOFILE")]
libc = ctypes.CDLL(None, use_errno=True)
number = {"x86_64": 272, "aarch64": 97}.get(os.uname().machine)  # unshare, raw: glibc's wrapper is not needed
done = libc.syscall(number, 0x10000000) if number else -1  # CLONE_NEWUSER
facts["unshare_user"] = "allowed" if done == 0 else errno.errorcode.get(ctypes.get_errno(), "?") if number else "?"
disk = os.statvfs(".")
facts["work"] = [disk.f_blocks * disk.f_frsize, disk.f_files]
def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as e:
        return str(e)
facts["read"] = attempt(lambda: open(SECRET).read())
facts["write"] = attempt(lambda: open(TARGET, "x").close())
facts["list_root"] = attempt(lambda: os.listdir("/"))  # the private root allows it, Landlock does not
import socket
facts["interfaces"] = sorted(name for _, name in socket.if_nameindex())  # seen without /proc too
facts["tcp"] = attempt(lambda: socket.create_connection(("127.0.0.1", 9), timeout=2))  # EACCES: Landlock
import sys
sys.stdout.write(json.dumps(facts) + "\\n")
'''
_PROBE_LIMITS = {"timeout": 20.0, "memory_mb": 512, "cpu_seconds": 7, "max_processes": 13, "max_file_mb": 3,
                 "max_disk_mb": 5, "max_open_files": 97}


@functools.lru_cache(maxsize=1)
def sandbox_layers() -> tuple[Layer, ...]:
    """Each layer of the sandbox and whether it is active here, found once by running a probe in the
    sandbox that looks from the inside (its uid and capabilities, namespaces, rlimits, and whether a
    world-readable file and a world-writable directory outside the work directory can be used)."""
    plan = sandbox._plan()
    with tempfile.TemporaryDirectory(prefix="llmkit-sandbox-probe-") as outside:
        os.chmod(outside, 0o777)  # only the sandbox, not file permissions, may stop the probe here
        secret, target = os.path.join(outside, "secret"), os.path.join(outside, "written")
        with open(secret, "w") as f:
            f.write("visible")
        os.chmod(secret, 0o644)
        source = f"SECRET, TARGET = {secret!r}, {target!r}\n" + _PROBE
        try:
            r = sandbox._run(source, **_PROBE_LIMITS, network=False, max_output_bytes=MAX_OUTPUT_BYTES)
            facts = json.loads(r.stdout) if r.passed else {}
            failure = "" if r.passed else f"the probe ended {r.status}: {r.stderr.strip()[-500:]}"
        except (RuntimeError, OSError, ValueError) as e:
            facts, failure = {}, f"the sandbox could not run a probe: {e}"
    if not facts:
        return tuple(Layer(name, False, failure) for name in LAYERS)
    return (_uid_layer(plan, facts), Layer("process group", True, "own session and process group (setsid), "
                                                                  "SIGKILLed as a whole at the wall-clock timeout"),
            _limits_layer(facts), _network_layer(plan, facts), _filesystem_layer(plan, facts),
            _process_layer(plan, facts), _ipc_layer(plan, facts), _cgroup_layer(plan, facts),
            _filter_layer(plan, facts))


def _uid_layer(plan: _Plan, facts: dict) -> Layer:
    if facts["uid"] == 0 or facts["euid"] == 0 or facts["cap_eff"] not in (0, None):  # None: no /proc to look in
        return Layer("unprivileged uid", False, plan.why.get("uid", f"the program ran as uid {facts['uid']} with "
                                                                    f"capabilities {facts['cap_eff']}"))
    if plan.uid_mode == "switch":
        return Layer("unprivileged uid", True, f"a private uid per run ({UID_BASE}-{UID_BASE + UID_SPAN - 1}), "
                                                "no groups, no capabilities, no_new_privs")
    return Layer("unprivileged uid", True, f"the caller's uid {os.getuid()} in a user namespace, no capabilities, "
                                            "no_new_privs")


def _limits_layer(facts: dict) -> Layer:
    want = [_PROBE_LIMITS["cpu_seconds"], _PROBE_LIMITS["memory_mb"] * 2**20, _PROBE_LIMITS["max_file_mb"] * 2**20,
            _PROBE_LIMITS["max_processes"], _PROBE_LIMITS["max_open_files"]]
    if facts["rlimits"] != want:
        return Layer("resource limits", False, f"asked for CPU, AS, FSIZE, NPROC, NOFILE {want}, got {facts['rlimits']}")
    return Layer("resource limits", True, "RLIMIT_CPU, RLIMIT_AS (memory per process), RLIMIT_FSIZE, RLIMIT_NOFILE, "
                                          "RLIMIT_CORE=0")


def _host_namespace(space: str) -> str:
    return os.readlink(f"/proc/self/ns/{space}")


def _network_layer(plan: _Plan, facts: dict) -> Layer:
    if facts["net"] == _host_namespace("net") or facts["net"] is None and facts["interfaces"] == sorted(
            name for _, name in socket.if_nameindex()):
        return Layer("network namespace", False, plan.why.get("namespaces", "the program shares the host's network"))
    also = "; Landlock refuses TCP bind and connect" if "Permission denied" in facts["tcp"] else ""
    return Layer("network namespace", True, f"a fresh one (unshare --net): no interface up, not even loopback{also}")


def _filesystem_layer(plan: _Plan, facts: dict) -> Layer:
    landlock = plan.landlock and facts["list_root"] != "allowed"  # seen from inside: the rules were applied
    parts = ([f"Landlock ABI {plan.landlock}"] if landlock else []) + (
        ["a private read-only root (mount namespace, pivot_root)"] if "--mount" in plan.namespaces else [])
    if facts["read"] == "allowed" or facts["write"] == "allowed" or not parts:
        why = "; ".join(plan.why[k] for k in ("landlock", "namespaces") if k in plan.why)
        return Layer("filesystem confinement", False, f"the probe could read {facts['read'] == 'allowed'}, write "
                                                      f"{facts['write'] == 'allowed'} outside its directory: {why}")
    size, inodes = facts["work"]
    if size <= _PROBE_LIMITS["max_disk_mb"] * 2**20 and inodes <= sandbox.WORK_INODES:
        work = f"a tmpfs of max_disk_mb (default 64 MiB) and {sandbox.WORK_INODES} inodes"
    else:
        work = "on the host's disk, bounded per file only (no private root)"
    return Layer("filesystem confinement", True, " + ".join(parts) + f"; writable: only the work directory, {work}")


def _process_layer(plan: _Plan, facts: dict) -> Layer:
    per_run = {"switch": "RLIMIT_NPROC on the run's private uid",
               "userns": "RLIMIT_NPROC counted in the run's own user namespace"}.get(plan.uid_mode)
    if facts["pid"] is not None and facts["pid"] != _host_namespace("pid"):
        return Layer("process limit", per_run is not None,
                     f"a PID namespace (its init's exit kills every process left) + {per_run}" if per_run else
                     f"a PID namespace, but RLIMIT_NPROC is shared with the caller: {plan.why.get('uid')}")
    if plan.uid_mode == "switch":
        return Layer("process limit", True, f"{per_run}; its processes are killed by uid at the end (no PID namespace: "
                                            f"{plan.why.get('namespaces')})")
    return Layer("process limit", False, f"no PID namespace ({plan.why.get('namespaces')}) and no private uid")


@functools.lru_cache(maxsize=1)
def _checked() -> bool:
    missing = [layer for layer in sandbox_layers() if not layer.active]
    if missing:
        text = "the code sandbox lacks: " + "; ".join(f"{layer.name} ({layer.detail})" for layer in missing)
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"{text} (CI=true: a missing sandbox layer is a failure)")
        log.warning("%s", text)
    return True


def check_layers() -> None:
    """Warn once per process about missing layers; under CI=true, raise (on every call)."""
    _checked()


def _ipc_layer(plan: _Plan, facts: dict) -> Layer:
    if facts["ipc"] is None or facts["ipc"] == _host_namespace("ipc"):
        return Layer("IPC namespace", False, plan.why.get("namespaces", "the program shares the host's SysV IPC"))
    uts = "a fresh UTS namespace too" if facts["uts"] not in (None, _host_namespace("uts")) else "no UTS namespace"
    return Layer("IPC namespace", True, "a fresh one (unshare --ipc): SysV shared memory, semaphores and message "
                                        f"queues end with the run, unseen by other runs; {uts}")


def _cgroup_layer(plan: _Plan, facts: dict) -> Layer:
    support = cgroups.support()
    found = {key for key, path in facts["cgroups"].items() if path.rsplit("/", 1)[-1].startswith("llmkit-sandbox-")}
    if not plan.cgroup or not ({"memory"} <= found or plan.cgroup == 2 and "" in found):
        return Layer("memory cgroup", False, plan.why.get("cgroup", f"the probe ran in no cgroup of its own: "
                                                                    f"{facts['cgroups']}"))
    if plan.cgroup == 2:
        how = "cgroup v2: memory.max = memory_mb, memory.swap.max = 0, pids.max = max_processes"
    else:
        how = ("cgroup v1: memory.limit_in_bytes (and memsw) = memory_mb, "
               + ("pids.max = max_processes" if "pids" in found else f"no pids cgroup ({support.why})"))
    return Layer("memory cgroup", True, f"one per run, removed after it ({how}): children, memfds, shared memory "
                                        "and the work directory's files all count; an OOM kill is status memory")


def _filter_layer(plan: _Plan, facts: dict) -> Layer:
    if facts["seccomp"] != 2 or facts["unshare_user"] != "EPERM":
        why = plan.why.get("seccomp", f"seccomp mode {facts['seccomp']}, unshare(CLONE_NEWUSER): "
                                      f"{facts['unshare_user']}")
        return Layer("system-call filter", False, why)
    return Layer("system-call filter", True, "seccomp BPF (x86_64, aarch64; other ABIs killed): EPERM for "
                                             "namespaces (unshare, setns, clone with CLONE_NEW*), mounts, ptrace, "
                                             "keyrings, bpf, perf_event_open, userfaultfd, io_uring, modules, kexec")
