"""Cleaning steps, each switchable in `CleanConfig` and each counting what it did.

Order: Unicode NFC -> HTML stripping -> PII scrubbing -> whitespace -> boilerplate -> quality
filter. All steps are written here with the standard library (regexes, `html.parser`,
`unicodedata`): they are a few lines each and no maintained library does this mix without
pulling in a large dependency. Code must survive cleaning (the embedded corpus is Python), so
indentation is never touched and HTML is only stripped from documents that look like HTML.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Callable, NamedTuple, Sequence

from llmkit.data.config import CleanConfig

STEPS = ("unicode_nfc", "strip_html", "pii", "whitespace", "boilerplate", "quality")


@dataclass
class StepStats:
    """What one step did to one source."""

    docs_changed: int = 0
    chars_changed: int = 0  # characters rewritten or deleted inside documents that were kept
    docs_removed: int = 0
    chars_removed: int = 0  # characters of the documents removed
    docs_after: int = 0

    def add(self, other: StepStats) -> None:
        for k in ("docs_changed", "chars_changed", "docs_removed", "chars_removed", "docs_after"):
            setattr(self, k, getattr(self, k) + getattr(other, k))


# ---------------------------------------------------------------------------- unicode
def unicode_nfc(text: str) -> tuple[str, int]:
    """NFC-normalise; counts characters composed away (at least 1 per changed document)."""
    if unicodedata.is_normalized("NFC", text):
        return text, 0
    new = unicodedata.normalize("NFC", text)
    return new, max(1, len(text) - len(new))


# ---------------------------------------------------------------------------- HTML
_HTML_TAGS = ("html head body title meta link script style div span p a b i u em strong br hr h1 h2 h3 h4 h5 "
              "h6 ul ol li table tr td th thead tbody img pre code blockquote nav header footer section "
              "article form input button label select option iframe noscript small sup sub dl dt dd figure "
              "figcaption main aside font center").split()
_TAG_RE = re.compile(r"<!--[^\n]{0,300}?-->|<!doctype[^<>\n]{0,100}>|</?(?:%s)(?:\s[^<>]{0,300})?/?>"
                     % "|".join(_HTML_TAGS), re.I)
_BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table", "section",
          "article", "header", "footer", "pre", "blockquote", "title", "dt", "dd", "hr", "nav", "main"}
_SKIP = {"script", "style", "noscript", "template"}


def looks_like_html(text: str) -> bool:
    """A document is HTML when it starts with an HTML tag (or doctype) or when known HTML tags
    make up at least 10% of it, so code that builds some HTML in strings is left alone."""
    if _TAG_RE.match(text.lstrip()):
        return True
    return sum(len(m.group()) for m in _TAG_RE.finditer(text)) >= 0.1 * len(text) > 0


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in _SKIP:
            self.skip += 1
        self.pre += tag == "pre"
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))


def strip_html(text: str) -> tuple[str, int]:
    """Text content of an HTML document (scripts and styles dropped, entities decoded, one line
    per block element); other documents are returned unchanged."""
    if not looks_like_html(text):
        return text, 0
    parser = _TextExtractor()
    try:
        parser.feed(text)
        parser.close()
    except (AssertionError, ValueError):  # markup too broken for html.parser: leave it
        return text, 0
    lines = (line.strip() for line in "".join(parser.parts).split("\n"))
    new = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return new, max(1, len(text) - len(new))


# ---------------------------------------------------------------------------- PII
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                   r"(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# Phone numbers: optional +country code, then an area code (bracketed, or 2-4 digits and a
# separator), then two groups of 3-4 digits. Bare digit runs are left alone (ids, numbers in code).
_PHONE = re.compile(r"(?<![\w+-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?![\w-])")


def _is_ipv6(s: str) -> bool:
    # At least three non-empty groups, so Python slices like x[::2] or x[1::2] are not addresses.
    if sum(1 for g in s.split(":") if g) < 3:
        return False
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


# The request log masks more kinds than corpus cleaning does: card numbers, bare digit runs and key-like secrets
# would also match digit runs and identifiers in code (`api_version_number`), which the embedded
# corpus is full of.
_CARD = re.compile(r"\b(?:\d[ -]?){13,19}\b")
_SSN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
_SECRET = re.compile(r"\b(?:sk|pk|api|key)[-_][A-Za-z0-9_-]{8,}\b")
# Bare runs of 9-12 digits: phone numbers written without separators, account numbers.
_NUMBER = re.compile(r"\b\d{9,12}\b")
PII_KINDS = ("EMAIL", "SECRET", "CARD", "SSN", "IP", "PHONE", "NUMBER")
CORPUS_PII_KINDS = ("EMAIL", "IP", "PHONE")

# Python's re cannot skip ahead to a pattern that starts with a lookbehind, so such a pattern has a
# cheap candidate pattern (a literal or a digit first, ~10x faster) and the full pattern only runs
# in a window around each candidate: (kind, candidate or None, full pattern, characters to look
# back, check). Earlier scans win where two kinds claim the same characters.
_SCANS = (
    ("EMAIL", re.compile(r"@[A-Za-z0-9-]+\."), _EMAIL, 64, None),
    ("SECRET", None, _SECRET, 0, None),
    ("CARD", None, _CARD, 0, None),
    ("SSN", None, _SSN, 0, None),
    ("IP", re.compile(r":[0-9A-Fa-f]{0,4}:"), _IPV6, 40, _is_ipv6),
    ("IP", re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d"), _IPV4, 0, None),
    ("PHONE", re.compile(r"\d{3,4}[ .-]\d{3,4}(?![\w-])"), _PHONE, 24, None),
    ("NUMBER", None, _NUMBER, 0, None),
)


# Looser forms for text that is not code (the request log): any letters in an address, and phone
# numbers whose groups run together ("+44 7911 123456", "(555)1234567", "555-1234567").
_LOOSE_SCANS = (
    ("EMAIL", None, re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), 0, None),
    ("PHONE", None, re.compile(r"(?<![\w(])(?:\+?\d{1,3}[ .-]?)?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}(?!\w)"), 0, None),
)


class PIISpan(NamedTuple):
    """Personal data found in a text: where it is in the original text, its kind (the
    placeholder is ``<KIND>``) and what it said, so a later step can map a placeholder back."""

    start: int
    end: int
    kind: str
    original: str


def _spans(text: str, candidate: re.Pattern | None, full: re.Pattern, lookback: int,
           check: Callable[[str], bool] | None) -> list[tuple[int, int]]:
    if candidate is None:
        return [m.span() for m in full.finditer(text) if check is None or check(m.group())]
    spans: list[tuple[int, int]] = []
    done = 0  # end of the last span found: matches never overlap
    for c in candidate.finditer(text):
        if c.end() <= done:
            continue
        # finditer(pos, endpos): lookbehind still sees text before pos; one extra character at the
        # end keeps the pattern's lookahead honest.
        for m in full.finditer(text, max(done, c.start() - lookback), min(len(text), c.end() + 40)):
            if m.end() <= c.start() or m.start() >= c.end():
                continue  # not this candidate's match
            if check is None or check(m.group()):
                spans.append(m.span())
                done = m.end()
                break
    return spans


def find_pii(text: str, kinds: Sequence[str] = PII_KINDS, loose: bool = False) -> list[PIISpan]:
    """The personal data of `kinds` in `text`, in order and not overlapping; `loose` also finds
    the looser forms of e-mail addresses and phone numbers that prose (not code) may hold."""
    unknown = set(kinds) - set(PII_KINDS)
    if unknown:
        raise ValueError(f"unknown PII kinds {sorted(unknown)}: choose from {PII_KINDS}")
    found: list[PIISpan] = []
    starts: list[int] = []  # of `found`, kept sorted for the overlap test
    for kind, candidate, full, lookback, check in _SCANS + (_LOOSE_SCANS if loose else ()):
        if kind not in kinds:
            continue
        for a, b in _spans(text, candidate, full, lookback, check):
            i = bisect.bisect_left(starts, a)
            if (i > 0 and found[i - 1].end > a) or (i < len(found) and found[i].start < b):
                continue  # an earlier kind holds some of these characters
            starts.insert(i, a)
            found.insert(i, PIISpan(a, b, kind, text[a:b]))
    return found


def redact_pii(text: str, kinds: Sequence[str] = PII_KINDS, loose: bool = False) -> tuple[str, list[PIISpan]]:
    """`text` with each piece of personal data of `kinds` replaced by ``<KIND>`` (``<EMAIL>``,
    ``<SECRET>``, ``<CARD>``, ``<SSN>``, ``<IP>``, ``<PHONE>``, ``<NUMBER>``), and the spans replaced, in
    positions of the original text (`loose`: see `find_pii`)."""
    spans = find_pii(text, kinds, loose)
    parts, last = [], 0
    for s in spans:
        parts += [text[last:s.start], f"<{s.kind}>"]
        last = s.end
    parts.append(text[last:])
    return "".join(parts), spans


def scrub_pii(text: str) -> tuple[str, int]:
    """The cleaning step: e-mail addresses, IPv6 and IPv4 addresses and phone numbers replaced
    with ``<EMAIL>``, ``<IP>`` and ``<PHONE>``; counts the characters replaced."""
    new, spans = redact_pii(text, CORPUS_PII_KINDS)
    return new, sum(s.end - s.start for s in spans)


# ---------------------------------------------------------------------------- whitespace
_BLANK_RUNS = re.compile(r"\n{4,}")
_ODD_SPACES = re.compile("[\u00a0\u2000-\u200a\u202f\u205f\u3000]")


def normalize_whitespace(text: str) -> tuple[str, int]:
    """Unix line endings, odd spaces -> space, no zero-width spaces, no trailing spaces, at most
    two blank lines in a row, no leading blank lines, no trailing whitespace but one final newline
    where there was one. Indentation is kept."""
    new = text.replace("\r\n", "\n").replace("\r", "\n")
    if not new.isascii():
        new = _ODD_SPACES.sub(" ", new.replace("\u200b", "").replace("\ufeff", ""))
    new = "\n".join(line.rstrip(" \t") for line in new.split("\n"))  # 4x faster than a regex
    if "\n\n\n\n" in new:
        new = _BLANK_RUNS.sub("\n\n\n", new)
    new = new.lstrip("\n").rstrip()
    if new and text.endswith(("\n", "\r")):
        new += "\n"  # one final newline is kept (a file's last line ends with one)
    if new == text:
        return text, 0
    return new, max(1, len(text) - len(new))


# ---------------------------------------------------------------------------- boilerplate
_LICENSE_WORDS = re.compile(r"licen[cs]e|copyright|all rights reserved", re.I)
_COMMENT_LINE = re.compile(r"\s*(#|//)")
_KEEP_FIRST = re.compile(r"#!|#.*coding[:=]")  # shebang and encoding cookie stay
MIN_BOILERPLATE_LINE = 10  # shorter lines ("else:", "}") repeat everywhere and are not boilerplate


def strip_license_header(text: str) -> tuple[str, int]:
    """Remove a leading comment block (``#``, ``//`` or ``/* */``) that mentions a licence or
    copyright."""
    lines = text.split("\n")
    start = 0
    while start < len(lines) and start < 2 and _KEEP_FIRST.match(lines[start]):
        start += 1
    end = start
    if end < len(lines) and lines[end].lstrip().startswith("/*"):
        while end < len(lines) and "*/" not in lines[end]:
            end += 1
        end += 1
    else:
        while end < len(lines) and _COMMENT_LINE.match(lines[end]):
            end += 1
    block = "\n".join(lines[start:end])
    if end == start or not _LICENSE_WORDS.search(block):
        return text, 0
    new = "\n".join(lines[:start] + lines[end:]).lstrip("\n")
    return new, len(text) - len(new)


def boilerplate_lines(texts: list[str], doc_fraction: float, min_docs: int) -> set[str]:
    """Lines (stripped, at least MIN_BOILERPLATE_LINE characters) that occur in at least
    `min_docs` documents and in more than `doc_fraction` of them: headers, footers, banners."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update({s for s in (line.strip() for line in text.split("\n")) if len(s) >= MIN_BOILERPLATE_LINE})
    need = max(min_docs, int(doc_fraction * len(texts)) + 1)
    return {line for line, n in counts.items() if n >= need}


def remove_lines(text: str, lines: set[str]) -> tuple[str, int]:
    if not lines:
        return text, 0
    kept = [line for line in text.split("\n") if line.strip() not in lines]
    new = "\n".join(kept)
    return new, len(text) - len(new)


# ---------------------------------------------------------------------------- quality
_ASCII_SPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"  # what str.isspace() calls space in ASCII
_ASCII_ALNUM = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SPACE = re.compile(r"\s")
_SYMBOL = re.compile(r"[^\w\s]|_")


def symbol_ratio(text: str) -> float:
    """Fraction of the non-whitespace characters that are neither letters nor digits."""
    if text.isascii():  # bytes.translate counts in C, ~10x faster than a regex
        b = text.encode("ascii")
        spaces = len(b) - len(b.translate(None, _ASCII_SPACE))
        alnum = len(b) - len(b.translate(None, _ASCII_ALNUM))
        visible = len(b) - spaces
        return (visible - alnum) / visible if visible else 0.0
    visible = len(text) - len(_SPACE.findall(text))
    return len(_SYMBOL.findall(text)) / visible if visible else 0.0


def repetition_ratio(text: str, n: int = 3) -> float:
    """max(fraction of line characters in lines that repeat an earlier line, fraction of the
    characters covered by the most frequent word n-gram) — both in [0, 1]."""
    lines = [s for s in (line.strip() for line in text.split("\n")) if s]
    line_chars = sum(len(s) for s in lines)
    dup_lines = 0.0
    if line_chars:
        seen: set[str] = set()
        dup = 0
        for s in lines:
            if s in seen:
                dup += len(s)
            seen.add(s)
        dup_lines = dup / line_chars
    words = text.split()
    top_ngram = 0.0
    if len(words) >= 4 * n:
        grams = Counter(zip(*(words[i:] for i in range(n))))
        gram, count = grams.most_common(1)[0]
        if count > 1:
            top_ngram = min(1.0, count * sum(len(w) for w in gram) / sum(len(w) for w in words))
    return max(dup_lines, top_ngram)


def quality_problem(text: str, cfg: CleanConfig) -> str | None:
    """Why `text` fails the quality filter, or None if it passes."""
    if len(text.strip()) < cfg.min_chars:
        return "too short"
    if symbol_ratio(text) > cfg.max_symbol_ratio:
        return "too many symbols"
    if repetition_ratio(text) > cfg.max_repetition_ratio:
        return "too repetitive"
    return None


# ---------------------------------------------------------------------------- driver
_PER_DOC: dict[str, Callable[[str], tuple[str, int]]] = {
    "unicode_nfc": unicode_nfc, "strip_html": strip_html, "pii": scrub_pii, "whitespace": normalize_whitespace,
}


def clean_texts(texts: list[str], cfg: CleanConfig) -> tuple[list[str], dict[str, StepStats]]:
    """Run the enabled steps over one source's documents; returns the kept documents and, per
    step, what it changed and removed. Documents left empty by a step are removed by it."""
    stats: dict[str, StepStats] = {}
    for step in STEPS:
        if not getattr(cfg, step):
            continue
        st = stats[step] = StepStats()
        if step == "boilerplate":
            common = boilerplate_lines(texts, cfg.boilerplate_doc_fraction, cfg.boilerplate_min_docs)

            def fn(t: str) -> tuple[str, int]:
                t, a = strip_license_header(t)
                t, b = remove_lines(t, common)
                return t, a + b
        elif step == "quality":
            def fn(t: str) -> tuple[str, int]:
                return ("" if quality_problem(t, cfg) else t), 0
        else:
            fn = _PER_DOC[step]
        kept = []
        for text in texts:
            new, changed = fn(text)
            if not new.strip():
                st.docs_removed += 1
                st.chars_removed += len(text)
                continue
            if new != text:
                st.docs_changed += 1
                st.chars_changed += changed
            kept.append(new)
        texts = kept
        st.docs_after = len(texts)
    return texts, stats
