"""The typed failure of a request to a model server, and the one backoff rule: what `RemoteLLM`
raises and how long it waits, and what `llmkit.apps.production.guarded` reads to decide whether to
try again (status, ``Retry-After``, kind)."""

from __future__ import annotations

import email.utils
import random
import time
from typing import Callable


class EndpointError(ConnectionError):
    """A request that failed on its way to or from a server, with what a caller needs to decide
    whether to try again: `url`, the HTTP `status` (None when no answer came), `retry_after` (the
    seconds the server's ``Retry-After`` asked for, else None), the `attempts` made, and `kind`:
    "status" (an HTTP error status), "connection" (refused, reset, unreachable), "timeout" (no
    answer within the client's timeout: the server may still be working), "malformed" (an answer
    that is not what the API says) or "interrupted" (the answer broke off)."""

    def __init__(self, message: str, url: str = "", status: int | None = None, retry_after: float | None = None,
                 attempts: int = 1, kind: str = "status"):
        super().__init__(message)
        self.url, self.status, self.retry_after, self.attempts, self.kind = url, status, retry_after, attempts, kind


class RequestRefused(EndpointError, ValueError):
    """The server understood the request and refused its content (HTTP 400, 413, 422): bad input,
    not a broken connection (it is both, so callers that catch either keep working)."""


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """The seconds a ``Retry-After`` header asks for (a number of seconds, or an HTTP date); None
    when there is none or it cannot be read."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now()) if when is not None else None


def retry_delay(attempt: int, backoff: float, max_wait: float, retry_after: float | None = None,
                jitter: float = 0.0, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt `attempt` (1, 2, ...): the server's `retry_after` when
    it gave one, else `backoff` × 2^(attempt - 1) spread by ± `jitter` (a fraction: 0.2 = ±20%,
    so that clients failed together do not come back together); never more than `max_wait`. The
    one backoff rule of `RemoteLLM` and `llmkit.apps.production.guarded`."""
    if retry_after is not None:
        delay = retry_after
    else:
        delay = backoff * 2 ** (attempt - 1) * (1.0 + jitter * (2.0 * rand() - 1.0))
    return min(max(delay, 0.0), max_wait)
