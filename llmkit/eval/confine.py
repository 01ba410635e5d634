"""The inside of the code sandbox: the launcher that confines a process and then runs untrusted code.

`llmkit.eval.sandbox` runs this file as a script, ``python -I -S confine.py CONFIG``, under
``unshare --net --pid --mount --fork --kill-child``, so the launcher starts as root and PID 1 of fresh
network, PID and mount namespaces. It then:

1. builds a private root in its mount namespace (a read-only tmpfs holding read-only bind mounts of
   the Python installation, /usr, /lib*, a few /dev nodes and a fresh /proc, plus the work directory:
   a tmpfs of its own, bounded in bytes and inodes, into which main.py is copied) and moves into it
   with pivot_root; a mount namespace is needed anyway because a Python installed under a private
   home (pyenv in /root, mode 0700) is unreachable for another uid, and a root of fresh 0755
   directories fixes that without touching the host;
2. forks the program's process, which moves itself into the run's cgroups (made by the parent, see
   `llmkit.eval.cgroups`), drops every group and switches to the run's private uid (no
   capabilities are left; without root, unshare adds ``--user --map-root-user`` and a nested user
   namespace does the same), sets rlimits and no_new_privs, adds Landlock rules (read and execute
   the same read-only paths, read and write only the work directory, no TCP when the network is
   off, no signals or abstract sockets beyond its own domain), installs the system-call filter of
   `llmkit.eval.seccomp` (no namespaces, mounts, ptrace, keyring, bpf, ...) and execs
   ``python -I main.py``;
3. stays as the namespace's init, reaping orphans, and reports the program's exit status as one
   JSON line on the status descriptor; its exit tears the namespace down, killing every process
   the program left behind.

The program is not PID 1 itself because init ignores every signal it has no handler for (a
``kill(getpid(), SIGTERM)`` would do nothing), and its status travels on its own pipe because an
exit code of 137 must not pass for a SIGKILL, nor a set-up failure for the program's.

Either Landlock or the private root alone keeps the program off the host's files; both are used
where the machine allows, so one can fail without opening the filesystem. The module is also
imported by the parent for `landlock_abi` and `landlock_restrict`; being run as a script with ``-S``
(no site-packages: faster), it imports only the standard library.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import platform
import resource
import signal
import struct
import sys
from collections.abc import Iterable

# Landlock system calls share one number on every architecture (the generic table since 5.13).
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR, MAKE_REG = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3 and 5
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # the only rights a rule on a file may hold
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6
READ_ONLY = READ_FILE | READ_DIR | EXECUTE
READ_WRITE = (READ_FILE | READ_DIR | WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SYM
              | MAKE_FIFO | MAKE_SOCK | REFER | TRUNCATE)  # no EXECUTE: nothing written by the program runs

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWUSER = 0x10000000
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
DEVICE_LINKS = {"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0", "/dev/stdout": "/proc/self/fd/1",
                "/dev/stderr": "/proc/self/fd/2"}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

if __package__:
    from . import seccomp
else:  # run as a script (-I: its directory is not on sys.path): load the sibling module by its path
    _spec = importlib.util.spec_from_file_location("llmkit_sandbox_seccomp",
                                                   os.path.join(os.path.dirname(__file__), "seccomp.py"))
    seccomp = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(seccomp)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers, 0 where it has none (or a seccomp filter hides it)."""
    result = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                           ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return max(int(result), 0)


