"""Safety for chat requests: guards before and after the model, and a red-team suite scored by rules.

- `guard`: the `Decision` (allow / rewrite / refuse, with reason and category), the `Guard` protocol
  (`check_input(messages, documents)`, `check_output(messages, reply, documents)`), `GuardSet` (guards
  in order, each failing closed) and the refusal tiers (allow, safe-complete, refuse).
- `topics`: harm areas and jailbreak templates on the user's turn, with allow-lists for homonyms.
- `injection`: instructions planted in documents and tool results stripped; overrides in the user turn refused.
- `leaks`: system-prompt secrets kept out of replies (also reversed, spaced, ROT13, base64).
- `pii`: personal data via `llmkit.data.clean.find_pii`, with a reversible placeholder map.
- `classifier`: learned guards — an injection classifier (``builtin:injection``) on documents and tool
  results (opt-in: ``guards=default,injection_model``) and a harm classifier (``builtin:harm``) on the
  user turns (opt-in: ``guards=default,harm_model``).
- `constitution`: a critique-and-revise loop against a list of principles, by a critic model (opt-in:
  ``guards=default,constitution``).
- `scoring`: the rules that score a reply (contains, calls a tool, refuses).
- `redteam`: the runner and its report (`llmkit redteam`).

    guards = GuardSet.named("default")        # topics, injection, secrets, pii

`llmkit serve ... guards=default` runs a `GuardSet` in front of the API (`llmkit.serve.guarding`).
"""

from .constitution import PRINCIPLES, ConstitutionGuard
from .guard import ACTIONS, REFUSALS, TIERS, Decision, FailClosed, Guard, GuardSet
from .injection import InjectionGuard, strip_injection
from .classifier import ClassifierGuard, HarmModelGuard, InjectionModelGuard
from .leaks import SecretGuard, system_secrets
from .pii import PiiGuard, PiiMap
from .presets import DEFAULT, GUARDS, build_guards
from .redteam import CaseResult, run_redteam, summarize, write_redteam
from .scoring import calls_tool, is_refusal
from .topics import DEFAULT_TIERS, TopicGuard, harm_areas

__all__ = ["ACTIONS", "CaseResult", "ClassifierGuard", "ConstitutionGuard", "HarmModelGuard", "PRINCIPLES", "DEFAULT", "DEFAULT_TIERS", "Decision", "FailClosed", "GUARDS", "Guard",
           "GuardSet", "InjectionGuard", "InjectionModelGuard", "PiiGuard", "PiiMap", "REFUSALS", "SecretGuard", "TIERS", "TopicGuard",
           "build_guards", "calls_tool", "harm_areas", "is_refusal", "run_redteam", "strip_injection", "summarize",
           "system_secrets", "write_redteam"]
