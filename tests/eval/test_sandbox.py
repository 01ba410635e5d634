"""The code sandbox stops what must be stopped and hides what must be hidden."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest

from llmkit.eval import cgroups, confine, sandbox, sandbox_probe
from llmkit.eval.sandbox import (
    MAX_OUTPUT_BYTES,
    UID_BASE,
    UID_SPAN,
    network_isolation,
    run_code,
    sandbox_layers,
)
from tests.peers import missing


def test_passing_and_failing_programs():
    ok = run_code("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('fine')\n")
    assert ok.passed and ok.stdout.strip() == "fine"
    bad = run_code("assert 1 + 1 == 3, 'wrong'\n")
    assert bad.status == "failed" and "wrong" in bad.stderr
    broken = run_code("def f(:\n")
    assert broken.status == "error" and "SyntaxError" in broken.stderr


def test_infinite_loop_is_stopped():
    t = time.perf_counter()
    r = run_code("while True:\n    pass\n", timeout=2)
    assert r.status == "timeout" and time.perf_counter() - t < 10


def test_sleeping_forever_is_stopped_by_the_wall_clock():
    r = run_code("import time\ntime.sleep(60)\n", timeout=1.5)
    assert r.status == "timeout" and r.seconds < 10


def test_memory_bomb_is_stopped():
    r = run_code("x = []\nwhile True:\n    x.append(bytearray(50 * 2**20))\n", memory_mb=256, timeout=20)
    assert r.status == "memory"


def test_environment_is_scrubbed_and_directory_empty(monkeypatch):
    monkeypatch.setenv("LLMKIT_SECRET_TOKEN", "hunter2")
    r = run_code("import os\nprint(sorted(os.environ))\nprint(os.listdir('.'))\n")
    assert r.passed
    assert "LLMKIT_SECRET_TOKEN" not in r.stdout and "hunter2" not in r.stdout
    assert r.stdout.strip().splitlines()[1] == "['main.py']"


def test_no_network_where_the_machine_allows_it():
    if not network_isolation():
        missing("this machine does not allow a private network namespace (unshare --net)")
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        assert run_code(code, timeout=10).status == "error"
        assert run_code(code, timeout=10, network=True).passed  # the same program reaches it with network on
    finally:
        server.close()


# ---------------------------------------------------------------------------- probes by raw system calls
# The programs below call libc through ctypes, so a layer is tested where the kernel enforces it,
# not only through Python's own checks.
LIBC = "import ctypes, json, os, sys\nlibc = ctypes.CDLL(None, use_errno=True)\n"


def facts(source: str, **kw) -> dict:
    """Run `source` (after the libc prelude) in the sandbox; it prints one JSON object, returned here."""
    r = run_code(LIBC + source, **kw)
    assert r.passed, (r.status, r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def processes_of(uid: int) -> list[int]:
    """The host's live processes (zombies are dead: they wait only to be reaped) whose real uid is `uid`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
                found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.fixture
def outside_dir():
    """A world-readable, world-writable directory outside the sandbox's work directory (in /tmp, whose
    parents every uid may pass), so that only the sandbox, not file permissions, can keep a program out."""
    path = tempfile.mkdtemp(prefix="llmkit-outside-", dir="/tmp")
    os.chmod(path, 0o777)
    secret = os.path.join(path, "secret.txt")
    with open(secret, "w") as f:
        f.write("the caller's secret")
    os.chmod(secret, 0o666)
    yield path
    subprocess.run(["rm", "-rf", path], check=True)


def test_every_layer_is_active_on_this_machine():
    layers = sandbox_layers()
    assert [layer.name for layer in layers] == list(sandbox_probe.LAYERS) == [
        "unprivileged uid", "process group", "resource limits", "network namespace", "filesystem confinement",
        "process limit", "IPC namespace", "memory cgroup", "system-call filter"]
    off = [f"{layer.name}: {layer.detail}" for layer in layers if not layer.active]
    if off:
        missing("sandbox layers missing on this machine: " + "; ".join(off))
    assert all(layer.detail for layer in layers)
    assert sandbox_layers() is layers  # found once per process


