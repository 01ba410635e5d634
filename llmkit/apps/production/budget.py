"""Token and cost budgets, per call and per session, and what a session has spent.

A call is admitted only when its worst case fits what is left: its prompt tokens plus
``max_new_tokens`` (and their cost at the prices). Admission *reserves* that worst case, under
the budget's lock, so calls running at the same time cannot together overrun a limit that each
alone fits; when the call ends, `charge` replaces its reservation with what it really used (a
failed call `release`s it). Cache hits cost nothing. Prices are per million tokens, as `llmkit
serve --price-prompt/--price-completion` (and its request log) count them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from .errors import BudgetExceeded

LIMITS = ("call_tokens", "session_tokens", "session_cost")


class Reservation:
    """The worst case of one admitted call, held against the budget until `Budget.charge` settles
    it or `release` hands it back (idempotent). A reservation dropped unsettled (a stream that was
    never read) is released when it is garbage-collected."""

    __slots__ = ("budget", "tokens", "cost", "open")

    def __init__(self, budget: "Budget", tokens: int, cost: float):
        self.budget, self.tokens, self.cost, self.open = budget, tokens, cost, True

    def release(self) -> None:
        """Hand the reserved tokens and cost back (nothing was spent, or `charge` already settled)."""
        self.budget._settle(self)

    def __del__(self) -> None:
        if self.open:
            self.release()


@dataclass
class Budget:
    """Limits (None: no limit) and the session's running totals. One Budget may be shared by
    several `guarded` models (one session across them)."""

    call_tokens: int | None = None  # prompt + completion tokens of one call
    session_tokens: int | None = None  # prompt + completion tokens of all calls
    session_cost: float | None = None  # in the prices' currency
    price_prompt: float = 0.0  # per million prompt tokens
    price_completion: float = 0.0  # per million completion tokens
    used_tokens: int = 0
    used_cost: float = 0.0
    calls: int = 0
    reserved_tokens: int = 0  # the worst cases of calls in flight
    reserved_cost: float = 0.0
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in (*LIMITS, "price_prompt", "price_completion"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"budget {name}={value!r}: give a number >= 0" +
                                 (" or None for no limit" if "price" not in name else " (per million tokens)"))

    @classmethod
    def of(cls, spec: "Budget | dict[str, Any] | int | None", **prices: float) -> "Budget":
        """A Budget from a Budget, a dict of its fields, or an int (session tokens). `prices`
        (price_prompt, price_completion) fill a given Budget's unset (zero) prices; a Budget with
        other prices of its own is a conflict, refused."""
        if isinstance(spec, Budget):
            for name, value in prices.items():
                if not value:
                    continue
                own = getattr(spec, name)
                if own and own != value:
                    raise ValueError(f"{name}={value} but the Budget given has {name}={own}: set the price in one "
                                     "place (the Budget, or guarded's argument)")
                setattr(spec, name, value)
            return spec
        if spec is None:
            return cls(**prices)
        if isinstance(spec, bool) or not isinstance(spec, (int, dict)):
            raise TypeError(f"budget={spec!r}: give a Budget, a dict such as {{'session_tokens': 100000, "
                            "'call_tokens': 4000, 'session_cost': 1.5}, or an int (session tokens)")
        fields = {"session_tokens": spec} if isinstance(spec, int) else dict(spec)
        known = {*LIMITS, "price_prompt", "price_completion"}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"budget field(s) {unknown}: known fields are {sorted(known)}")
        return cls(**{**prices, **fields})

    @property
    def limited(self) -> bool:
        """Whether any limit is set (else admission needs no token count)."""
        return any(getattr(self, name) is not None for name in LIMITS)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """What the tokens cost at the per-million prices (the server's request-log rule)."""
        from ...infer.request_log import token_cost

        return token_cost(prompt_tokens, completion_tokens, self.price_prompt, self.price_completion)

    def admit(self, prompt_tokens: int, max_new_tokens: int, estimated: bool = False) -> Reservation:
        """Reserve the worst case of a call of `prompt_tokens` that may generate `max_new_tokens`,
        or raise `BudgetExceeded` (nothing reserved) when it does not fit a limit beside what is
        spent and reserved. `estimated`: the prompt's count is an upper-bound estimate (the
        error says so)."""
        worst = prompt_tokens + max_new_tokens
        cost = self.cost(prompt_tokens, max_new_tokens)
        with self._lock:
            if self.call_tokens is not None and worst > self.call_tokens:
                raise BudgetExceeded("call tokens", 0, worst, self.call_tokens, estimated=estimated)
            if self.session_tokens is not None and \
                    self.used_tokens + self.reserved_tokens + worst > self.session_tokens:
                raise BudgetExceeded("session tokens", self.used_tokens, worst, self.session_tokens,
                                     self.reserved_tokens, estimated)
            if self.session_cost is not None and self.used_cost + self.reserved_cost + cost > self.session_cost:
                raise BudgetExceeded("session cost", self.used_cost, cost, self.session_cost, self.reserved_cost,
                                     estimated)
            self.reserved_tokens += worst
            self.reserved_cost += cost
        return Reservation(self, worst, cost)

    def charge(self, prompt_tokens: int, completion_tokens: int, reservation: Reservation | None = None) -> float:
        """Add a finished call's tokens to the session, settling its `reservation`; returns its cost."""
        cost = self.cost(prompt_tokens, completion_tokens)
        with self._lock:
            if reservation is not None:
                self._settle(reservation)
            self.used_tokens += prompt_tokens + completion_tokens
            self.used_cost += cost
            self.calls += 1
        return cost

    def _settle(self, reservation: Reservation) -> None:
        with self._lock:
            if reservation.open:
                reservation.open = False
                self.reserved_tokens -= reservation.tokens
                self.reserved_cost = max(0.0, self.reserved_cost - reservation.cost)

    def reset(self) -> None:
        """Start a new session: the totals go back to zero, the limits stay (calls in flight keep
        their reservations)."""
        with self._lock:
            self.used_tokens, self.used_cost, self.calls = 0, 0.0, 0

    def summary(self) -> dict[str, Any]:
        """The limits and the totals, for reports."""
        return {"calls": self.calls, "used_tokens": self.used_tokens, "used_cost": self.used_cost,
                "reserved_tokens": self.reserved_tokens, "call_tokens": self.call_tokens,
                "session_tokens": self.session_tokens, "session_cost": self.session_cost}