def landlock_restrict(abi: int, read_only: Iterable[str], read_write: Iterable[str], deny_tcp: bool) -> None:
    """Restrict this thread (and what it later execs) to `read_only` paths (read, list, execute) and
    `read_write` paths (everything but execute); with `deny_tcp` and ABI >= 4, no TCP bind or connect;
    with ABI >= 6, no signals to or abstract Unix sockets of processes outside the sandbox.
    Needs no_new_privs (or CAP_SYS_ADMIN). Paths that do not exist are skipped."""
    handled = (1 << 13) - 1 | (REFER if abi >= 2 else 0) | (TRUNCATE if abi >= 3 else 0) | (IOCTL_DEV if abi >= 5 else 0)
    net = NET_BIND_TCP | NET_CONNECT_TCP if deny_tcp and abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8  # the struct grew with the ABI; older kernels reject the longer one
    attr = ctypes.create_string_buffer(struct.pack("=QQQ", handled, net, scoped)[:size], size)
    ruleset = _check(_libc.syscall(SYS_LANDLOCK_CREATE_RULESET, attr, ctypes.c_size_t(size), ctypes.c_uint32(0)),
                     "landlock_create_ruleset")
    try:
        for paths, access in ((read_only, READ_ONLY), (read_write, READ_WRITE)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    allowed = access & handled if os.path.isdir(path) else access & handled & FILE_RIGHTS
                    rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, fd), 12)
                    _check(_libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                                         rule, ctypes.c_uint32(0)), f"landlock_add_rule {path}")
                finally:
                    os.close(fd)
        _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def no_new_privs() -> None:
    """Set no_new_privs: no exec from here on can gain privileges (setuid binaries, file capabilities)."""
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