def test_code_runs_as_an_unprivileged_uid_without_capabilities():
    f = facts("uid, euid, gid = libc.getuid(), libc.geteuid(), libc.getgid()\n"
              "back = libc.setuid(0); err = ctypes.get_errno()\n"
              "cap = next(l for l in open('/proc/self/status') if l.startswith('CapEff')).split()[1]\n"
              "print(json.dumps(dict(uid=uid, euid=euid, gid=gid, back=back, err=err, cap=int(cap, 16),"
              " groups=os.getgroups())))\n")
    assert f["uid"] != 0 and f["euid"] != 0 and f["gid"] != 0
    assert f["back"] == -1 and f["err"] == errno.EPERM  # setuid(0) is refused
    assert f["cap"] == 0
    if os.geteuid() == 0:  # root hands each run its own uid (so RLIMIT_NPROC is per sandbox)
        assert UID_BASE <= f["uid"] < UID_BASE + UID_SPAN and f["groups"] == []
        uids = {run_code("pass").uid for _ in range(3)}
        assert len(uids) == 3 and all(UID_BASE <= u < UID_BASE + UID_SPAN for u in uids)


def test_cpu_limit_kills_a_loop_that_ignores_sigxcpu():
    r = run_code("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n",
                 timeout=30, cpu_seconds=1)
    assert r.status == "timeout" and r.returncode == -signal.SIGKILL  # the CPU hard limit's kill, not the wall clock's


def test_a_program_blocked_in_a_system_call_is_killed_by_the_wall_clock():
    r = run_code(LIBC + "libc.pause()\n", timeout=1)
    assert r.status == "timeout" and r.returncode is None and r.seconds < 10


def test_memory_limit_refuses_a_raw_mmap():
    source = ("libc.mmap.restype = ctypes.c_void_p\n"
              "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]\n"
              "p = libc.mmap(None, 1 << 30, 3, 0x22, -1, 0)\n"  # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
              "print(json.dumps(dict(failed=p in (None, 2**64 - 1), err=ctypes.get_errno())))\n")
    small = facts(source, memory_mb=256)
    assert small["failed"] and small["err"] == errno.ENOMEM
    assert not facts(source, memory_mb=2048)["failed"]  # the same map fits a larger limit


def test_file_size_limit_refuses_a_raw_write():
    source = ("import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # see EFBIG instead of dying
              "fd = os.open('big.bin', os.O_WRONLY | os.O_CREAT, 0o600)\n"
              "chunk = b'x' * (1 << 20)\nsizes = []\n"
              "for _ in range(3):\n    n = libc.write(fd, chunk, len(chunk))\n    sizes.append(n if n >= 0 else -ctypes.get_errno())\n"
              "print(json.dumps(sizes))\n")
    assert facts(source, max_file_mb=2) == [1 << 20, 1 << 20, -errno.EFBIG]
    assert facts(source, max_file_mb=4) == [1 << 20] * 3


def test_fork_bomb_is_contained_per_sandbox():
    limit = 8
    f = facts("pids, err = [], 0\n"
              "for _ in range(64):\n"
              "    pid = libc.fork()\n"
              "    if pid == 0:\n"
              "        libc.pause()\n"
              "        os._exit(0)\n"
              "    if pid < 0:\n"
              "        err = ctypes.get_errno()\n"
              "        break\n"
              "    pids.append(pid)\n"
              "print(json.dumps(dict(children=len(pids), err=err)))\n", max_processes=limit, timeout=20)
    assert 0 < f["children"] < limit and f["err"] == errno.EAGAIN

    bomb = LIBC + "while True:\n    if libc.fork() == 0:\n        libc.setsid()\n"  # children leave the group too
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(r=run_code(bomb, timeout=3, max_processes=limit)))
    thread.start()
    try:  # meanwhile another sandbox still forks: the limit is per sandbox, not shared by every sandbox
        time.sleep(1)
        other = run_code(LIBC + "pids = []\n"
                                "for _ in range(4):\n"
                                "    pid = libc.fork()\n"
                                "    if pid == 0:\n"
                                "        os._exit(0)\n"
                                "    pids.append(pid)\n"
                                "assert all(p > 0 for p in pids), (pids, ctypes.get_errno())\n"
                                "for p in pids:\n"
                                "    os.waitpid(p, 0)\n", timeout=20, max_processes=limit)
    finally:
        thread.join()
    assert other.passed, other.stderr
    r = box["r"]
    assert r.status == "timeout" and r.uid is not None
    if os.geteuid() == 0:  # the run's private uid (without root it is the caller's own, shared with this test)
        assert processes_of(r.uid) == []  # nothing of the bomb outlives the run, setsid or not
    assert subprocess.run(["true"]).returncode == 0  # the test process still starts processes


