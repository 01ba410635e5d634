"""A memory and process-count cgroup per sandbox run, made by the parent (`llmkit.eval.sandbox`).

RLIMIT_AS bounds each process's address space, not the run: forked children each get their own,
and memfds, SysV shared memory and tmpfs files are not address space at all. A cgroup counts every
page the run's processes charge, whatever holds it. Each run gets a fresh one beside nothing but
itself, under the caller's own cgroup: on cgroup v1, one in the ``memory`` hierarchy
(``memory.limit_in_bytes`` and, where swap accounting is on, ``memory.memsw.limit_in_bytes``) and one
in ``pids`` (``pids.max``); on cgroup v2, one cgroup with ``memory.max``, ``memory.swap.max = 0`` and
``pids.max``, where the caller's cgroup delegates those controllers to its children. The launcher
moves the program's process into it (writing 0 to each ``cgroup.procs``) before it drops root; the
parent removes it after the run, once every process in it has gone. `support()` says what this
machine allows, or why nothing.
"""

from __future__ import annotations

import errno
import functools
import os
import secrets
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Support:
    version: int  # 1 or 2; 0 where no cgroup can be made
    memory: str | None  # the directory that per-run memory cgroups go in (on v2, the one for both)
    pids: str | None  # on v1, the directory that per-run pids cgroups go in
    why: str  # why not, or what is missing (pids on v1)


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(root, mount point, fstype, super options) of each cgroup mount, from /proc/self/mountinfo."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rest = left.split(), right.split()
            if len(rest) >= 3 and rest[0] in ("cgroup", "cgroup2"):
                found.append((fields[3], fields[4], rest[0], set(rest[2].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and "" for the v2 one."""
    paths = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                paths[name] = path
    return paths


def _base(mounts: list, fstype: str, controller: str | None, own: str) -> str | None:
    """The directory of this process's cgroup in the hierarchy holding `controller`, if mounted here."""
    for root, point, kind, options in mounts:
        inside = own == root or own.startswith(root.rstrip("/") + "/")
        if kind == fstype and (controller is None or controller in options) and inside:
            path = os.path.join(point, own[len(root.rstrip("/")):].lstrip("/"))
            if os.path.isdir(path):
                return path
    return None


@functools.lru_cache(maxsize=1)
def support() -> Support:
    try:
        mounts, own = _mounts(), _own_paths()
    except OSError as e:
        return Support(0, None, None, f"cannot read this process's cgroups: {e}")
    v2 = _base(mounts, "cgroup2", None, own[""]) if "" in own else None
    if v2:
        try:
            with open(os.path.join(v2, "cgroup.subtree_control")) as f:
                delegated = set(f.read().split())
        except OSError:
            delegated = set()
        if {"memory", "pids"} <= delegated and os.access(v2, os.W_OK):
            return Support(2, v2, None, "")
    memory = _base(mounts, "cgroup", "memory", own["memory"]) if "memory" in own else None
    if memory and os.access(memory, os.W_OK):
        pids = _base(mounts, "cgroup", "pids", own["pids"]) if "pids" in own else None
        pids = pids if pids and os.access(pids, os.W_OK) else None
        return Support(1, memory, pids, "" if pids else "no writable cgroup v1 pids hierarchy")
    where = f"v2 at {v2}" if v2 else "no cgroup v2"
    return Support(0, None, None, f"no cgroup to make per run: {where} (memory and pids not both delegated to its "
                                  f"children, or not writable), and no writable cgroup v1 memory hierarchy"
                                  + (f" ({memory})" if memory else ""))


def _write(directory: str, name: str, value: object) -> None:
    with open(os.path.join(directory, name), "w") as f:
        f.write(str(value))


class RunCgroup:
    """One run's cgroup(s): made with their limits on creation, `remove`d after the run."""

    def __init__(self, memory_bytes: int, max_processes: int):
        self.support, self.dirs = support(), []
        name = f"llmkit-sandbox-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            if self.support.version == 2:
                self.memory = self._make(self.support.memory, name)
                _write(self.memory, "memory.max", memory_bytes)
                if os.path.exists(os.path.join(self.memory, "memory.swap.max")):
                    _write(self.memory, "memory.swap.max", 0)
                _write(self.memory, "pids.max", max_processes)
            elif self.support.version == 1:
                self.memory = self._make(self.support.memory, name)
                _write(self.memory, "memory.limit_in_bytes", memory_bytes)
                if os.path.exists(os.path.join(self.memory, "memory.memsw.limit_in_bytes")):
                    _write(self.memory, "memory.memsw.limit_in_bytes", memory_bytes)  # no swapping past the limit
                if self.support.pids:
                    _write(self._make(self.support.pids, name), "pids.max", max_processes)
        except OSError:
            self.remove()
            raise

    def _make(self, parent: str, name: str) -> str:
        path = os.path.join(parent, name)
        os.mkdir(path)
        self.dirs.append(path)
        return path

    @property
    def procs(self) -> list[str]:
        """The ``cgroup.procs`` files the program's process writes 0 to, to move itself in."""
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    def oom_kills(self) -> int:
        """How many of the run's processes the cgroup's OOM killer killed."""
        if not self.dirs:
            return 0
        name = "memory.events" if self.support.version == 2 else "memory.oom_control"
        try:
            with open(os.path.join(self.memory, name)) as f:
                counts = dict(line.split() for line in f if line.strip())
            return int(counts.get("oom_kill", 0))
        except (OSError, ValueError):
            return 0

    def remove(self, wait: float = 5.0) -> None:
        """rmdir each cgroup, waiting up to `wait` seconds for its last processes to be gone (a killed
        PID namespace is empty by the time its init is reaped; dying tasks take a moment to leave)."""
        deadline = time.monotonic() + wait
        for path in reversed(self.dirs):
            delay = 0.001
            while True:
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
        self.dirs = []
