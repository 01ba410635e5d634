"""Personal data: found by `llmkit.data.clean.find_pii` (the one detector: e-mail, phone, card, SSN,
IP, key-like secrets, long digit runs), replaced by numbered placeholders with a reversible mapping,
kept out of replies, and requests that fish for it refused where the context holds it.

    m = PiiMap()
    safe = m.redact("Call Ana on (305) 555-0158")     # "Call Ana on <PHONE_1>"
    m.restore("I'll call <PHONE_1> now")               # "I'll call (305) 555-0158 now"

`PiiGuard` redacts every message and document before the model. After it, placeholders that stand
for the user's own data (personal data found in a user turn) are restored — the user is authorised
to see what they gave — while third-party data (system prompt, documents, tool results) stays a
placeholder, and any third-party value that reaches the reply anyway (a guard run on output only) is
redacted in any formatting of its digits. Placeholder-shaped text that anyone typed (a user asking
"repeat after me: <PHONE_1>") is neutralised to ``‹PHONE_1›`` before redaction, so it is never
restored. Names, street addresses, dates of birth and health details are beyond `find_pii`; the
request rule covers them by asking, not by finding; self-service requests about the user's own
details ("renew my passport", "update my phone number") are not such requests.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from ...data.clean import PII_KINDS, find_pii
from .guard import Decision, Messages, last_user, refuse, role_text, text_of
from .variants import loose

_OWNER = r"(?:his|her|their|[a-z]+'s)"
REQUEST = [
    r"\b(?:phone|mobile|cell|telephone|fax) (?:numbers?|no\.?)|\bmobile\b(?! (?:app|data|phone|site|version))|"
    r"\be-?mail address(?:es)?\b|\be-?mails? of\b",
    rf"\b{_OWNER} (?:personal )?(?:e-?mail|phone|mobile|number|address|card|ssn|dob|birthday|postcode|allergies|"
    r"medical|diagnosis|passport|visa|salary|bank details)\b",
    r"\bhome address(?:es)?\b|\baddress(?:es)? (?:on file|of (?:the|this|that|every|each|all))\b|\bwhere (?:(?:do|does|did) )?"
    r"(?:she|he|they) (?:lives?|works?)\b|\breal names?\b|\bfull names? and\b|\bwho (?:is|are|was|stays?|lives?|sleeps?) "
    r"(?:in|at) (?:room|bed|flat|apartment|unit|cabin|seat|cell|house|number)\b",
    r"\bsocial security\b|\bssns?\b|\bnational insurance\b|\b(?:card|account|iban|passport|visa|licen[cs]e|"
    r"policy|routing) numbers?\b|\bcard (?:details|on file|(?:he|she|they) pays?)\b|\bcvv\b",
    r"\bdate of birth\b|\bdob\b|\bbirth ?date\b|\b(?:postcode|zip code|post code)s? (?:on file|of (?:the|this|that|"
    r"every|each|all) (?:patient|client|customer|member|user|resident|guest|employee|student|person)s?)\b",
    r"\ballerg(?:y|ies)\b|\bdiagnos\w+|\bmedical (?:leave|details?|records?|history|conditions?)\b|"
    r"\b(?:being )?treated for\b|\btherapist\b",
    r"\bsecurity (?:answers?|questions?)\b|\bhidden fields?\b|\bcontact (?:details?|info\w*)\b|"
    r"\bpersonal (?:data|details|info\w*)\b",
    r"\b(?:every|all|each) (?:the )?(?:fields?|records?|names?|numbers?)\b|\bfull (?:json|record|records|body|"
    r"details|file)\b|\b(?:translate|convert|turn|export|copy|dump) (?:this|these|the|all) (?:\w+ )?records?\b",
]
_REQUEST = re.compile("|".join(f"(?:{p})" for p in REQUEST), re.I)
_YOURS = re.compile(r"\byour (?:phone|mobile|e-?mail|address|contact)", re.I)
# Organisations, whose published phone line or mailbox is not a person's data (a request for "the phone number
# for support" is not a request for personal data; see also `public_contact`).
_ORG_WORDS = (r"office|department|dept|dmv|clinic|hospital|surgery|store|shop|branch|restaurant|hotel|library|school|"
              r"university|council|city hall|town hall|embassy|consulate|airline|company|support|help ?desk|front desk|"
              r"reception|hotline|helpline|customer (?:service|care)|pharmacy|museum|agency|sales|enquiries|inquiries|"
              r"switchboard|press office|headquarters|box office")
_ORG_LINE = re.compile(r"\b(?:phone|telephone|contact|e-?mail)(?: numbers?| details| info\w*| address(?:es)?)? (?:for|of|to "
                       rf"reach) (?:the |your |their )?(?:tech(?:nical)? )?(?:{_ORG_WORDS}|service|care|billing|"
                       r"manufacturer|bank)\b(?!'s|\s+(?:\w+\s+){0,2}?(?:guests?|patients?|managers?|clerks?|"
                       r"employees?|staff|members?|customers?|clients?|residents?|students?|owners?|doctors?|nurses?|"
                       r"teachers?|persons?|people|who|whose|named|called)\b)", re.I)
# "summarise it, no personal details", "leaving out the complainant's name and contact details": asking for
# personal data to be left out is not asking for it
_LEFT_OUT = (r"(?:personal|private|identifying|customer|contact) (?:details|info\w*|data)|phone numbers?|e-?mail "
             r"(?:address(?:es)?)|names?")
_NONE = re.compile(r"\b(?:no|without(?: any)?)\s*(?:personal|private|identifying|customer|contact) (?:details|info\w*|data)\b|"
                   r"\b(?:without|leav(?:e|ing) out|omit(?:ting)?|remov(?:e|ing)|redact(?:ed|ing)?|exclud(?:e|ing)|"
                   r"hid(?:e|ing)|mask(?:ing)?)(?: (?:the|all|any|their|his|her|[a-z]+'s)){0,2}"
                   rf"(?: (?:{_LEFT_OUT})(?:,| and| or| &))*(?: (?:{_LEFT_OUT}))\b", re.I)
# The user's own details in a self-service request ("renew my passport", "update my phone number", "my
# email changed"): not a request for someone else's data.
_NOUNS = (r"(?:phone|mobile|cell|telephone)(?: numbers?)?|e-?mail(?: address)?|(?:home |postal |billing |delivery )?"
          r"address|passport|visa|postcode|zip code|date of birth|birthday|card(?: details| number)?|contact "
          r"(?:details|info\w*)|personal (?:details|info\w*|data)|name|surname")
_MINE = re.compile(
    r"\b(?:update|updating|change|changing|edit|editing|renew|renewing|replace|replacing|add|adding|remove|removing|"
    r"delete|deleting|correct|correcting|register|registering|move|moving|transfer|protect|protecting|hide|hiding|"
    r"apply for|get|getting|lost|new|verify|verifying|confirm|confirming|set|setting|reset|resetting|paste|pasting|"
    r"enter|entering|type|typing|share|sharing|give you|send you)\b"
    rf"(?: (?:\w+ ){{0,2}}?)?(?:my|our) (?:own |new |current |old |primary |personal |work )?(?:{_NOUNS})\b|"
    rf"\b(?:my|our) (?:own |new |current |old )?(?:{_NOUNS}) (?:is|are|has changed|changed|was|will be|expires?|expired)\b",
    re.I)
PRIVACY = re.compile(r"\b(?:confidential|private|privacy|personal data|never (?:be )?(?:disclos|shar|shown|show|reveal|"
                     r"display|giv|given|read|list|confirm)\w*|do not (?:disclose|share|reveal|list|give)|must not be "
                     r"(?:listed|shared|disclosed|exported)|(?:shared|released|shown) only (?:to|with)|only (?:to|with) "
                     r"(?:the )?(?:registered|authori[sz]ed|verified))", re.I)


PLACEHOLDER = re.compile(r"<[A-Z]+_\d+>")


def neutralise(text: str) -> str:
    """`text` with anything shaped like a placeholder (``<PHONE_1>``) rewritten as ``‹PHONE_1›``."""
    return PLACEHOLDER.sub(lambda m: "\u2039" + m.group()[1:-1] + "\u203a", text)


# An organisation's published contact line ("DMV Springfield office: ... phone (555) 201-4477", "support:
# help@acme.example") is not personal data and may be asked for. Narrowly: a phone number whose clause
# (a line, or a sentence) names an organisation within a few words before it and no person (no name of
# two capitalised words, no personal word), or an e-mail of a role mailbox (info@, support@, ...).
_ORG = re.compile(rf"\b(?:{_ORG_WORDS})\b[^\w\n]{{0,4}}(?:(?:main |"
                  r"general |public )?(?:phone|tel\.?|telephone|line|number|no\.?|contact)s?\b[^\w\n]{0,4})?$", re.I)
_PERSON = re.compile(r"\b(?:his|her|their|mr|mrs|ms|miss|dr|patient|member|employee|resident|guest|tenant|client|"
                     r"applicant|student|customer(?:'s)?|born|home|mobile|cell|personal|private|emergency contact|"
                     r"next of kin|name|on file|records?|staff|lives?|reach(?:ed)?)\b|\b[A-Z][a-z]+ [A-Z][a-z]+\b")
_ROLE_MAILBOX = re.compile(r"(?:info|support|help|contact|sales|enquiries|inquiries|office|admin|hello|service|"
                           r"reception|bookings?|press|team|customerservice|frontdesk|noreply|no-reply)@", re.I)
_CLAUSE_END = re.compile(r"\n|[.!?;](?=\s|$)")
_PUBLIC_KINDS = ("PHONE", "EMAIL")


def public_contact(text: str, start: int, kind: str) -> bool:
    """Whether the `kind` span at `start` of `text` is an organisation's published phone number (an
    organisation word right before it, no person in its clause) or a role mailbox's e-mail."""
    if kind == "EMAIL":
        return bool(_ROLE_MAILBOX.match(text, start))
    if kind not in _PUBLIC_KINDS:
        return False
    ends = [m.end() for m in _CLAUSE_END.finditer(text, 0, start)]
    clause = text[ends[-1] if ends else 0:start]
    return bool(_ORG.search(clause[-40:])) and not _PERSON.search(clause)


