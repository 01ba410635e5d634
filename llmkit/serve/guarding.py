"""Guards in front of the API (`llmkit serve ... guards=default`): each chat or completions request
is checked before the model sees it and each reply before the client does.

The server takes any guard set — an object with ``check_input(messages)`` and
``check_output(messages, reply)`` that return decisions with ``action`` (allow / rewrite /
refuse), ``text``, ``messages``, ``category``, ``reason`` and ``guard`` — as
`llmkit.apps.safety.GuardSet` is; `llmkit serve` builds it from ``guards=NAME``. (The serving
room sits below the apps room, so it names no guard; it only runs what it is given.)

- A refused request is answered like any reply, ``finish_reason: "stop"``, with the guard's text as
  the message's `content` and `refusal` (OpenAI's field for a refusal), no tokens spent, and
  ``llmkit_guard`` saying which guard refused and why. A rewritten request (PII replaced by
  placeholders, a planted instruction stripped) goes to the model as rewritten.
- Each reply (each of `n` choices) is checked whole before any of it is sent: a stream is produced
  whole first, then sent as one content chunk — output guards cost streaming its latency (and a
  stream begins only once its checks passed, so a failing check is a plain error response). With tools
  the model's raw text is checked (calls and arguments included) before it is read into calls.
- Guards run off the event loop. In a `GuardSet` a guard that raises refuses the request with its
  guard_error text; a guard set that itself raises fails the request with a 500 (code guard_error).
- ``/metrics`` counts ``llmkit_guard_decisions_total{stage, action, category}``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Sequence

from ..infer.engine import Event
from .errors import APIError

log = logging.getLogger(__name__)

# the reply to a refusal whose guard gave no text of its own
REFUSED_TEXT = "I can't help with that request."


@dataclass
class Checked:
    """A choice as the client gets it once the output guards are done: what `chat_completion` and
    the accounting read from an engine request (`text`, `finish_reason`, `generated`)."""

    text: str
    finish_reason: str | None = "stop"
    generated: list[int] = field(default_factory=list)
    id: str = ""
    guard: dict[str, Any] | None = None  # `guard_info` of a decision that refused or rewrote it


def guard_info(stage: str, decision: Any) -> dict[str, Any]:
    """What a response says about a guard's decision (llmkit's extension field ``llmkit_guard``)."""
    # a chain of rewrites names each guard that rewrote in its notes ("name: reason")
    rewrote = [str(n).split(":", 1)[0] for n in getattr(decision, "notes", ()) or ()]
    return {"stage": stage, "action": decision.action, "category": getattr(decision, "category", "") or "",
            "guard": getattr(decision, "guard", "") or "+".join(rewrote),
            "reason": getattr(decision, "reason", "") or ""}


class ServeGuards:
    """The server's guard set and its metrics."""

    def __init__(self, guards: Any, metrics: Any):
        for method in ("check_input", "check_output"):
            if not callable(getattr(guards, method, None)):
                raise TypeError(f"guards={guards!r} has no {method}(): give a guard set such as "
                                "llmkit.apps.safety.GuardSet.named('default')")
        self.guards, self.metrics = guards, metrics
        metrics.describe("llmkit_guard_decisions_total", "counter",
                         "guard decisions that were not 'allow', by stage (input, output), action and category")

    def _count(self, stage: str, decision: Any) -> None:
        if decision.action != "allow":
            self.metrics.inc("llmkit_guard_decisions_total", stage=stage, action=decision.action,
                             category=getattr(decision, "category", "") or "none")

    async def _run(self, method: str, *args: Any, on_error: Callable[[], None] | None = None) -> Any:
        """A guard set's check, off the event loop. A guard set that raises (one without its own
        fail-closed wrapper) or answers no decision fails the request with a 500 (after `on_error`,
        which accounts for what was generated): nothing unchecked goes through."""
        try:
            d = await asyncio.to_thread(getattr(self.guards, method), *args)
            if getattr(d, "action", None) not in ("allow", "rewrite", "refuse"):
                raise TypeError(f"{method} returned {type(d).__name__}, not a decision")
            return d
        except Exception as e:  # noqa: BLE001 - any failure must fail closed
            if on_error is not None:
                on_error()
            log.error("the guards failed in %s; the request is refused: %s: %s", method, type(e).__name__, e,
                      exc_info=True)
            self.metrics.inc("llmkit_guard_decisions_total", stage=method.split("_")[1], action="error",
                             category="guard_error")
            raise APIError(500, "a safety check failed, so the request was refused; please try again later",
                           type="server_error", code="guard_error") from None

    async def check_input(self, messages: list[dict]) -> tuple[list[dict], Any]:
        """(the messages the model should see, the decision); a refusal's messages are the caller's."""
        d = await self._run("check_input", messages)
        self._count("input", d)
        if d.action == "refuse":
            log.info("guard %s refused a request (%s): %s", d.guard, d.category, d.reason)
            return messages, d
        return (list(d.messages) if d.action == "rewrite" and d.messages is not None else messages), d

    async def check_outputs(self, messages: list[dict], reqs: Sequence[Any],
                            on_error: Callable[[], None] | None = None) -> list[Checked]:
        """Each finished request's reply as the output guards leave it, checked against the
        conversation as the caller sent it; a refusal without a text of its own answers `REFUSED_TEXT`."""
        out = []
        for r in reqs:
            d = await self._run("check_output", messages, r.text, on_error=on_error)
            self._count("output", d)
            if d.action == "refuse":
                out.append(Checked(d.text or REFUSED_TEXT, "stop", list(r.generated), r.id, guard_info("output", d)))
            elif d.action == "rewrite" and d.text is not None:
                out.append(Checked(d.text, r.finish_reason, list(r.generated), r.id, guard_info("output", d)))
            else:
                out.append(Checked(r.text, r.finish_reason, list(r.generated), r.id))
        return out

    @staticmethod
    def refused(decision: Any, n: int) -> list[Checked]:
        """The `n` choices of a request refused on input: the guard's text, nothing generated."""
        return [Checked(decision.text or REFUSED_TEXT, "stop", [], f"refused-{i}", guard_info("input", decision))
                for i in range(n)]