OPEN = ("def try_open(path, flags):\n"
        "    fd = libc.open(path.encode(), flags, 0o666)\n"
        "    err = ctypes.get_errno()\n"
        "    if fd >= 0:\n"
        "        libc.close(fd)\n"
        "    return 'ok' if fd >= 0 else errno.errorcode[err]\n"
        "import errno\n")
WRITE = os.O_WRONLY | os.O_CREAT


def test_writing_outside_the_work_directory_fails(outside_dir, monkeypatch):
    monkeypatch.chdir(outside_dir)  # the caller's cwd, world-writable: only the sandbox stands in the way
    stray = f"/tmp/llmkit-sandbox-stray-{uuid.uuid4().hex}"
    targets = [stray, os.path.join(os.getcwd(), "written.txt"), os.path.join(outside_dir, "secret.txt")]
    f = facts(OPEN + f"print(json.dumps([try_open(p, {WRITE}) for p in {targets!r}] + [try_open('here.txt', {WRITE})]))")
    assert all(result != "ok" for result in f[:3]), f
    assert f[3] == "ok"  # its own directory is writable
    assert not os.path.exists(stray) and not os.path.exists(targets[1])
    with open(targets[2]) as f:
        assert f.read() == "the caller's secret"


def test_reading_outside_the_sandbox_fails(outside_dir):
    secret = os.path.join(outside_dir, "secret.txt")
    inside = os.path.join(os.path.dirname(os.__file__), "os.py")  # the Python installation is readable
    f = facts(OPEN + f"print(json.dumps([try_open(p, {os.O_RDONLY}) for p in "
                     f"['/etc/shadow', {secret!r}, {os.path.abspath(__file__)!r}, {inside!r}]]))")
    assert all(result in ("EACCES", "ENOENT", "EPERM") for result in f[:3]), f
    assert f[3] == "ok"


def test_landlock_alone_keeps_a_root_process_to_its_rules(outside_dir):
    """Landlock by itself (no namespaces, no uid switch) on a process of the test's own user, over
    files that file permissions open to everyone: every refusal here is Landlock's."""
    abi = confine.landlock_abi()
    if not abi:
        missing("this kernel offers no Landlock")
    work = tempfile.mkdtemp(dir=outside_dir)
    script = (
        "import importlib.util, json, os, sys\n"
        f"spec = importlib.util.spec_from_file_location('confine', {confine.__file__!r})\n"
        "confine = importlib.util.module_from_spec(spec); spec.loader.exec_module(confine)\n"
        "confine.no_new_privs()\n"
        f"confine.landlock_restrict({abi}, [sys.prefix, sys.base_prefix, '/usr', '/lib', '/lib64'], [{work!r}], True)\n"
        "def attempt(fn):\n"
        "    try:\n        fn()\n        return 'ok'\n"
        "    except OSError as e:\n        return e.__class__.__name__\n"
        f"print(json.dumps([attempt(lambda: open({outside_dir!r} + '/secret.txt').read()),\n"
        f"                  attempt(lambda: open({outside_dir!r} + '/new.txt', 'w').close()),\n"
        f"                  attempt(lambda: open({work!r} + '/new.txt', 'w').close()),\n"
        f"                  attempt(lambda: open(os.__file__).read())]))\n")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["PermissionError", "PermissionError", "ok", "ok"]


def test_the_private_root_alone_hides_the_host(outside_dir, monkeypatch):
    """The mount namespace without Landlock: the host's files are simply not there, and / is read-only."""
    sandbox_layers()  # found (and cached) with the real plan, before the patched one below
    plan = sandbox._plan()
    if "--mount" not in plan.namespaces:
        missing(f"no mount namespace here: {plan.why.get('namespaces')}")
    monkeypatch.setattr(sandbox, "_plan", lambda: dataclasses.replace(plan, landlock=0))
    f = facts(OPEN + f"print(json.dumps([try_open(p, {os.O_RDONLY}) for p in ['/etc/shadow', '/etc/passwd', "
                     f"{outside_dir + '/secret.txt'!r}]] + [try_open('/new', {WRITE}), sorted(os.listdir('/'))]))")
    assert f[:4] == ["ENOENT", "ENOENT", "ENOENT", "EROFS"], f
    assert "work" not in f[4] and "home" not in f[4] and {"usr", "proc", "dev", "tmp"} <= set(f[4])


