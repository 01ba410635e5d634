"""The one JSONL reader: every non-blank line of a file parsed, with its line number, or what is
wrong with it (not UTF-8, not JSON, or whatever the caller's row parser says), so that every error
a user sees names the file and the line."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .config import DataError

log = logging.getLogger(__name__)


@dataclass
class BadRow:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any] | BadRow]:
    """(line number, object) for each non-blank line of `path`, or a `BadRow` for a line that is
    not UTF-8 text or not JSON (a leading byte-order mark is allowed)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield BadRow(n, f"not UTF-8 text ({e.reason} at byte {e.start})")
                continue
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                yield BadRow(n, f"not JSON ({e.msg}, column {e.colno})")


SKIP_HINT = "Fix them, or pass --skip-bad-rows (data.skip_bad_rows=true) to train on the rest"


def read_jsonl(path: str | Path, parse: Callable[[Any], list[Any]], skip_bad_rows: bool = False,
               what: str = "rows", fix: str = SKIP_HINT) -> tuple[list[Any], list[BadRow]]:
    """Every row of a JSONL file through `parse` (which returns the row's items, or raises
    ValueError saying what is wrong). Bad rows are returned with their line numbers when
    `skip_bad_rows`, else raise one DataError listing them and ending with `fix`; no usable
    row at all is an error."""
    path = Path(path)
    items, bad = [], []
    for row in iter_jsonl(path):
        if isinstance(row, BadRow):
            bad.append(row)
            continue
        n, obj = row
        try:
            items.extend(parse(obj))
        except ValueError as e:
            bad.append(BadRow(n, str(e)))
    if bad and not skip_bad_rows:
        listing = "; ".join(map(str, bad[:10])) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DataError(f"{path}: {len(bad)} bad row(s): {listing}. {fix}")
    for b in bad:
        log.warning("%s %s (skipped)", path.name, b)
    if not items:
        raise DataError(f"{path}: no usable {what}")
    return items, bad


def load_shipped_or_file(name: str | Path, directory: Path, splits: tuple[str, ...], parse: Callable[[Any], list[Any]],
                         noun: str, fix: str) -> list[Any]:
    """The rows of a shipped split (`name` in `splits`: ``directory/<name>.jsonl``) or of the JSONL
    file at `name`, parsed by `parse`, ids unique: the loader of every labelled set shipped in
    `llmkit/data/builtin/` (`noun` names a row: "question", "case")."""
    if isinstance(name, str) and name in splits:
        path = directory / f"{name}.jsonl"
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: no such file; pass {' or '.join(repr(s) for s in splits)} for the shipped "
                            f"{directory.name} {noun}s, or the path of a JSONL file of {noun}s")
    rows, _ = read_jsonl(path, parse, what=f"{noun}s", fix=fix)
    check_unique_ids(path, rows, noun)
    return rows


def check_unique_ids(path: str | Path, rows: list[Any], noun: str) -> None:
    """A DataError naming the first id (a row's `.id`) that more than one row of `path` uses."""
    from collections import Counter

    seen: Counter[str] = Counter(r.id for r in rows)
    repeated = sorted(i for i, n in seen.items() if n > 1)
    if repeated:
        raise DataError(f"{path}: id {repeated[0]!r} is used by {seen[repeated[0]]} rows"
                        + (f" (and {len(repeated) - 1} more ids repeat)" if len(repeated) > 1 else "")
                        + f"; give every {noun} its own id")