def private_pii(text: str) -> list:
    """`find_pii`'s spans of `text` (loose forms included) less organisations' published contacts."""
    return [s for s in find_pii(text, loose=True) if not public_contact(text, s.start, s.kind)]


class PiiMap:
    """A reversible redaction: each distinct piece of personal data gets one placeholder
    (``<PHONE_1>``, ``<EMAIL_2>``, ...) across every text redacted with this map."""

    def __init__(self, kinds: Sequence[str] = PII_KINDS):
        self.kinds = tuple(kinds)
        self.placeholder: dict[str, str] = {}  # original -> placeholder
        self.original: dict[str, str] = {}  # placeholder -> original
        self.kind: dict[str, str] = {}  # placeholder -> kind
        self._counts: dict[str, int] = {}

    def redact(self, text: str, used: set[str] | None = None) -> str:
        """`text` with its personal data (`find_pii`'s spans, loose forms included) replaced by placeholders;
        the placeholders written are added to `used`, if given. Placeholder-shaped text already in `text`
        (``<PHONE_1>`` typed by someone) is neutralised first (``‹PHONE_1›``), so that it can never be
        mistaken for a placeholder of this map and restored to someone else's data."""
        text = neutralise(text)
        out, last = [], 0
        for span in find_pii(text, self.kinds, loose=True):
            if public_contact(text, span.start, span.kind):
                continue
            p = self._placeholder(span.original, span.kind)
            out += [text[last:span.start], p]
            if used is not None:
                used.add(p)
            last = span.end
        return "".join(out) + text[last:]

    def _placeholder(self, original: str, kind: str) -> str:
        if original not in self.placeholder:
            self._counts[kind] = self._counts.get(kind, 0) + 1
            p = f"<{kind}_{self._counts[kind]}>"
            self.placeholder[original], self.original[p], self.kind[p] = p, original, kind
        return self.placeholder[original]

    def restore(self, text: str, only: set[str] | None = None) -> str:
        """`text` with placeholders mapped back to their originals (only those in `only`, if given)."""
        return PLACEHOLDER.sub(lambda m: self.original.get(m.group(), m.group())
                               if only is None or m.group() in only else m.group(), text)


