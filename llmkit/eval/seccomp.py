"""The sandbox's system-call filter: a classic-BPF seccomp program that shuts the kernel's most
exposed doors to the confined program, installed by the launcher (`llmkit.eval.confine`) in the
program's process after no_new_privs and Landlock, just before it execs Python.

Refused with EPERM: new namespaces (``unshare``, ``setns``, and ``clone`` with any ``CLONE_NEW*`` flag
in its first argument, so no user namespace hands the program a fresh set of capabilities), mounts
(``mount``, ``umount2``, ``pivot_root``, ``chroot`` and the new mount API), debugging other processes
(``ptrace``, ``process_vm_readv``/``writev``), the kernel keyring, ``bpf``, ``perf_event_open``,
``userfaultfd``, io_uring, kernel modules and kexec, file handles. ``clone3`` answers ENOSYS, since its
flags live in memory a filter cannot read; glibc then falls back to ``clone``, whose flags it can.
Everything else is allowed: threads, ``fork``, ``vfork``, ``execve`` and subprocesses work as usual.

The filter knows x86_64 and aarch64 (little-endian: a flag word is the low half of the argument);
a system call made through another ABI (i386 ``int 0x80``, arm32 compat) kills the process, and x32
calls on x86_64 are refused. `supported()` says whether this machine is one of the two. The module
imports only the standard library, as the launcher runs with ``-S``.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT = 0x40000000
# name: (x86_64, aarch64); from asm/unistd_64.h and asm-generic/unistd.h
DENIED = {
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41),
    "chroot": (161, 51), "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218), "bpf": (321, 280),
    "perf_event_open": (298, 241), "userfaultfd": (323, 282), "kexec_load": (246, 104),
    "kexec_file_load": (320, 294), "init_module": (175, 105), "finit_module": (313, 273),
    "delete_module": (176, 106), "name_to_handle_at": (303, 264), "open_by_handle_at": (304, 265),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431),
    "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442), "open_tree_attr": (467, 467),
}
CLONE, CLONE3 = (56, 220), (435, 435)
CLONE_NEWTIME, CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS = 0x80, 0x20000, 0x02000000, 0x04000000
CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x08000000, 0x10000000, 0x20000000, 0x40000000
CLONE_NEW = (CLONE_NEWTIME | CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER
             | CLONE_NEWPID | CLONE_NEWNET)

# classic BPF: opcodes, seccomp return values, offsets into struct seccomp_data
LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
RET_KILL_PROCESS, RET_ERRNO, RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
OFFSET_NR, OFFSET_ARCH, OFFSET_ARG0 = 0, 4, 16
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2


def supported() -> bool:
    return platform.machine() in AUDIT_ARCH


def program() -> bytes:
    """The filter as an array of ``struct sock_filter`` (code u16, jt u8, jf u8, k u32)."""
    body: list[tuple] = [(LD_W_ABS, OFFSET_ARCH)]  # (code, k) or (code, k, jump-if-true, jump-if-false) or a label
    for arch, audit in AUDIT_ARCH.items():
        body.append((JEQ_K, audit, arch, None))
    body.append((RET_K, RET_KILL_PROCESS))  # a foreign ABI (i386, arm32 compat) or architecture
    for column, arch in enumerate(AUDIT_ARCH):
        body += [arch, (LD_W_ABS, OFFSET_NR)]
        if arch == "x86_64":
            body.append((JGE_K, X32_SYSCALL_BIT, "eperm", None))
        body += [(JEQ_K, numbers[column], "eperm", None) for numbers in DENIED.values()]
        body += [(JEQ_K, CLONE[column], "clone", None), (JEQ_K, CLONE3[column], "enosys", None), (RET_K, RET_ALLOW)]
    body += ["clone", (LD_W_ABS, OFFSET_ARG0), (JSET_K, CLONE_NEW, "eperm", None), (RET_K, RET_ALLOW),
             "eperm", (RET_K, RET_ERRNO | errno.EPERM), "enosys", (RET_K, RET_ERRNO | errno.ENOSYS)]
    return _assemble(body)


def _assemble(body: list) -> bytes:
    """Resolve labels (strings) into the forward jump offsets classic BPF wants; None is the next one."""
    where, count = {}, 0
    for item in body:
        if isinstance(item, str):
            where[item] = count
        else:
            count += 1
    out, pc = bytearray(), 0
    for item in body:
        if isinstance(item, str):
            continue
        code, k, *jumps = item
        offsets = [0 if label is None else where[label] - pc - 1 for label in jumps] or [0, 0]
        if not all(0 <= o < 256 for o in offsets):
            raise ValueError(f"a jump out of reach at instruction {pc}: {offsets}")
        out += struct.pack("=HBBI", code, offsets[0], offsets[1], k)
        pc += 1
    return bytes(out)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(libc: ctypes.CDLL) -> None:
    """Install the filter on this thread (and all it execs and forks); needs no_new_privs first."""
    if not supported():
        raise OSError(errno.ENOSYS, f"no system-call filter for the {platform.machine()} architecture")
    code = program()
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(code) // 8, ctypes.addressof(buffer))
    if libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog),
                  ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {errno.errorcode.get(err, err)}")
