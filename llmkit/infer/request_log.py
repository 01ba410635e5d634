"""The request log: one row per call to a model, in SQLite — the schema `llmkit serve` writes for
every request and the client-side call log (`llmkit.apps.production`) writes for every guarded call,
so one file can hold both and one reader reads them.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from ..data.clean import redact_pii


def token_cost(prompt_tokens: int, completion_tokens: int, price_prompt: float, price_completion: float) -> float:
    """What the tokens cost at per-million-token prices (`llmkit serve --price-prompt/--price-completion`)."""
    return (prompt_tokens * price_prompt + completion_tokens * price_completion) / 1e6


SCHEMA = """CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, key TEXT, model TEXT, endpoint TEXT, status INTEGER,
    prompt_tokens INTEGER, completion_tokens INTEGER, latency_s REAL, cost REAL,
    prompt TEXT, completion TEXT)"""


def open_requests_db(path: str | os.PathLike) -> sqlite3.Connection:
    """The SQLite file at `path` with its ``requests`` table (created if absent), usable from any thread."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(SCHEMA)
    return db


def request_rows(db: sqlite3.Connection) -> list[dict]:
    """Every row of the ``requests`` table, oldest first, as dicts of column -> value."""
    cur = db.execute("SELECT * FROM requests ORDER BY id")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def kept_text(text: str | None, log_text: bool, scrub: bool) -> str | None:
    """`text` as a log keeps it: None unless `log_text`; PII masked when `scrub`."""
    if not log_text or text is None:
        return None
    return redact_pii(text, loose=True)[0] if scrub else text


class RequestLog:
    """Every request, one row, in SQLite: time, key, model, endpoint, status, tokens, latency,
    cost (at per-million-token prices), and — only when asked — the prompt and completion text
    with PII masked (`llmkit.data.clean.redact_pii`: ``<EMAIL>``, ``<PHONE>``, ...)."""

    SCHEMA = SCHEMA

    def __init__(self, path: str | os.PathLike, price_prompt: float = 0.0, price_completion: float = 0.0,
                 log_text: bool = False, scrub: bool = True):
        self.path = Path(path)
        self.price_prompt, self.price_completion = price_prompt, price_completion
        self.log_text, self.scrub = log_text, scrub
        self._lock = threading.Lock()
        self._db = open_requests_db(self.path)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return token_cost(prompt_tokens, completion_tokens, self.price_prompt, self.price_completion)

    def write(self, key: str | None, model: str | None, endpoint: str, status: int, prompt_tokens: int = 0,
              completion_tokens: int = 0, latency_s: float = 0.0, prompt: str | None = None,
              completion: str | None = None) -> None:
        prompt, completion = (kept_text(t, self.log_text, self.scrub) for t in (prompt, completion))
        row = (time.time(), key, model, endpoint, status, prompt_tokens, completion_tokens, latency_s,
               self.cost(prompt_tokens, completion_tokens), prompt, completion)
        with self._lock:
            self._db.execute("INSERT INTO requests (time, key, model, endpoint, status, prompt_tokens, "
                             "completion_tokens, latency_s, cost, prompt, completion) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                             row)

    def rows(self) -> list[dict]:
        with self._lock:
            return request_rows(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()