def test_the_program_sees_only_its_own_processes():
    f = facts("print(json.dumps(dict(pid=libc.getpid(), ppid=libc.getppid(),"
              " visible=sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))))")
    assert f["pid"] == 2 and f["ppid"] == 1 and f["visible"] == [1, 2]  # the launcher is init; nothing of the host


def test_no_raw_connection_to_the_hosts_loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    source = ("import struct\n"
              "s = libc.socket(2, 1, 0)\n"  # AF_INET, SOCK_STREAM
              f"addr = struct.pack('=HH4s8x', 2, {socket.htons(port)}, bytes([127, 0, 0, 1]))\n"
              "rc = libc.connect(s, addr, len(addr))\n"
              "print(json.dumps(dict(socket=s, rc=rc, err=ctypes.get_errno())))\n")
    try:
        off = facts(source)
        on = facts(source, network=True)  # the same program reaches the server with the network on
    finally:
        server.close()
    assert off["socket"] >= 0 and off["rc"] == -1 and off["err"] in (errno.ENETUNREACH, errno.EACCES), off
    assert on["rc"] == 0, on


def test_megabytes_of_output_are_cut_and_said_so():
    r = run_code("import os, sys\n"
                 "for _ in range(80):\n    os.write(1, b'x' * 65536)\n"
                 "os.write(1, b'THE END\\n')\n"
                 "for _ in range(40):\n    os.write(2, b'y' * 65536)\n"
                 "assert False, 'last words'\n", timeout=30)
    assert r.status == "failed" and r.truncated  # the failure at the tail of stderr is still seen
    for text, name, size in ((r.stdout, "stdout", 80 * 65536 + 8), (r.stderr, "stderr", None)):
        assert len(text) < MAX_OUTPUT_BYTES + 300
        note = text.rstrip("\n").splitlines()[-1]
        assert re.fullmatch(rf"\[llmkit sandbox: {name} was [\d,]+ bytes, cut to its first [\d,]+ and last [\d,]+\]",
                            note), note
        if size:
            assert f"{size:,} bytes" in note
    assert "THE END" in r.stdout and "last words" in r.stderr and r.stdout.startswith("xxx")
    small = run_code("print('hi')\n", max_output_bytes=1024)
    assert small.stdout == "hi\n" and not small.truncated
    cut = run_code("import sys\nsys.stdout.write('a' * 5000)\n", max_output_bytes=1000)
    assert cut.truncated and cut.stdout.split("\n[llmkit sandbox:")[0].count("a") == 1000


def test_a_missing_layer_warns_here_and_fails_under_ci(monkeypatch, caplog):
    fake = (sandbox_probe.Layer("network namespace", False, "not allowed here"),)
    monkeypatch.setattr(sandbox_probe, "sandbox_layers", lambda: fake)
    sandbox_probe._checked.cache_clear()
    try:
        monkeypatch.setenv("CI", "true")
        with pytest.raises(RuntimeError, match="network namespace.*not allowed here"):
            run_code("pass")
        monkeypatch.delenv("CI")
        with caplog.at_level(logging.WARNING, logger="llmkit.eval.sandbox"):
            assert run_code("pass").passed
        assert "network namespace (not allowed here)" in caplog.text
    finally:
        sandbox_probe._checked.cache_clear()


def test_udp_leaves_no_trace_on_the_host():
    """UDP, which Landlock does not cover: only the network namespace stops this datagram."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.5)
    port = server.getsockname()[1]
    source = ("import struct\n"
              "s = libc.socket(2, 2, 0)\n"  # AF_INET, SOCK_DGRAM
              f"addr = struct.pack('=HH4s8x', 2, {socket.htons(port)}, bytes([127, 0, 0, 1]))\n"
              "sent = libc.sendto(s, b'escaped', 7, 0, addr, len(addr))\n"
              "print(json.dumps(dict(sent=sent, err=ctypes.get_errno())))\n")

    def received() -> bytes | None:
        try:
            return server.recv(64)
        except TimeoutError:
            return None

    try:
        off = facts(source)
        got_off = received()
        on = facts(source, network=True)
        got_on = received()
    finally:
        server.close()
    assert off["sent"] == -1 and off["err"] == errno.ENETUNREACH and got_off is None, off
    assert on["sent"] == 7 and got_on == b"escaped"  # the same program's datagram arrives with the network on


def test_landlock_rules_are_applied_inside_the_sandbox():
    """Listing / and connecting over TCP are what the private root and the network namespace alone
    would answer differently (an empty listing; ENETUNREACH): EACCES is Landlock's."""
    abi = confine.landlock_abi()
    if not abi:
        missing("this kernel offers no Landlock")
    f = facts("import socket\n"
              "def attempt(fn):\n    try:\n        fn()\n        return 'ok'\n    except OSError as e:\n"
              "        return errno.errorcode[e.errno]\n"
              "import errno\n"
              "print(json.dumps([attempt(lambda: os.listdir('/')), attempt(lambda: os.listdir('/usr')),"
              " attempt(lambda: socket.create_connection(('127.0.0.1', 9), timeout=2))]))\n")
    assert f[:2] == ["EACCES", "ok"], f
    assert f[2] == ("EACCES" if abi >= 4 else "ENETUNREACH"), f


