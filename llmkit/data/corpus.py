"""Reading sources: text files, folders, globs, JSON lines, and the embedded corpus (the Python
standard library installed on this machine, so there is always real text to train on with no
download)."""

from __future__ import annotations

import glob
import logging
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from llmkit.data.config import STDLIB, DataError, SourceConfig
from llmkit.data.jsonl import BadRow, iter_jsonl

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson")
_GLOB_CHARS = set("*?[")


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


def pydoc_topics() -> list[str]:
    """The help texts of `pydoc_data.topics` (language reference topics), in key order."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


@dataclass
class SourceRead:
    """What reading one source gave: its documents and what was skipped."""

    texts: list[str] = field(default_factory=list)
    files: int = 0
    non_utf8: list[str] = field(default_factory=list)  # files skipped because they are not UTF-8
    bad_records: int = 0  # JSONL lines that are not JSON objects with a string text field
    empty: int = 0  # blank documents (empty files, whitespace-only records), left out
    bytes: int = 0


def resolve_files(src: SourceConfig, index: int = 0) -> list[Path]:
    """The files of a text/JSONL source, sorted: one file, a folder (recursive, hidden entries
    skipped) or a glob. Raises DataError naming `sources[index].path` when nothing is there."""
    raw = os.path.expanduser(src.path)
    if _GLOB_CHARS & set(raw):
        files = sorted(Path(p) for p in glob.glob(raw, recursive=True) if os.path.isfile(p))
        if not files:
            raise DataError(f"sources[{index}].path={src.path!r} is a glob that matches no files; "
                            f"check the pattern (use ** for subfolders, e.g. 'corpus/**/*.txt')")
        return files
    path = Path(raw)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(path).parts))
    raise DataError(f"sources[{index}].path={src.path!r} does not exist; give an existing file, folder or "
                    f"glob, or 'stdlib' for the embedded corpus")


def check_sources(sources: list[SourceConfig]) -> None:
    """Fail early (before any work) when a source path does not exist."""
    for i, src in enumerate(sources):
        if src.path != STDLIB:
            resolve_files(src, i)


def read_source(src: SourceConfig, index: int = 0, max_docs: int | None = None) -> SourceRead:
    """Read the documents of one source, honouring `src.max_bytes` and `max_docs`. Files that
    are not UTF-8 are skipped and counted, never fatal."""
    out = SourceRead()
    for text in _documents(src, index, out):
        if not text.strip():
            out.empty += 1
            continue
        size = len(text.encode("utf-8"))
        if src.max_bytes is not None and out.bytes + size > src.max_bytes:
            break
        out.texts.append(text)
        out.bytes += size
        if max_docs is not None and len(out.texts) >= max_docs:
            break
    if out.non_utf8:
        logger.warning("source %s: skipped %d file(s) that are not UTF-8 (e.g. %s)", src.label,
                       len(out.non_utf8), out.non_utf8[0])
    if out.bad_records:
        logger.warning("source %s: skipped %d JSONL record(s) without a string %r field", src.label,
                       out.bad_records, src.text_field)
    return out


def _documents(src: SourceConfig, index: int, out: SourceRead) -> Iterator[str]:
    if src.path == STDLIB:
        topics = stdlib_dir() / "pydoc_data" / "topics.py"
        for path in stdlib_files():
            if path != topics:  # its text comes below, as one document per topic
                yield from _file_docs(path, "text", src.text_field, out)
        yield from pydoc_topics()
        return
    for path in resolve_files(src, index):
        kind = src.kind
        if kind == "auto":
            kind = "jsonl" if path.suffix.lower() in JSONL_SUFFIXES else "text"
        yield from _file_docs(path, kind, src.text_field, out)


def _file_docs(path: Path, kind: str, text_field: str, out: SourceRead) -> Iterator[str]:
    """Documents of one file; a file that does not decode as UTF-8 gives none and is counted."""
    out.files += 1
    try:
        if kind == "text":
            docs = [path.read_bytes().decode("utf-8").removeprefix("\ufeff")]
        else:
            docs, bad = _jsonl_docs(path, text_field)
            out.bad_records += bad
    except UnicodeDecodeError:
        out.non_utf8.append(str(path))
        return
    yield from docs


def _jsonl_docs(path: Path, text_field: str) -> tuple[list[str], int]:
    """The `text_field` strings of a JSONL file, and how many lines had none (or were not JSON)."""
    docs, bad = [], 0
    for row in iter_jsonl(path):
        text = row[1].get(text_field) if not isinstance(row, BadRow) and isinstance(row[1], dict) else None
        if isinstance(text, str):
            docs.append(text)
        else:
            bad += 1
    return docs, bad
