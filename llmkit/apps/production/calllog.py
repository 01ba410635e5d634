"""The client's call log: one row per guarded call, in llmkit serve's request-log schema, to SQLite
or JSONL.

The columns are the server's (`llmkit.infer.request_log.RequestLog.SCHEMA`: time, key, model, endpoint,
status, prompt_tokens, completion_tokens, latency_s, cost, prompt, completion) and two more the
server's table gains when a client log shares its file: ``cache_hit`` ("exact", "semantic" or
NULL) and ``error`` (what went wrong, NULL on success). The server's `RequestLog` reads such a
file as before. ``key`` holds the session's name; ``endpoint`` the API path the call maps to
(``/v1/chat/completions`` or ``/v1/completions``); ``status`` 200 on success, the server's status
when a failure came with one, else 0. Prompt and completion text are written only with
``log_text=True``, PII masked (`llmkit.data.clean.redact_pii`) unless ``scrub=False``.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...infer.request_log import kept_text, open_requests_db, request_rows

EXTRA_COLUMNS = (("cache_hit", "TEXT"), ("error", "TEXT"))


@dataclass
class CallRecord:
    """One row of the call log (the server's columns, then the client's)."""

    time: float
    key: str | None
    model: str | None
    endpoint: str
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cost: float = 0.0
    prompt: str | None = None
    completion: str | None = None
    cache_hit: str | None = None
    error: str | None = None


class CallLog:
    """Where rows go: `open_call_log` picks SQLite (``.sqlite``/``.db``) or JSONL (``.jsonl``)."""

    def __init__(self, path: str | os.PathLike, log_text: bool = False, scrub: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log_text, self.scrub = log_text, scrub
        self._lock = threading.Lock()

    def text(self, text: str | None) -> str | None:
        """`text` as the log may keep it: None unless `log_text`, PII masked when `scrub`."""
        return kept_text(text, self.log_text, self.scrub)

    def write(self, record: CallRecord) -> None:
        """Append one row (its text kept or dropped, and scrubbed, as the log says)."""
        record.prompt, record.completion = self.text(record.prompt), self.text(record.completion)
        self._write(record)

    def _write(self, record: CallRecord) -> None:
        raise NotImplementedError

    def rows(self) -> list[dict[str, Any]]:
        """Every row, oldest first, as dicts of column → value."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file (a JSONL log holds none open)."""
        pass


class JsonlCallLog(CallLog):
    """One JSON object a line, appended (a line is written whole with one write, then flushed)."""

    def _write(self, record: CallRecord) -> None:
        line = json.dumps(asdict(record), ensure_ascii=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


class SQLiteCallLog(CallLog):
    """The server's ``requests`` table (created from `RequestLog.SCHEMA` if absent), plus the
    client's columns added if missing. It may be the very file `llmkit serve --request-log` writes."""

    def __init__(self, path: str | os.PathLike, log_text: bool = False, scrub: bool = True):
        super().__init__(path, log_text, scrub)
        self._db = open_requests_db(self.path)  # the one schema
        have = {row[1] for row in self._db.execute("PRAGMA table_info(requests)")}
        for name, kind in EXTRA_COLUMNS:
            if name not in have:
                self._db.execute(f"ALTER TABLE requests ADD COLUMN {name} {kind}")

    def _write(self, record: CallRecord) -> None:
        row = asdict(record)
        names = ", ".join(row)
        with self._lock:
            marks = ", ".join("?" * len(row))
            self._db.execute(f"INSERT INTO requests ({names}) VALUES ({marks})", tuple(row.values()))

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return request_rows(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_call_log(log: "str | os.PathLike | CallLog | None", log_text: bool = False,
                  scrub: bool = True) -> CallLog | None:
    """A call log from a path (``.jsonl``: JSONL; ``.sqlite``, ``.sqlite3``, ``.db``: SQLite) or a `CallLog`."""
    if log is None or isinstance(log, CallLog):
        return log
    suffix = Path(log).suffix.lower()
    if suffix == ".jsonl":
        return JsonlCallLog(log, log_text, scrub)
    if suffix in (".sqlite", ".sqlite3", ".db"):
        return SQLiteCallLog(log, log_text, scrub)
    raise ValueError(f"log={str(log)!r}: name a .jsonl file (JSON lines) or a .sqlite / .db file (the server's "
                     "request-log table)")