# ---------------------------------------------------------------------------- the private root
def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(text: str | None) -> bytes | None:
        return None if text is None else text.encode()

    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _locked_flags(path: str) -> int:
    """The flags a bind mount of `path` must keep: in a user namespace the kernel refuses a remount
    that would clear the original mount's read-only, nosuid, nodev, noexec or atime flags."""
    f = os.statvfs(path).f_flag
    pairs = ((os.ST_RDONLY, MS_RDONLY), (os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
             (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))
    return sum(ms for st, ms in pairs if f & st)


def _bind(source: str, target: str, flags: int) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(source, target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | flags | _locked_flags(source))


def private_root(new_root: str, read_only: list[str], workdir: str, work_options: str, owner: tuple[int, int] | None,
                 links: dict[str, str], proc: bool) -> None:
    """Make `new_root` (an empty directory) this mount namespace's root: a read-only tmpfs holding
    read-only, nosuid, nodev binds of `read_only`, at `workdir` a nosuid, nodev, noexec tmpfs mounted
    with `work_options` (its size and inode bounds) holding a copy of the host's `workdir`/main.py
    (both owned by `owner`, uid and gid, where given), the symlinks `links` (/bin -> usr/bin on
    merged-/usr systems), a few device nodes and, with `proc` (in a new PID namespace, so the program
    sees only its own processes), a fresh /proc. The host's root is detached afterwards."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here propagates back to the host
    _mount("tmpfs", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for link, target in links.items():
        os.symlink(target, new_root + link)
    for path in read_only:
        _bind(path, new_root + path, MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.makedirs(new_root + workdir)
    _mount("tmpfs", new_root + workdir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, work_options)
    with open(os.path.join(workdir, "main.py"), "rb") as src, open(new_root + workdir + "/main.py", "xb") as dst:
        dst.write(src.read())
    if owner is not None:
        os.chown(new_root + workdir + "/main.py", *owner)
    for dev in DEVICES:
        if os.path.exists(dev):
            _bind(dev, new_root + dev, MS_NOSUID | MS_NOEXEC)
    for link, target in DEVICE_LINKS.items():
        os.symlink(target, new_root + link)
    if proc:  # the host's /proc would show every process's command line
        os.makedirs(new_root + "/proc")
        _mount("proc", new_root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir(new_root)
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is not None:  # pivot_root(".", ".") stacks the old root on the new one; detaching it leaves no way back
        _check(_libc.syscall(number, b".", b"."), "pivot_root")
        _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
    else:  # an architecture not in the table: move the new root over / and chroot (the program is never root)
        _mount(new_root, "/", None, 8192)  # MS_MOVE
        os.chroot(".")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _drop_to_user_namespace(uid: int, gid: int) -> None:
    """Without root on the host the launcher is root only inside unshare's user namespace, and cannot
    switch to another uid: a nested user namespace mapping `uid` to that root (the caller's own uid on
    the host) leaves the program with no capabilities once it execs, over anything."""
    outer_uid, outer_gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {outer_uid} 1"), ("gid_map", f"{gid} {outer_gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


# ---------------------------------------------------------------------------- the launcher
def _child(cfg: dict, abi: int, cgroups: list[int]) -> None:
    """In the program's process: cgroups, identity, rlimits, no_new_privs, Landlock, the system-call
    filter, then exec. Never returns."""
    for fd in cgroups:  # while still root (the files were opened before the host's tree went away)
        os.write(fd, b"0")
        os.close(fd)
    if cfg["uid"] is not None and cfg["switch_uid"]:
        os.setgroups([])
        os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
        os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])  # a non-zero uid in all three slots drops every capability
    elif cfg["uid"] is not None:
        _drop_to_user_namespace(cfg["uid"], cfg["gid"])
    limits = {resource.RLIMIT_CPU: (cfg["cpu_seconds"], cfg["cpu_seconds"] + 1),
              resource.RLIMIT_AS: (cfg["memory_bytes"],) * 2, resource.RLIMIT_FSIZE: (cfg["file_bytes"],) * 2,
              resource.RLIMIT_CORE: (0, 0), resource.RLIMIT_NPROC: (cfg["max_processes"],) * 2,
              resource.RLIMIT_NOFILE: (cfg["max_open_files"],) * 2}
    for which, value in limits.items():
        resource.setrlimit(which, value)
    no_new_privs()
    if abi:
        # /proc only where it is our own (a fresh mount for this PID namespace), not the host's
        landlock_restrict(abi, cfg["read_only"] + list(DEVICES) + (["/proc"] if cfg["proc"] else []),
                          cfg["read_write"] + ["/dev/null"], deny_tcp=not cfg["network"])
    if cfg["seccomp"]:
        seccomp.install(_libc)
    os.chdir(cfg["workdir"])
    os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])


def main(argv: list[str]) -> None:
    """The launcher: set up, fork the program, wait for it as init, report its status, exit."""
    cfg = json.loads(argv[1])
    status = cfg["status_fd"]
    os.set_inheritable(status, False)  # the program never gets the status pipe

    def report(**what: object) -> None:
        os.write(status, (json.dumps(what) + "\n").encode())

    try:
        abi = landlock_abi() if cfg["landlock"] else 0
        cgroups = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in cfg["cgroups"]]
        if cfg["new_root"]:
            owner = (cfg["uid"], cfg["gid"]) if cfg["switch_uid"] else None
            private_root(cfg["new_root"], cfg["read_only"], cfg["workdir"], cfg["work_options"], owner, cfg["links"],
                         cfg["proc"])
        report(ready={"landlock": abi, "new_root": bool(cfg["new_root"]), "pid": os.getpid()})
    except Exception as e:  # noqa: BLE001 - any failure to confine must stop the run, not run unconfined
        report(error=f"sandbox set-up failed: {type(e).__name__}: {e}")
        os._exit(125)
    # a backstop wall clock: should the caller die without killing us, the namespace still ends
    signal.signal(signal.SIGALRM, lambda *_: os._exit(124))
    signal.alarm(int(min(cfg["timeout"], 1e6)) + 5)
    pid = os.fork()
    if pid == 0:
        try:
            _child(cfg, abi, cgroups)
        except BaseException as e:  # noqa: BLE001
            report(error=f"sandbox set-up failed in the program's process: {type(e).__name__}: {e}")
        os._exit(125)
    while True:
        reaped, wstatus = os.waitpid(-1, 0)  # as init, orphans are ours to reap too
        if reaped == pid:
            break
    if os.WIFSIGNALED(wstatus):
        report(signal=os.WTERMSIG(wstatus))
    else:
        report(exit=os.WEXITSTATUS(wstatus))
    os._exit(0)  # init exits: the kernel kills what the program left running in the namespace


if __name__ == "__main__":
    main(sys.argv)
