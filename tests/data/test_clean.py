"""Each cleaning step on hand-made documents, and the counts it reports."""

from __future__ import annotations

import re
import unicodedata

import pytest

from llmkit.data import CleanConfig
from llmkit.data import clean as C
from tests.data.helpers import NO_CLEAN, make_docs


def only(step: str, **kw) -> CleanConfig:
    """A CleanConfig with just `step` on."""
    fields = {s: s == step for s in C.STEPS}
    fields.update(kw)
    return CleanConfig(**fields)


def test_pii_placeholders():
    text = "mail me at a.b@c.org or +1 (555) 123-4567 from 10.0.0.1"
    out, changed = C.scrub_pii(text)
    assert out == "mail me at <EMAIL> or <PHONE> from <IP>"
    assert changed == len("a.b@c.org") + len("+1 (555) 123-4567") + len("10.0.0.1")


def test_pii_more_forms_and_code_left_alone():
    out, _ = C.scrub_pii("joe.bloggs+tag@mail.example.com, 555-123-4567, +44 20 7946 0958, 2001:db8::8a2e:370:7334, "
                         "fe80::1:2:3 and 192.168.1.254")
    assert out == "<EMAIL>, <PHONE>, <PHONE>, <IP>, <IP> and <IP>"
    code = "x[::2] + y[1:2:3] at 12:30:45; v = 3.11; n = 1234567890; id 00010203-0405-0607-0809-0a0b0c0d0e0f; 256.1.1.1"
    assert C.scrub_pii(code) == (code, 0)


def test_redact_pii_returns_the_spans_it_replaced():
    text = "mail a.b@c.org, card 4111 1111 1111 1111, ssn 123-45-6789, call +1 415 555 0100, key sk-abcdefgh1234"
    out, spans = C.redact_pii(text)
    assert out == "mail <EMAIL>, card <CARD>, ssn <SSN>, call <PHONE>, key <SECRET>"
    assert [(s.kind, s.original) for s in spans] == [
        ("EMAIL", "a.b@c.org"), ("CARD", "4111 1111 1111 1111"), ("SSN", "123-45-6789"),
        ("PHONE", "+1 415 555 0100"), ("SECRET", "sk-abcdefgh1234")]
    assert all(text[s.start:s.end] == s.original for s in spans)
    # the spans map each placeholder back: undoing them from the end gives the original text
    back = out
    for s, m in reversed(list(zip(spans, re.finditer(r"<[A-Z]+>", out)))):
        back = back[:m.start()] + s.original + back[m.end():]
    assert back == text


def test_cleaning_scrubs_only_the_corpus_kinds():
    """Cards and key-like secrets look like digit runs and identifiers in code: the cleaning step
    leaves them, the request log (all kinds) masks them."""
    text = "n = 4111111111111111; api_version_number = 3; a.b@c.org"
    assert C.scrub_pii(text) == ("n = 4111111111111111; api_version_number = 3; <EMAIL>", len("a.b@c.org"))
    assert C.redact_pii(text)[0] == "n = <CARD>; <SECRET> = 3; <EMAIL>"
    assert C.redact_pii(text, ["EMAIL"])[0] == "n = 4111111111111111; api_version_number = 3; <EMAIL>"
    with pytest.raises(ValueError, match="unknown PII kinds"):
        C.find_pii(text, ["ADDRESS"])


def test_strip_html():
    html = ("<!DOCTYPE html><html><head><title>T</title><style>p {color: red}</style></head><body>"
            "<p>Hello &amp; <b>world</b></p><div>one\n   two</div><script>var a = 1;</script></body></html>")
    out, changed = C.strip_html(html)
    assert out == "T\n\nHello & world\n\none two"
    assert changed > 0
    code = 'def f(a, b):\n    return a < b and b > 0  # not <b>bold</b>, see html.escape\n' * 3
    assert C.strip_html(code) == (code, 0)


def test_nfc():
    decomposed = "cafe\u0301 nai\u0308ve"
    out, changed = C.unicode_nfc(decomposed)
    assert out == "café naïve" and unicodedata.is_normalized("NFC", out)
    assert changed == 2
    assert C.unicode_nfc("café") == ("café", 0)


def test_whitespace_keeps_indentation():
    text = "\r\n\r\ndef f():\r\n    return 1   \r\n\r\n\r\n\r\n\r\nx\u00a0=\u200b 2\t\n"
    out, _ = C.normalize_whitespace(text)
    assert out == "def f():\n    return 1\n\n\nx = 2\n"  # at most two blank lines


def test_boilerplate_license_header_and_repeated_lines():
    header = "#!/usr/bin/env python\n# Copyright (c) 2020 Example Corp.\n# Licensed under the MIT License.\n"
    out, changed = C.strip_license_header(header + "import os\n")
    assert out == "#!/usr/bin/env python\nimport os\n" and changed > 0
    plain = "# A helpful comment about the code\nimport os\n"
    assert C.strip_license_header(plain) == (plain, 0)

    footer = "Subscribe to our newsletter for more news!"
    docs = [d + footer + "\n" for d in make_docs(10)]
    kept, stats = C.clean_texts(docs, only("boilerplate"))
    assert all(footer not in d for d in kept)
    assert stats["boilerplate"].docs_changed == 10
    assert stats["boilerplate"].chars_changed == 10 * (len(footer) + 1)


def test_quality_filter_drops_symbols_and_repetition():
    good = make_docs(3)
    symbols = "#$%^&*()!@#$%^&*()_+{}|:<>?~" * 4
    repeated = "buy cheap watches now\n" * 40
    short = "too short"
    kept, stats = C.clean_texts(good + [symbols, repeated, short], only("quality"))
    assert kept == good
    st = stats["quality"]
    assert st.docs_removed == 3 and st.docs_changed == 0 and st.docs_after == 3
    assert st.chars_removed == len(symbols) + len(repeated) + len(short)
    assert C.quality_problem(symbols, CleanConfig()) == "too many symbols"
    assert C.quality_problem(repeated, CleanConfig()) == "too repetitive"
    assert C.repetition_ratio("spam " * 100) > 0.9  # one long line of a repeated word


def test_stats_per_step_and_all_off():
    docs = ["<p>Call 555-123-4567 for the offer.</p><p>Our shop opens at nine every day.</p>",
            "plain text about the weather in spring, long enough to keep\n"]
    kept, stats = C.clean_texts(docs, CleanConfig())
    assert list(stats) == list(C.STEPS)
    assert stats["strip_html"].docs_changed == 1 and stats["pii"].docs_changed == 1
    assert "<PHONE>" in kept[0] and "<p>" not in kept[0]
    kept, stats = C.clean_texts(docs, NO_CLEAN)
    assert kept == docs and stats == {}
