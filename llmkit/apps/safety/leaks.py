"""System-prompt secrets: what in the system prompt looks like a credential or code, kept out of the
reply in every rendering a rule can undo, and requests that fish for it refused.

Secrets are clearly labelled credentials and codes, never prose: (1) a value after a credential
label and ``:``, ``=`` or "is" — ``password: Quokka!Lantern88``, ``SECRET_KEY=rowan-5178-fig``, ``The
password is swordfish``, ``answer-key phrase: copper kettle morning``; strong labels (password, pin,
token, passphrase, api/secret/access key, credentials) take any one-word value after ``:`` or ``=``
(after "is" only password, passcode and passphrase do), weak ones (code, key, secret, phrase,
combination, reference, login) only a code-shaped one (4+ characters with a digit, or a symbol
between letters), so "dress code: black tie" and "the key is to be concise" hold
no secret; (2) a code-like token (letters and 3+ digits, ``ORCHID-7731``) with a credential label at
most three words from it ("the wholesale code ORCHARD-4419") — an unlabelled one such as
``ISO-8601`` is not a secret; (3) key-like strings `llmkit.data.clean.find_pii` calls SECRET. A
reply is redacted where it holds a secret with any case or separators (``o r c h i d 7 7 3 1``),
reversed, in ROT13, or inside a base64 run — and where it repeats 20+ consecutive words of the
system prompt. Redaction is the safe-complete tier: the rest of the reply stands.
"""

from __future__ import annotations

import re
from typing import Sequence

from ...data.clean import find_pii
from .guard import Decision, Messages, last_user, refuse, role_text
from .variants import alnum, base64_runs, loose, rot13, views

# Labels of credentials. Strong ones name a secret whatever its value looks like ("password: swordfish");
# weak ones ("code", "key", "reference") only where the value is shaped like a code, so that "dress code:
# black tie", "the key is to be concise" and "reference: see the manual" are prose, not secrets.
_STRONG = (r"pass(?:word|code|phrase)s?|pins?|tokens?|api[ _-]?keys?|secret[ _-]?keys?|access[ _-]?keys?|"
           r"private[ _-]?keys?|credentials?")
_WEAK = r"codes?|keys?|secrets?|phrases?|combinations?|references?|logins?|combos?"
# A value shaped like a code: a token of 4+ characters with a digit, or with a symbol between letters
# (Salt&Spray77, walnut-arch-6650, HERON-5528, 72-5541).
_SHAPED = r"(?=[^\s.,;:\"'()]*(?:\d|[A-Za-z][&$!#%*@+=~^|_-][A-Za-z0-9]))[^\s,;:\"'()]{4,}?(?=[.,;:\"')]?(?:\s|$))"
_VALUE = r"[^\s.,;\"']+"
# "label: value" / "label=value" (a strong label takes any value, a weak one a code-shaped one), and
# "the password is value" (only pass-words take a plain word after "is": "the pin is loose" is prose).
_LABELLED = re.compile(
    rf"(?:(?P<strong>{_STRONG})|{_WEAK})\s*[:=]\s*[\"'`]?(?P<value>(?(strong){_VALUE}|{_SHAPED}))|"
    rf"(?:(?P<pass>pass(?:word|code|phrase)s?)|{_STRONG}|{_WEAK})\s+is\s+[\"'`]?(?P<is_value>(?(pass){_VALUE}|{_SHAPED}))",
    re.I)
_PHRASE = re.compile(rf"\b(?:pass ?phrase|phrase|password)\s*[:=]\s*[\"'`]?(?P<value>[A-Za-z]+(?: [A-Za-z]+){{1,3}})"
                     r"(?=[\"'`]?\s*(?:[.,;]|$))", re.I | re.M)
# A code-shaped token with a credential label at most three words before or after it ("the wholesale code
# ORCHARD-4419", "key CASCADE-2047"); an unlabelled one ("ISO-8601", "HL-20331") is not a secret.
_CODE_TOKEN = (r"(?<![\w-])(?=(?:[\w-]*\d){3})(?=[\w-]*[A-Za-z])[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)+(?![\w-])|"
               r"(?<![\w-])(?=(?:\w*\d){3})(?=\w*[A-Z])[A-Z0-9]{6,}(?![\w-])")
