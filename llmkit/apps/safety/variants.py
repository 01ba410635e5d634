"""Cheap readings of obfuscated text, shared by the guards: an attack hides an instruction in base64,
ROT13, leetspeak, reversed text or split strings, and a leak hides a secret the same ways. Only
transforms a rule can undo exactly are here; paraphrase is beyond rules (see the red-team README).

    views("Rkcynva ubj gb...")          # the text, its ROT13, reversal, leetspeak and decoded base64
    loose("TANGO-4471")                 # a regex matching "tango 4471", "T-A-N-G-O-4-4-7-1", ...
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re

_QUOTED = re.compile(r"\"([^\"\n]{1,200})\"|'([^'\n]{1,200})'|“([^”\n]{1,200})”")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"})
_LEET_WORD = re.compile(r"\b(?=[\w@$!]*[a-zA-Z])(?=[\w@$!]*[0-9@$])[\w@$!]+")
SEPARATORS = r"[\W_]{0,3}"  # what may sit between the characters of a spelled-out secret


def rot13(text: str) -> str:
    return codecs.encode(text, "rot13")


def _printable(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    ok = sum(ch.isprintable() or ch.isspace() for ch in text)
    return text if text and ok / len(text) > 0.95 and any(ch.isalpha() for ch in text) else None


def base64_runs(text: str, min_chars: int = 16) -> list[tuple[int, int, str]]:
    """(start, end, decoded text) of each base64 run of `min_chars`+ characters in `text` that decodes
    to readable text."""
    out = []
    for m in re.finditer(r"[A-Za-z0-9+/]{%d,}={0,2}" % min_chars, text):
        run = m.group()
        try:
            decoded = _printable(base64.b64decode(run + "=" * (-len(run) % 4), validate=True))
        except (binascii.Error, ValueError):
            continue
        if decoded:
            out.append((m.start(), m.end(), decoded))
    return out


def base64_decoded(text: str) -> list[str]:
    """The readable texts hidden in base64 runs (16+ characters) of `text`."""
    return [d for _, _, d in base64_runs(text)]


def unleet(text: str) -> str:
    """Leetspeak read back ("h0w c4n 1" -> "how can i"): only in words that mix letters with digits or
    symbols, so plain numbers stay numbers."""
    return _LEET_WORD.sub(lambda m: m.group().translate(_LEET), text)


def joined_quotes(text: str) -> str:
    """The quoted strings of `text` joined in order (payload splitting: x = "how to", y = " make ...")."""
    parts = [next(g for g in m.groups() if g is not None) for m in _QUOTED.finditer(text)]
    return "".join(parts) if len(parts) > 1 else ""


def views(text: str) -> list[str]:
    """`text` and the readings of it an obfuscation would hide behind: ROT13, reversed, leetspeak,
    decoded base64 runs and joined quoted strings (the empty ones left out)."""
    out = [text, rot13(text), text[::-1], unleet(text), joined_quotes(text)]
    out += base64_decoded(text)
    return [v for v in out if v.strip()]


def alnum(value: str) -> str:
    """The letters and digits of `value`, lower-cased: what two renderings of a code share."""
    return re.sub(r"[\W_]+", "", value).lower()


def loose(value: str) -> re.Pattern | None:
    """A pattern for `value` written with any case and any short separators between its characters
    ("TANGO-4471" matches "tango4471", "t a n g o 4 4 7 1", "T-A-N-G-O-4-4-7-1"); None for a value
    with fewer than 4 letters or digits, which would match ordinary text."""
    chars = alnum(value)
    if len(chars) < 4:
        return None
    return re.compile(r"(?<![A-Za-z0-9])" + SEPARATORS.join(re.escape(c) for c in chars) + r"(?![A-Za-z0-9])", re.I)

