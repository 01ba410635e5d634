"""The typed errors of a guarded call: each says what happened, with the figures, and what to do."""

from __future__ import annotations


class AllAttemptsFailed(ConnectionError):
    """Every model of the chain failed (or was skipped by its circuit breaker). `attempts` lists
    (endpoint, what happened) in the order tried; the message names each endpoint and its count."""

    def __init__(self, message: str, attempts: list[tuple[str, str]]):
        super().__init__(message)
        self.attempts = attempts


class StreamInterrupted(ConnectionError):
    """A stream broke off after it had yielded text. It is not retried (the retry would repeat or
    splice the answer), so what was yielded is all there is: `partial` holds it, `endpoint` says
    where from."""

    def __init__(self, message: str, endpoint: str, partial: str):
        super().__init__(message)
        self.endpoint, self.partial = endpoint, partial


SETTINGS = {"call tokens": "call_tokens", "session tokens": "session_tokens", "session cost": "session_cost"}


class BudgetExceeded(RuntimeError):
    """A call that would go over a token or cost budget, refused before it was sent: `what` (which
    budget: "call tokens", "session tokens", "session cost"), `setting` (the `Budget` field that
    sets it), `used` (spent so far), `reserved` (held by calls still in flight), `asked` (what this
    call could spend at most), `limit`, and `estimated` (the prompt's tokens were an upper-bound
    estimate: the model could not count them)."""

    def __init__(self, what: str, used: float, asked: float, limit: float, reserved: float = 0,
                 estimated: bool = False):
        unit = "$" if "cost" in what else ""
        fmt = (lambda v: f"{unit}{v:.6g}") if unit else (lambda v: f"{int(v):,}")
        setting = SETTINGS.get(what, what.replace(" ", "_"))
        fix = (f"lower max_new_tokens, shorten the prompt or raise {setting}" if what == "call tokens"
               else f"start a new session (Guarded.budget.reset()) or raise {setting}")
        held = f" + {fmt(reserved)} reserved by calls in flight" if reserved else ""
        guess = " (estimated: the model cannot count the prompt's tokens, so one per byte)" if estimated else ""
        super().__init__(f"{what} budget exceeded: {fmt(used)} used{held} + up to {fmt(asked)}{guess} for this call "
                         f"> limit {fmt(limit)} ({setting}); {fix}")
        self.what, self.setting, self.used, self.asked, self.limit = what, setting, used, asked, limit
        self.reserved, self.estimated = reserved, estimated


class GuardRefused(RuntimeError):
    """A guard refused the call: `guard` (its name), `stage` ("input" or "output"), `reason`, and
    `text`, the reply the guard offers instead (None when it offers none). A decision, not a
    failure: never retried, never sent on to a fallback model. (Not an OSError: code that catches
    I/O errors must not swallow a refusal.)"""

    def __init__(self, guard: str, stage: str, reason: str, text: str | None = None):
        super().__init__(f"refused by guard {guard!r} on the {stage}: {reason}")
        self.guard, self.stage, self.reason, self.text = guard, stage, reason, text


class GuardFailed(GuardRefused):
    """A guard that raised: the call is refused (fail closed), the guard's error is chained and logged."""
