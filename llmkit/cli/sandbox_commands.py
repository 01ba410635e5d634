"""`llmkit sandbox check|run`: which layers of the code sandbox are active on this machine (and why
not), and running a Python file in the sandbox, as evaluation and the python tool run model code."""

from __future__ import annotations

import argparse
from pathlib import Path

from .commands import positive_int

MAX_OUTPUT_BYTES = 64 * 1024  # llmkit.eval.sandbox.MAX_OUTPUT_BYTES, unimported: `--help` needs no sandbox


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be more than 0")
    return value


def add_sandbox_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="sandbox_verb", metavar="ACTION", required=True)
    sub.add_parser("check", help="list the sandbox's layers: active, or why not",
                   description="Run a probe in the sandbox and list each layer (unprivileged uid, process group, "
                               "resource limits, network namespace, filesystem confinement, process limit, IPC "
                               "namespace, memory cgroup, system-call filter): how it is enforced here, or why it "
                               "is missing. Exit status 1 if one is missing.")
    r = sub.add_parser("run", help="run a Python file in the sandbox and print its status, stdout and stderr",
                       description="Run FILE.py (Python source) in the sandbox, as code tasks and the python tool do, "
                                   "and print its status (passed, failed, error, timeout, memory), stdout and "
                                   "stderr. Exit status 0 if it passed (exit status 0), else 1.")
    r.add_argument("file", metavar="FILE.py", help="the Python program to run")
    r.add_argument("--timeout", type=positive_float, default=10.0, help="wall-clock seconds (default 10)")
    r.add_argument("--memory-mb", type=positive_int, default=512,
                   help="memory limit in MiB: each process's address space and, where a memory cgroup is allowed, "
                        "the whole run's memory, work-directory files included (default 512)")
    r.add_argument("--max-disk-mb", type=positive_int, default=64,
                   help="size of the work directory, a tmpfs, in MiB (default 64)")
    r.add_argument("--cpu-seconds", type=positive_int, default=None, help="CPU-time limit (default: the timeout)")
    r.add_argument("--max-output-bytes", type=positive_int, default=MAX_OUTPUT_BYTES,
                   help=f"keep at most this much of stdout and of stderr (default {MAX_OUTPUT_BYTES:,})")
    r.add_argument("--network", action="store_true", help="leave the network on (default: none)")


def _section(name: str, text: str) -> None:
    print(f"--- {name} ---")
    print(text, end="" if not text or text.endswith("\n") else "\n")


def run_sandbox(args: argparse.Namespace) -> int:
    from ..eval.sandbox import run_code, sandbox_layers

    if args.sandbox_verb == "check":
        layers = sandbox_layers()
        width = max(len(layer.name) for layer in layers)
        for layer in layers:
            print(f"{layer.name:<{width}}  {'active ' if layer.active else 'MISSING'}  {layer.detail}")
        missing = [layer.name for layer in layers if not layer.active]
        print(f"\n{len(layers) - len(missing)} of {len(layers)} layers active"
              + (f"; missing: {', '.join(missing)}" if missing else ""))
        return 1 if missing else 0
    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(f"{args.file}: no such file")
    result = run_code(path.read_text(encoding="utf-8", errors="replace"), timeout=args.timeout,
                      memory_mb=args.memory_mb, cpu_seconds=args.cpu_seconds, network=args.network,
                      max_output_bytes=args.max_output_bytes, max_disk_mb=args.max_disk_mb)
    code = "none" if result.returncode is None else str(result.returncode)
    print(f"status: {result.status} (exit status {code}, {result.seconds:.2f} s"
          + (", output cut" if result.truncated else "") + ")")
    _section("stdout", result.stdout)
    _section("stderr", result.stderr)
    return 0 if result.passed else 1
