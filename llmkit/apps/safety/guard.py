"""What a guard is and how guards run together.

A guard looks at a chat request before the model (`check_input`: the messages and any retrieved
documents) and at the reply after it (`check_output`), and returns a `Decision`:

- ``allow``: nothing to do;
- ``rewrite``: go on with changed input (PII replaced by placeholders, an instruction planted in a
  document stripped) or send a changed reply (a leaked secret redacted) — the *safe-complete* tier;
- ``refuse``: do not call the model (input) or do not send the reply (output); `text` is the reply
  to send instead, `reason` and `category` say why.

Guards hold no per-request state: `check_output` is given the conversation as the caller had it
(before any input rewrite) and recomputes what it needs from it, so one guard object serves
concurrent requests. `GuardSet` runs several in order (rewrites chain, the first refusal wins) and
wraps each in `FailClosed`: a guard that raises refuses the request, logged — a broken guard must
never let a request through unchecked.

    guards = GuardSet.named("default")
    d = guards.check_input(messages, documents)
    if d.action == "refuse": reply = d.text
    else: reply = guards.check_output(messages, model(d.messages, d.documents), documents).text
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

log = logging.getLogger(__name__)

Messages = Sequence[Mapping[str, Any]]
ACTIONS = ("allow", "rewrite", "refuse")
TIERS = ("allow", "safe_complete", "refuse")

# Every guard-written reply begins "I can't" so that one refusal detector (llmkit.apps.safety.scoring)
# recognises the guards' own texts as well as the model's refusals.
REFUSALS = {
    "self_harm": ("I can't help with that, but I'm really sorry you're going through this. You don't have to face it "
                  "alone: please reach out to someone you trust, or call or text a crisis line (988 in the US, 116 123 "
                  "for Samaritans in the UK and Ireland, or your local emergency number)."),
    "pii": "I can't share personal details of other people from the records I have access to.",
    "system_leak": "I can't share my instructions or any confidential codes they contain.",
    "prompt_injection": "I can't follow instructions that try to override my own.",
    "jailbreak": "I can't take on a role or mode that sets aside my safety rules.",
    "harmful": "I can't help with that request: what it asks for could cause real harm.",
    "guard_error": "I can't answer this right now: a safety check failed. Please try again later.",
}
DEFAULT_REFUSAL = "I can't help with that request ({reason})."


@dataclass(frozen=True)
class Decision:
    """A guard's verdict. For input, `messages` / `documents` are what the model should see (on
    rewrite); for output, `text` is the reply to send (on rewrite or refuse). `guard` names the guard
    that decided; `notes` lists every guard that rewrote on the way."""

    action: str = "allow"
    text: str | None = None
    messages: list[dict[str, Any]] | None = None
    documents: tuple[str, ...] | None = None
    reason: str = ""
    category: str = ""
    guard: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"Decision action {self.action!r}: use one of {', '.join(ACTIONS)}")

    @property
    def refused(self) -> bool:
        return self.action == "refuse"


def refuse(category: str, reason: str, guard: str = "") -> Decision:
    """A refusal with the canned text of `category` (every text starts "I can't")."""
    text = REFUSALS.get(category) or DEFAULT_REFUSAL.format(reason=reason or category.replace("_", " "))
    return Decision("refuse", text=text, reason=reason, category=category, guard=guard)


def tier_decision(category: str, tier: str, reason: str, guard: str) -> Decision:
    """The input decision for a rule that fired on `category` under its refusal `tier`: allow, a
    safe completion (the category's supportive canned reply, no model call), or a refusal naming the
    reason."""
    if tier not in TIERS:
        raise ValueError(f"tier {tier!r} of category {category!r}: use one of {', '.join(TIERS)}")
    if tier == "allow":
        return Decision("allow", reason=reason, category=category, guard=guard)
    if tier == "safe_complete" and category in REFUSALS:
        return Decision("refuse", text=REFUSALS[category], reason=reason, category=category, guard=guard)
    return Decision("refuse", text=f"I can't help with that: {reason}.", reason=reason, category=category,
                    guard=guard)


@runtime_checkable
class Guard(Protocol):
    """Anything with these two methods (either may simply return ``Decision()``)."""

    name: str

    def check_input(self, messages: Messages, documents: Sequence[str] = ()) -> Decision: ...

    def check_output(self, messages: Messages, reply: str, documents: Sequence[str] = ()) -> Decision: ...


def text_of(content: Any) -> str:
    """A message's content as text (OpenAI content parts joined; None is empty)."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) if isinstance(p, Mapping) else str(p) for p in content)
    return "" if content is None else str(content)


def role_text(messages: Messages, *roles: str) -> str:
    """The text of every message with one of `roles`, one per line."""
    return "\n".join(text_of(m.get("content")) for m in messages if m.get("role") in roles)


def last_user(messages: Messages) -> str:
    """The last user turn's text ("" when there is none)."""
    users = [text_of(m.get("content")) for m in messages if m.get("role") == "user"]
    return users[-1] if users else ""


class FailClosed:
    """`guard`, but an exception in it refuses the request (category "guard_error") and is logged
    with the guard's name, instead of reaching the caller or letting the request through."""

    def __init__(self, guard: Any):
        self.guard = guard
        self.name = getattr(guard, "name", type(guard).__name__)

    def _safe(self, method: str, *args: Any) -> Decision:
        try:
            decision = getattr(self.guard, method)(*args)
            if not isinstance(decision, Decision):
                raise TypeError(f"{method} returned {type(decision).__name__}, not a Decision")
            return decision
        except Exception as e:  # noqa: BLE001 - any failure must fail closed
            log.error("guard %s failed in %s, refusing the request (fail closed): %s: %s", self.name, method,
                      type(e).__name__, e, exc_info=True)
            return refuse("guard_error", f"the guard raised {type(e).__name__}: {e}", self.name)

    def check_input(self, messages: Messages, documents: Sequence[str] = ()) -> Decision:
        return self._safe("check_input", messages, tuple(documents))

    def check_output(self, messages: Messages, reply: str, documents: Sequence[str] = ()) -> Decision:
        return self._safe("check_output", messages, reply, tuple(documents))


class GuardSet:
    """Guards run in order, each wrapped in `FailClosed`. Input: each guard sees the previous one's
    rewrite; the first refusal stops. Output: each guard sees the reply as the previous one left it;
    the first refusal stops. The result is one `Decision` with the final messages / documents / text."""

    def __init__(self, guards: Sequence[Any] = ()):
        self.guards = [g if isinstance(g, FailClosed) else FailClosed(g) for g in guards]
        self.name = "+".join(g.name for g in self.guards) or "none"

    @classmethod
    def named(cls, spec: str, **options: Any) -> "GuardSet":
        """A guard set by name: "default", "none", or comma-separated guard names (see `GUARDS`)."""
        from .presets import build_guards

        return cls(build_guards(spec, **options))

    def __len__(self) -> int:
        return len(self.guards)

    def check_input(self, messages: Messages, documents: Sequence[str] = ()) -> Decision:
        msgs, docs, notes, cats = [dict(m) for m in messages], tuple(documents), [], []
        for g in self.guards:
            d = g.check_input(msgs, docs)
            if d.action == "refuse":
                return replace(d, notes=tuple(notes))
            if d.action == "rewrite":
                msgs = list(d.messages) if d.messages is not None else msgs
                docs = tuple(d.documents) if d.documents is not None else docs
                notes.append(f"{d.guard or g.name}: {d.reason}")
                cats += [d.category] if d.category and d.category not in cats else []
        return Decision("rewrite" if notes else "allow", messages=msgs, documents=docs, notes=tuple(notes),
                        reason="; ".join(notes), category="+".join(cats))

    def check_output(self, messages: Messages, reply: str, documents: Sequence[str] = ()) -> Decision:
        text, notes, cats = reply, [], []
        for g in self.guards:
            d = g.check_output(messages, text, tuple(documents))
            if d.action == "refuse":
                return replace(d, notes=tuple(notes))
            if d.action == "rewrite" and d.text is not None:
                text = d.text
                notes.append(f"{d.guard or g.name}: {d.reason}")
                cats += [d.category] if d.category and d.category not in cats else []
        return Decision("rewrite" if notes else "allow", text=text, notes=tuple(notes), reason="; ".join(notes),
                        category="+".join(cats))
