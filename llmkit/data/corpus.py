"""The embedded corpus: the Python standard library installed on this machine, so there is
always real text to train on with no download."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Iterator


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """The standard library's .py sources, in a fixed order (tests and site-packages left out)."""
    root = stdlib_dir()
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}
    found = []
    for folder, dirs, files in os.walk(root):  # prune site-packages instead of walking through it
        dirs[:] = [d for d in dirs if d not in skip]
        found += [Path(folder) / f for f in files if f.endswith(".py")]
    return sorted(found)


def stdlib_texts(max_bytes: int | None = None) -> Iterator[str]:
    """Source texts of the standard library, up to about `max_bytes` in all; files that are
    not UTF-8 are skipped."""
    total = 0
    for path in stdlib_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield text
        total += len(text.encode("utf-8"))
        if max_bytes is not None and total >= max_bytes:
            return