def mark_guarded(body: dict[str, Any], checked: Sequence[Checked], message: bool = True) -> dict[str, Any]:
    """`body` with each refused choice's text also in `message.refusal` (chat) and the guards'
    decisions in ``llmkit_guard`` (a list, one entry per choice that a guard refused or rewrote, with
    the choice's `index`)."""
    infos = [dict(c.guard, index=i) for i, c in enumerate(checked)
             if getattr(c, "guard", None) is not None]  # engine requests carry none
    if not infos:
        return body
    for choice, c in zip(body["choices"], checked):
        if message and getattr(c, "guard", None) is not None and c.guard["action"] == "refuse":
            choice["message"]["refusal"] = c.text
    body["llmkit_guard"] = infos
    return body


def last_user(messages: Sequence[dict]) -> str:
    """The last user message's text (a rewritten raw prompt comes back as one)."""
    users = [m.get("content") for m in messages if m.get("role") == "user"]
    return str(users[-1]) if users and users[-1] is not None else ""


def no_guarded_logprobs(guards: ServeGuards | None, logprobs: Any, param: str = "logprobs") -> None:
    """Log-probs describe the model's own tokens, which an output guard may have replaced: refused."""
    if guards is not None and logprobs:
        raise APIError(400, "logprobs are not available from a server with guards (a guard may replace the "
                            "model's tokens): leave logprobs off, or serve without guards", param=param)


async def replay(checked: Sequence[Checked]) -> AsyncIterator[tuple[int, Event]]:
    """Checked replies as engine events, one whole-text event per choice: how a guarded stream is sent."""
    for i, c in enumerate(checked):
        yield i, Event(c.id, text=c.text, finish_reason=c.finish_reason or "stop",
                       completion_tokens=len(c.generated))


__all__ = ["Checked", "ServeGuards", "guard_info", "last_user", "mark_guarded", "no_guarded_logprobs", "replay"]