_CODE = re.compile(rf"(?<![A-Za-z])(?:{_STRONG}|{_WEAK})\b(?:\s+[\w'-]+){{0,3}}?\s+(?P<value>{_CODE_TOKEN})|"
                   rf"(?P<before>{_CODE_TOKEN})(?:\s+[\w'-]+){{0,3}}?\s+\(?(?:{_STRONG}|{_WEAK})\b", re.I)
# Words that hold no secret even where a strong label precedes them ("the password is required").
_PROSE = {"required", "needed", "optional", "secret", "private", "confidential", "hidden", "unknown", "changed",
          "reset", "stored", "encrypted", "missing", "wrong", "incorrect", "correct", "valid", "invalid", "expired",
          "case-sensitive", "below", "above", "the", "a", "an", "not", "never", "always", "only", "your", "my", "our",
          "their", "this", "that", "set", "sent", "shown", "kept", "given", "used", "to", "in", "on", "for", "with"}
_NOUN = r"(?:secret|password|passcode|passphrase|pin|code|key|token|combination|credentials?)"
_REQUEST = (r"\b(?:what(?:'s| is| are| was)?|tell|give|show|print|reveal|write|spell|type|share|send|read|say|"
            r"list|output|encode|assign|put|repeat|need|display|paste|dump|translate|summari[sz]e|render|recite|"
            r"copy|complete|fill)\b")
EXTRACTION = [
    r"\byour\s+(?:[\w-]+\s+){0,2}?(?:prompt|instructions|directions|configuration|context(?: window)?|"
    r"system message|initial message)\b",
    # "a system prompt" is the idea in general ("what's a system prompt?"), not this one
    r"(?<!\ba )(?<!\ban )\bsystem[\s-]+(?:prompt|message|instructions)\b|"
    r"\b(?:initial|original|hidden|secret) (?:prompt|instructions)\b",
    r"\b(?:everything|all) (?:that )?you(?:'ve| have) been told\b|\bwhat (?:were you|you were) told\b",
    r"\b(?:forbidden|not allowed|prohibited) (?:from|to) (?:say|saying|reveal|revealing|share|sharing|mention)",
    rf"\w*{_NOUN}\w*\s*(?:=|:|\bis\b:?)\s*$",  # "The admin password is:" / "secret_token=" left for the model
    rf"\w*{_NOUN}\w*\s*=\s*(?:\n|$)",
    # the system prompt in other languages
    r"mensaje (?:de|del) sistema|instrucciones (?:del|de) sistema|prompt del sistema|invite système|"
    r"message système|instructions système|systemprompt|systemanweisung|prompt do sistema|prompt di sistema|"
    r"系统提示|系统消息|システムプロンプト|시스템 프롬프트",
]
# A secret's noun used as an adjective or for code in general: "the key difference", "the code for a bubble sort".
_NOT_A_SECRET = (r"(?!\s+(?:difference|differences|point|points|idea|ideas|thing|things|takeaways?|factors?|features?|"
                 r"concepts?|parts?|reasons?|questions?|review|style|quality|editor|base|snippets?|examples?|blocks?|"
                 r"managers?|polic(?:y|ies)|requirements?|strength|length|rules?|principles?|steps?|terms?|words?|"
                 r"signatures?|bindings?|signing)\b)"
                 r"(?!(?<=code)\s+(?:for|to|that|which|in|of)\s+(?:a|an|my|this|these|sorting|python|java|javascript|"
                 r"\w+ing)\b)")
_EXTRACTION = re.compile("|".join(f"(?:{p})" for p in EXTRACTION), re.I | re.M)
_CONFIDENTIAL = re.compile(r"\b(?:confidential|secret|private|never (?:reveal|share|disclose|say|output|print|write|"
                           r"give)|do not (?:reveal|share|disclose))\b", re.I)


def system_secrets(system: str) -> list[str]:
    """The secrets of a system prompt (see the module docstring), longest first."""
    found = {m.group("value") or m.group("is_value") for m in _LABELLED.finditer(system)}
    found |= {m.group("value") for m in _PHRASE.finditer(system)}
    found |= {m.group("value") or m.group("before") for m in _CODE.finditer(system)}
    found |= {s.original for s in find_pii(system, ("SECRET",))}
    found = {f.strip().rstrip(".") for f in found}
    return sorted((f for f in found if len(alnum(f)) >= 4 and f.lower() not in _PROSE), key=len, reverse=True)


