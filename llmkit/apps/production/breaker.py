"""Retry decisions and the circuit breaker of one endpoint.

Which failures are worth another try on the same endpoint (`classify` → RETRY): a 429 (after its
``Retry-After``), a 5xx, a refused or reset connection (an `EndpointError`, or a plain
ConnectionError from a model that is not remote), and a stream that broke off before its first
token. Which go to the next model of the fallback chain (FALLBACK): a timeout (the server may
still be working, and would be paid twice), a malformed answer or a 401/404 (asking again gets
the same), an inner ``guarded()`` whose own chain failed (it has retried already), and any other
OSError (a missing weights file, a device error: the endpoint's own environment, which another
model does not share). What is raised at once, on no other model (RAISE): bad input (a
400/413/422 `RequestRefused`, a ValueError), a guard's refusal (`GuardRefused`, `GuardFailed`) and
a budget's (`BudgetExceeded`) — decisions, not failures: sending them on to a fallback would serve
an answer the guard or the budget refused — and any other exception (a bug is not hidden behind
another model).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from ...infer.retry import EndpointError, RequestRefused
from .errors import AllAttemptsFailed, BudgetExceeded, GuardRefused

RETRY, FALLBACK, RAISE = "retry", "fallback", "raise"


def classify(error: BaseException) -> str:
    """What a failed request calls for: `RETRY` (the same endpoint again, after a wait),
    `FALLBACK` (the next model of the chain) or `RAISE` (stop: the caller's mistake, or a
    guard's or budget's decision); see the module doc."""
    if isinstance(error, (GuardRefused, BudgetExceeded, RequestRefused)):
        return RAISE
    if isinstance(error, EndpointError):
        if error.kind == "status":
            return RETRY if error.status == 429 or (error.status or 0) >= 500 else FALLBACK
        return {"connection": RETRY, "interrupted": RETRY}.get(error.kind, FALLBACK)
    if isinstance(error, (AllAttemptsFailed, TimeoutError)):
        return FALLBACK
    if isinstance(error, ConnectionError):
        return RETRY
    if isinstance(error, OSError):
        return FALLBACK
    return RAISE


class CircuitBreaker:
    """Closed (calls go through) → open after `failures` failed requests in a row (calls are
    skipped for `cooldown` seconds) → half-open (one trial call: success closes the circuit,
    failure opens it for another cool-down)."""

    def __init__(self, failures: int = 5, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic):
        if failures < 1:
            raise ValueError(f"breaker_failures={failures}: must be 1 or more (failed requests in a row before "
                             "an endpoint is skipped)")
        if cooldown < 0:
            raise ValueError(f"breaker_cooldown={cooldown}: must be 0 or more seconds")
        self.failures, self.cooldown, self.clock = failures, cooldown, clock
        self.consecutive = 0
        self.opened_at: float | None = None
        self._trial = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        """"closed", "open" or "half-open"."""
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown else "open"

    def allow(self) -> bool:
        """Whether a request may go now (in half-open, only the one trial request)."""
        with self._lock:
            state = self.state
            if state == "closed":
                return True
            if state == "half-open" and not self._trial:
                self._trial = True
                return True
            return False

    def retry_in(self) -> float:
        """Seconds until an open circuit lets a trial call through (0 when it would now)."""
        return 0.0 if self.opened_at is None else max(0.0, self.opened_at + self.cooldown - self.clock())

    def success(self) -> None:
        """The endpoint answered: close the circuit."""
        with self._lock:
            self.consecutive, self.opened_at, self._trial = 0, None, False

    def abandon(self) -> None:
        """A request that ended with neither an answer nor an error of the endpoint's (the caller
        was interrupted: KeyboardInterrupt, SystemExit): a half-open trial counts as failed, so the
        circuit opens for another cool-down instead of waiting forever for a trial that will not
        report; outside a trial nothing changes."""
        with self._lock:
            if self._trial:
                self.opened_at, self._trial = self.clock(), False

    def failure(self) -> None:
        """A failed request: one more in a row (a failed trial opens the circuit again)."""
        with self._lock:
            self.consecutive += 1
            if self._trial or self.consecutive >= self.failures:
                self.opened_at, self._trial = self.clock(), False