def test_without_a_pid_namespace_leftovers_are_killed_by_uid(monkeypatch):
    """Where no PID namespace is allowed, the run's processes are swept by its private uid, both
    after a timeout and after a program that exits leaving a detached child behind."""
    if os.geteuid() != 0:
        pytest.skip("only root runs each program as a private uid, which this fallback sweeps")
    sandbox_layers()  # found (and cached) with the real plan, before the patched one below
    plan = sandbox._plan()
    if plan.uid_mode != "switch":
        missing(f"the sandbox cannot switch to a private uid here: {plan.why.get('uid')}")
    monkeypatch.setattr(sandbox, "_plan", lambda: dataclasses.replace(
        plan, namespaces=tuple(n for n in plan.namespaces if n != "--pid")))
    bomb = run_code(LIBC + "while True:\n    if libc.fork() == 0:\n        libc.setsid()\n", timeout=2, max_processes=6)
    left = run_code(LIBC + "if libc.fork() == 0:\n    libc.setsid()\n    for fd in (0, 1, 2):\n        libc.close(fd)\n"
                           "    libc.pause()\nprint('parent done')\n", timeout=20)  # a daemon, holding no pipe
    assert bomb.status == "timeout" and processes_of(bomb.uid) == []
    assert left.passed and left.stdout == "parent done\n" and left.seconds < 10 and processes_of(left.uid) == []



# ---------------------------------------------------------------------------- the system-call filter
RAW = ("import errno\n"
       "def raw(nr, *args):\n"
       "    r = libc.syscall(nr, *args)\n"
       "    if r == 0 and nr == CLONE:\n"
       "        os._exit(0)\n"  # a child clone made: it must not go on to print too
       "    if r > 0 and nr == CLONE:\n"
       "        os.waitpid(r, 0)\n"
       "    return 'allowed' if r >= 0 else errno.errorcode[ctypes.get_errno()]\n"
       "UNSHARE, CLONE, KEYCTL, PTRACE = {'x86_64': (272, 56, 250, 101), 'aarch64': (97, 220, 219, 117)}"
       "[os.uname().machine]\n")
CLONE_NEWUSER, CLONE_NEWNET, SIGCHLD = 0x10000000, 0x40000000, 17


def test_no_user_namespace_and_no_kernel_doors_inside():
    """Without the filter an unprivileged program may make a user namespace and hold every
    capability in it (then bring up a nested network namespace's loopback, open netfilter sockets,
    mount): unshare and clone with CLONE_NEW* flags, the keyring and ptrace are refused with EPERM."""
    if os.uname().machine not in ("x86_64", "aarch64"):
        missing(f"the system-call filter knows x86_64 and aarch64, not {os.uname().machine}")
    f = facts(RAW + f"print(json.dumps(dict(clone=raw(CLONE, {CLONE_NEWUSER | SIGCHLD}, 0, 0, 0, 0),"
                    f" unshare_net=raw(UNSHARE, {CLONE_NEWUSER | CLONE_NEWNET}),"
                    f" unshare=raw(UNSHARE, {CLONE_NEWUSER}),"
                    "  keyctl=raw(KEYCTL, 0, -2, 1), traceme=raw(PTRACE, 0, 0, 0, 0),"
                    "  x32=raw(0x40000000 | 39) if UNSHARE == 272 else 'EPERM',"  # x32's getpid
                    "  seccomp=[l.split()[1] for l in open('/proc/self/status') if l.startswith('Seccomp:')])))\n")
    assert f == {"unshare": "EPERM", "unshare_net": "EPERM", "clone": "EPERM", "keyctl": "EPERM", "traceme": "EPERM",
                 "x32": "EPERM", "seccomp": ["2"]}, f