def _redacted(messages: Messages, documents: Sequence[str]) -> tuple[PiiMap, list[dict[str, Any]], list[str], set[str]]:
    """One map over the conversation in a fixed order (system turns, documents, then the rest), the
    redacted messages and documents, and the placeholders that stand for data found in the user's own
    turns. Only those count as the user's: placeholder-shaped text the user typed (``<PHONE_1>``) is
    neutralised by `PiiMap.redact`, so a user cannot claim a third party's placeholder by typing it."""
    m, mine = PiiMap(), set()
    msgs = [dict(x) for x in messages]
    for x in msgs:
        if x.get("role") in ("system", "developer"):
            x["content"] = m.redact(text_of(x.get("content")))
    docs = [m.redact(d) for d in documents]
    for x in msgs:
        if x.get("role") not in ("system", "developer"):
            x["content"] = m.redact(text_of(x.get("content")), mine if x.get("role") == "user" else None)
    return m, msgs, docs, mine


class PiiGuard:
    """Input: refuses requests for personal data where the context holds some (or a privacy rule);
    otherwise redacts personal data everywhere. Output: restores the user's own placeholders
    (`restore="user"`; "all" for an operator's view, "none" to keep every placeholder) and redacts
    third-party values that leaked."""

    name = "pii"

    def __init__(self, restore: str = "user"):
        if restore not in ("user", "all", "none"):
            raise ValueError(f"restore={restore!r}: use 'user', 'all' or 'none'")
        self.restore = restore

    def check_input(self, messages: Messages, documents: Sequence[str] = ()) -> Decision:
        context = "\n".join([role_text(messages, "system", "developer", "tool"), *documents])
        user = last_user(messages)
        asked = _REQUEST.search(_NONE.sub(" ", _MINE.sub(" ", _ORG_LINE.sub(" ", _YOURS.sub(" ", user)))))
        if asked and (private_pii(context) or PRIVACY.search(context)):
            return refuse("pii", f"a request for personal data ({asked.group()!r})", self.name)
        m, msgs, docs, _ = _redacted(messages, documents)
        if not m.original:
            return Decision()
        return Decision("rewrite", messages=msgs, documents=tuple(docs), guard=self.name, category="pii",
                        reason=f"{len(m.original)} piece(s) of personal data replaced by placeholders")

    def check_output(self, messages: Messages, reply: str, documents: Sequence[str] = ()) -> Decision:
        m, _, _, mine = _redacted(messages, documents)
        if not m.original:
            return Decision()
        text = m.restore(reply, None if self.restore == "all" else mine if self.restore == "user" else set())
        theirs = [p for p in m.original if p not in mine]
        spans = []
        for p in theirs:
            for form in (m.original[p], re.sub(r"\D", "", m.original[p])[::-1]):
                rx = loose(form)
                if rx:
                    spans += [(mt.start(), mt.end(), p) for mt in rx.finditer(text)]
        last = len(text) + 1
        for a, b, p in sorted(spans, reverse=True):
            if b <= last:  # overlapping matches: the later one was replaced already
                text, last = text[:a] + f"<{m.kind[p]}>" + text[b:], a
        if text == reply:
            return Decision()
        return Decision("rewrite", text=text, guard=self.name, category="pii",
                        reason=f"placeholders restored for the user; {len(spans)} third-party value(s) redacted")
