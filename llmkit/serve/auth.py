"""API keys, per-key rate limits and token budgets (the SQLite request log is `llmkit.infer.request_log`).

A keys file holds one key per line, ``name:key``, optionally followed by that key's own limits::

    # name:key [requests_per_minute=N] [tokens_per_day=N]
    alice:sk-alice-123 requests_per_minute=60 tokens_per_day=200000
    ci-bot:sk-ci-456

Limits not given on a line fall back to the server-wide defaults (`llmkit serve --rate-limit`,
`--token-budget`). A request over a limit is answered 429 with ``Retry-After`` (seconds until the
window has room again). Windows slide: the last 60 seconds for requests, the last 24 hours for
tokens (prompt + completion).
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..infer.request_log import RequestLog  # noqa: F401  (the request log: llmkit.infer.request_log)

MINUTE, DAY = 60.0, 86400.0


class KeyFileError(ValueError):
    pass


@dataclass
class APIKey:
    name: str
    key: str
    requests_per_minute: int | None = None
    tokens_per_day: int | None = None
    requests: deque = field(default_factory=deque, repr=False)  # request times
    tokens: deque = field(default_factory=deque, repr=False)  # (time, tokens)


def load_keys(path: str | os.PathLike) -> list[APIKey]:
    """Parse a keys file; errors name the line."""
    keys: list[APIKey] = []
    seen_names: set[str] = set()
    seen_keys: set[str] = set()
    for n, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        head, *options = line.split()
        name, sep, key = head.partition(":")
        if not sep or not name or not key:
            raise KeyFileError(f"{path}, line {n}: expected 'name:key', got {head!r}")
        if name in seen_names or key in seen_keys:
            raise KeyFileError(f"{path}, line {n}: the {'name' if name in seen_names else 'key'} is used twice")
        limits: dict[str, int] = {}
        for opt in options:
            k, eq, v = opt.partition("=")
            if not eq or k not in ("requests_per_minute", "tokens_per_day") or not v.isdigit() or int(v) < 1:
                raise KeyFileError(f"{path}, line {n}: bad option {opt!r}: use requests_per_minute=N or "
                                   "tokens_per_day=N with N >= 1")
            limits[k] = int(v)
        seen_names.add(name)
        seen_keys.add(key)
        keys.append(APIKey(name, key, **limits))
    if not keys:
        raise KeyFileError(f"{path} holds no keys: add lines of the form name:key")
    return keys


class Limited(Exception):
    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after + 0.999))


class Gate:
    """Who may call, and whether they are within their limits."""

    def __init__(self, keys: list[APIKey] | None = None, requests_per_minute: int | None = None,
                 tokens_per_day: int | None = None, clock=time.monotonic):
        self.keys = {k.key: k for k in keys or []}
        self.default_rpm, self.default_tpd = requests_per_minute, tokens_per_day
        self.clock = clock
        self._lock = threading.Lock()
        self._anonymous = APIKey("anonymous", "")

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def identify(self, authorization: str | None) -> APIKey | None:
        """The key of an ``Authorization: Bearer …`` header; None if unknown or absent (when
        keys are required). Without a keys file everyone is "anonymous"."""
        if not self.keys:
            return self._anonymous
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        given = authorization[7:].strip()
        for key, info in self.keys.items():  # constant-time comparison per key
            if hmac.compare_digest(key.encode(), given.encode()):
                return info
        return None

    def admit(self, key: APIKey) -> None:
        """Count one request against `key`, or raise `Limited`."""
        now = self.clock()
        with self._lock:
            rpm = key.requests_per_minute or self.default_rpm
            while key.requests and key.requests[0] <= now - MINUTE:
                key.requests.popleft()
            if rpm and len(key.requests) >= rpm:
                raise Limited(f"rate limit: {rpm} requests per minute for key {key.name!r}",
                              key.requests[0] + MINUTE - now)
            tpd = key.tokens_per_day or self.default_tpd
            while key.tokens and key.tokens[0][0] <= now - DAY:
                key.tokens.popleft()
            used = sum(t for _, t in key.tokens)
            if tpd and used >= tpd:
                # room comes back when enough of the oldest usage leaves the window
                over, wait = used - tpd, DAY
                for t0, n in key.tokens:
                    over -= n
                    if over < 0:
                        wait = t0 + DAY - now
                        break
                raise Limited(f"token budget: key {key.name!r} used {used} of its {tpd} tokens per day", wait)
            key.requests.append(now)

    def spend(self, key: APIKey, tokens: int) -> None:
        with self._lock:
            key.tokens.append((self.clock(), tokens))