def test_threads_forks_and_subprocesses_still_work_under_the_filter():
    """clone3 answers ENOSYS, so glibc falls back to clone (threads, posix_spawn); fork and vfork
    make no namespace and pass; /bin/true and /bin/sh are in the private root (/usr, read-only)."""
    f = facts("import subprocess, threading\n"
              "seen = []\n"
              "threads = [threading.Thread(target=seen.append, args=(i,)) for i in range(4)]\n"
              "[t.start() for t in threads]; [t.join() for t in threads]\n"
              "pid = os.fork()\n"
              "if pid == 0:\n    os._exit(7)\n"
              "forked = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])\n"
              "true = subprocess.run(['/bin/true']).returncode\n"
              "sh = subprocess.run(['/bin/sh', '-c', 'echo $((6 * 7))'], capture_output=True, text=True).stdout\n"
              "print(json.dumps(dict(threads=sorted(seen), forked=forked, true=true, sh=sh)))\n")
    assert f == {"threads": [0, 1, 2, 3], "forked": 7, "true": 0, "sh": "42\n"}, f


# ---------------------------------------------------------------------------- SysV IPC
def _sysv(kind: str, key: int) -> list[dict]:
    """The host's SysV objects of `kind` (shm, msg) with `key`, from /proc/sysvipc (this test's IPC namespace)."""
    with open(f"/proc/sysvipc/{kind}") as f:
        head, *rows = [line.split() for line in f]
    return [row for row in (dict(zip(head, r)) for r in rows) if int(row["key"]) == key]


def _remove_sysv(key: int) -> None:
    """Remove what an unconfined run would have left on the host (only the old sandbox did)."""
    libc = __import__("ctypes").CDLL(None, use_errno=True)
    for row in _sysv("shm", key):
        libc.shmctl(int(row["shmid"]), 0, None)  # IPC_RMID
    for row in _sysv("msg", key):
        libc.msgctl(int(row["msqid"]), 0, None)


def test_sysv_shared_memory_and_queues_end_with_the_run():
    key = 0x4C4C0000 | int.from_bytes(os.urandom(2), "big")
    make = ("import errno\n"
            f"shm = libc.shmget({key}, 1 << 20, 0o1600); shm_err = ctypes.get_errno()\n"  # IPC_CREAT | 0600
            f"msg = libc.msgget({key}, 0o1600); msg_err = ctypes.get_errno()\n"
            "print(json.dumps(dict(shm=shm, msg=msg, errs=[errno.errorcode.get(e) for e in (shm_err, msg_err)])))\n")
    look = ("import errno\n"
            f"found = [libc.shmget({key}, 0, 0), ctypes.get_errno(), libc.msgget({key}, 0), ctypes.get_errno()]\n"
            "print(json.dumps([found[0], errno.errorcode[found[1]], found[2], errno.errorcode[found[3]]]))\n")
    try:
        made = facts(make)
        assert made["shm"] >= 0 and made["msg"] >= 0, made  # it may make them, in its own namespace
        assert _sysv("shm", key) == [] and _sysv("msg", key) == []  # nothing of it outlives the run on the host
        assert facts(look) == [-1, "ENOENT", -1, "ENOENT"]  # nor does a later run find them
    finally:
        _remove_sysv(key)


# ---------------------------------------------------------------------------- memory for the whole run
def _leftover_cgroups() -> list[str]:
    support = cgroups.support()
    mine = f"llmkit-sandbox-{os.getpid()}-"
    return [os.path.join(d, n) for d in (support.memory, support.pids) if d for n in os.listdir(d) if n.startswith(mine)]


def _needs_cgroup() -> None:
    if not sandbox._plan().cgroup:
        missing(f"no memory cgroup per run here: {sandbox._plan().why.get('cgroup')}")