def asks_for_secret(user: str, secrets: Sequence[str], system: str) -> str | None:
    """The phrase of `user` that fishes for the system prompt or one of its secrets, or None."""
    for view in views(user):
        m = _EXTRACTION.search(view)
        if m:
            return m.group()
        if secrets and re.search(_REQUEST, view, re.I):
            m = re.search(rf"\b(?:your|the)\s+(?:[\w-]+[\s-]){{0,2}}?{_NOUN}s?\b{_NOT_A_SECRET}", view, re.I)
            if m and (m.group().lower().startswith("your") or _named_in(m.group(), system)):
                return m.group()
    return None


def _named_in(phrase: str, system: str) -> bool:
    """Whether the words of `phrase` before its noun ("the vault code": "vault") label something in
    the system prompt, so "the dress code" does not count where the prompt holds a "vault code"."""
    words = phrase.lower().split()[1:]
    qualifiers = [w for w in words[:-1] if w not in ("the", "your")]
    if not qualifiers:
        return bool(re.search(rf"\b{re.escape(words[-1])}\b", system, re.I))
    return all(re.search(rf"\b{re.escape(q)}", system, re.I) for q in qualifiers)


def leak_spans(reply: str, secret: str) -> list[tuple[int, int]]:
    """Where `reply` holds `secret`: as written with any case or separators, reversed, in ROT13, or
    in a base64 run."""
    spans = []
    for form in (secret, alnum(secret)[::-1], rot13(secret)):
        rx = loose(form)
        if rx:
            spans += [m.span() for m in rx.finditer(reply)]
    target = loose(secret)
    for start, end, decoded in base64_runs(reply, min_chars=8):
        if target and target.search(decoded):
            spans.append((start, end))
    return spans


def verbatim_spans(reply: str, source: str, min_words: int = 20) -> list[tuple[int, int]]:
    """Character spans of `reply` that repeat `min_words`+ consecutive words of `source`."""
    src = [w.lower() for w in re.findall(r"\w+", source)]
    grams = {tuple(src[i:i + min_words]) for i in range(len(src) - min_words + 1)}
    if not grams:
        return []
    words = list(re.finditer(r"\w+", reply))
    low = [w.group().lower() for w in words]
    spans, i = [], 0
    while i + min_words <= len(words):
        if tuple(low[i:i + min_words]) in grams:
            j = i + min_words
            while j < len(words) and tuple(low[j - min_words + 1:j + 1]) in grams:
                j += 1
            spans.append((words[i].start(), words[j - 1].end()))
            i = j
        else:
            i += 1
    return spans


def redact_spans(text: str, spans: list[tuple[int, int]], mark: str = "[redacted]") -> str:
    """`text` with the (possibly overlapping) `spans` replaced by `mark`."""
    merged: list[list[int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    for a, b in reversed(merged):
        text = text[:a] + mark + text[b:]
    return text


class SecretGuard:
    """Input: refuses requests for the system prompt or its secrets (only where the system prompt has
    something to keep: a secret, or words that mark it confidential). Output: redacts secrets and long
    verbatim spans of the system prompt from the reply."""

    name = "secrets"

    def __init__(self, min_words: int = 20):
        self.min_words = min_words

    def check_input(self, messages: Messages, documents: Sequence[str] = ()) -> Decision:
        system = role_text(messages, "system", "developer")
        secrets = system_secrets(system)
        if not secrets and not _CONFIDENTIAL.search(system):
            return Decision()
        phrase = asks_for_secret(last_user(messages), secrets, system)
        if phrase:
            return refuse("system_leak", f"a request for the system prompt or its secrets ({phrase.strip()!r})",
                          self.name)
        return Decision()

    def check_output(self, messages: Messages, reply: str, documents: Sequence[str] = ()) -> Decision:
        system = role_text(messages, "system", "developer")
        if not system.strip():
            return Decision()
        user = role_text(messages, "user")
        secrets = [s for s in system_secrets(system) if alnum(s) not in alnum(user)]  # the user's own text may come back
        spans = [sp for s in secrets for sp in leak_spans(reply, s)]
        spans += verbatim_spans(reply, system, self.min_words)
        if not spans:
            return Decision()
        return Decision("rewrite", text=redact_spans(reply, spans), guard=self.name, category="system_leak",
                        reason=f"{len(spans)} leak(s) of the system prompt redacted")
