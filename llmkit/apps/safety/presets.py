"""Guard sets by name: what ``guards=default`` means on the command line."""

from __future__ import annotations

from typing import Any, Callable

from .constitution import ConstitutionGuard
from .injection import InjectionGuard
from .classifier import HarmModelGuard, InjectionModelGuard
from .leaks import SecretGuard
from .pii import PiiGuard
from .topics import TopicGuard

# name -> factory; options are passed to the factories that take them (tiers=..., restore=...)
GUARDS: dict[str, Callable[..., Any]] = {
    "topics": lambda tiers=None, **_: TopicGuard(tiers),
    "injection": lambda **_: InjectionGuard(),
    "secrets": lambda **_: SecretGuard(),
    "pii": lambda restore="user", **_: PiiGuard(restore),
    # not in the default set: it needs a critic model (the option critic=LLM) and costs a model call per reply
    "constitution": lambda critic=None, **_: ConstitutionGuard(critic),
    # not in the default set: it needs a trained classifier (the option injection_model=LLM)
    "injection_model": lambda injection_model=None, **_: InjectionModelGuard(injection_model),
    # not in the default set: it needs a trained classifier (the option harm_model=LLM)
    "harm_model": lambda harm_model=None, **_: HarmModelGuard(harm_model),
}
# Order matters on input: refusals first (topics, injection), then the requests for secrets and personal
# data, which see the documents before PII redaction; on output every guard runs on the reply in turn.
DEFAULT = ("topics", "injection", "secrets", "pii")


def guard_names(spec: str) -> list[str]:
    """The guard names of `spec`: "default", "none" (no guards) or comma-separated names from
    `GUARDS`, where "default" stands for its guards (``default,NAME`` adds one to them); an
    unknown name is a ValueError."""
    spec = (spec or "").strip()
    if spec in ("none", ""):
        return []
    names: list[str] = []
    for n in (n.strip() for n in spec.split(",") if n.strip()):
        names += [d for d in DEFAULT if d not in names] if n == "default" else [n] if n not in names else []
    unknown = [n for n in names if n not in GUARDS]
    if unknown:
        raise ValueError(f"guards={spec}: unknown guard {unknown[0]!r}; use default, none, or a comma-separated "
                         f"list of {', '.join(GUARDS)}")
    return names


def build_guards(spec: str, **options: Any) -> list[Any]:
    """The guards of `spec` (see `guard_names`), built with `options` (tiers=..., restore=..., critic=...)."""
    return [GUARDS[n](**options) for n in guard_names(spec)]