def test_forked_children_share_one_memory_limit():
    """RLIMIT_AS is per process: six children of 200 MiB each fit it; the run's cgroup holds them to
    512 MiB together, and an OOM kill there is status "memory"."""
    _needs_cgroup()
    r = run_code(LIBC + "import time\n"
                        "kids = []\n"
                        "for _ in range(6):\n"
                        "    pid = os.fork()\n"
                        "    if pid == 0:\n"
                        "        block = b'x' * (200 << 20)\n"
                        "        time.sleep(1)\n"
                        "        os._exit(0)\n"
                        "    kids.append(pid)\n"
                        "codes = [os.waitpid(p, 0)[1] for p in kids]\n"
                        "print(json.dumps([os.WTERMSIG(c) if os.WIFSIGNALED(c) else None for c in codes]))\n"
                        "sys.exit(1 if any(codes) else 0)\n", memory_mb=512, timeout=30)
    assert r.status == "memory", (r.status, r.stdout, r.stderr)
    if r.stdout.strip():  # the parent, the smallest, normally outlives its children
        assert json.loads(r.stdout).count(signal.SIGKILL) >= 1, r.stdout
    assert _leftover_cgroups() == []


def test_memfds_count_against_the_memory_limit():
    """memfd pages are no address space, so RLIMIT_AS lets any number of them be filled (each as
    large as RLIMIT_FSIZE allows): the cgroup stops them at memory_mb. And descriptors are few."""
    _needs_cgroup()
    r = run_code(LIBC + "chunk = b'm' * (8 << 20)\n"
                        "for i in range(80):\n"  # 640 MiB, in memfds of 8 MiB
                        "    fd = libc.memfd_create(b'hold', 0)\n"
                        "    assert fd >= 0, ctypes.get_errno()\n"
                        "    assert os.write(fd, chunk) == len(chunk)\n"
                        "print('filled')\n", memory_mb=256, timeout=30)
    assert r.status == "memory" and "filled" not in r.stdout, (r.status, r.stdout, r.stderr[-500:])
    assert _leftover_cgroups() == []


def test_open_files_are_few():
    source = "import resource\nprint(json.dumps(resource.getrlimit(resource.RLIMIT_NOFILE)))\n"
    assert facts(source) == [256, 256]
    assert facts(source, max_open_files=64) == [64, 64]


# ---------------------------------------------------------------------------- the work directory's size
def test_the_work_directory_is_a_bounded_tmpfs(tmp_path, monkeypatch):
    """max_file_mb bounds each file only: max_disk_mb bounds them all (ENOSPC), and inodes too, in
    a tmpfs in the private root, so nothing the program writes lands on the host's disk."""
    if "--mount" not in sandbox._plan().namespaces:
        missing(f"no mount namespace here: {sandbox._plan().why.get('namespaces')}")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where run_code makes its directory
    seen, done = [0], threading.Event()

    def watch() -> None:  # the host's view of the sandbox's directory, while the program runs
        while not done.is_set():
            seen[0] = max(seen[0], sum(os.lstat(os.path.join(d, n)).st_blocks * 512
                                       for d, _, names in os.walk(tmp_path) for n in names))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        f = facts("import time\n"
                  "chunk, written, err = b'd' * (1 << 20), 0, 0\n"
                  "for i in range(64):\n"  # files of 3 MiB (max_file_mb is 4): the total runs out first
                  "    fd = os.open(f'data{i}.bin', os.O_WRONLY | os.O_CREAT, 0o600)\n"
                  "    for _ in range(3):\n"
                  "        n = libc.write(fd, chunk, len(chunk))\n"
                  "        if n < 0:\n            err = ctypes.get_errno()\n            break\n"
                  "        written += n\n"
                  "    os.close(fd)\n"
                  "    if err:\n        break\n"
                  "time.sleep(0.5)\n"  # the host looks meanwhile
                  "[os.unlink(f'data{j}.bin') for j in range(i + 1)]\n"
                  "files = 0\n"
                  "while files < 100000:\n"
                  "    fd = libc.open(f'f{files}'.encode(), os.O_WRONLY | os.O_CREAT, 0o600)\n"
                  "    if fd < 0:\n        break\n"
                  "    libc.close(fd)\n    files += 1\n"
                  "print(json.dumps(dict(err=err, written=written, files=files, files_err=ctypes.get_errno())))\n",
                  max_disk_mb=8, max_file_mb=4, timeout=30)
    finally:
        done.set()
        watcher.join()
    assert f["err"] == errno.ENOSPC and 6 << 20 <= f["written"] <= 8 << 20, f
    assert f["files_err"] == errno.ENOSPC and f["files"] < sandbox.WORK_INODES, f
    assert seen[0] < 1 << 20  # main.py only
