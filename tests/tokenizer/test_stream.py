"""StreamDecoder: deltas add up to the full decode and never split a character."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmkit.tokenizer import StreamDecoder, Tokenizer
from tests.tokenizer.builders import corpus

TEXTS = [
    "Hello world, this is a stream.",
    "日本語のテキストです。中文，你好世界！한국어 문장",
    "emoji 😀🎉👍🏽 👨‍👩‍👧 🇫🇷 ❤️ done",
    "combining e\u0301 a\u0300 n\u0303 Z\u0351\u036b\u0343algo\u0489 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🫠",
    "  spaces   and\n\nnewlines\t tabs ▁ literal ▁ marks",
    "def f(x):\n    return '😀' * x  # 日本\n",
]


def _stream(tok, ids, skip):
    dec = tok.stream_decoder(skip_special_tokens=skip)
    deltas = [dec.push(i) for i in ids]
    return deltas, dec.flush()


def _check(tok, ids, skip=True):
    deltas, tail = _stream(tok, ids, skip)
    assert "".join(deltas) + tail == tok.decode(ids, skip_special_tokens=skip)
    for d in deltas:
        assert "\ufffd" not in d
        assert not any(0xD800 <= ord(c) <= 0xDFFF for c in d)
    return deltas


@pytest.fixture(scope="module")
def tiny_bpe():
    """Byte-level BPE so small that CJK and emoji are split across several tokens."""
    return Tokenizer.train(corpus(), vocab_size=300)


def test_byte_level_tokens_split_characters_and_stream_is_exact(tiny_bpe):
    partial = 0
    for text in TEXTS:
        ids = tiny_bpe.encode(text)
        partial += sum("\ufffd" in tiny_bpe.decode([i]) for i in ids)
        for skip in (True, False):
            assert "".join(_check(tiny_bpe, ids, skip)) == text
    assert partial > 10  # the test exercises held-back partial characters


@pytest.mark.parametrize("style", ["llama2", "mistral_metaspace", "llama3", "gpt2", "wordpiece"])
def test_stream_matches_decode(style, tok_dirs):
    tok = Tokenizer.from_dir(tok_dirs[style])
    for text in TEXTS:
        ids = tok.encode(text)
        for skip in (True, False):
            _check(tok, ids, skip)
    if style == "llama2":  # byte fallback really happens for emoji here
        assert any(tok.id_to_token(i).startswith("<0x") for i in tok.encode(TEXTS[2]))


def test_stream_across_special_tokens(tok_dirs):
    """SentencePiece strips the first space of a window; skipped specials must not make it eat text."""
    tok = Tokenizer.from_dir(tok_dirs["llama2"])
    s, e = tok.bos_token_id, tok.eos_token_id
    space = tok.encode(" ", add_special_tokens=False)
    ids = tok.encode("Hello") + [e, s] + tok.encode(" world 😀", add_special_tokens=False) + space + space \
        + [e, e] + tok.encode(" again", add_special_tokens=False) + [e]
    for skip in (True, False):
        _check(tok, ids, skip)


def test_truncated_character_comes_out_in_flush(tiny_bpe):
    ids = tiny_bpe.encode("ok 😀")
    cut = ids[:-1]  # the emoji's last byte(s) never arrive
    deltas, tail = _stream(tiny_bpe, cut, True)
    assert "".join(deltas) == "ok " and tail == tiny_bpe.decode(cut)[3:] and tail.endswith("\ufffd")


def test_decode_windows_stay_short(tiny_bpe):
    calls = []

    def decode(ids):
        calls.append(len(ids))
        return tiny_bpe.decode(ids)

    dec = StreamDecoder(decode)
    ids = tiny_bpe.encode(" ".join(TEXTS) * 10)
    assert len(ids) > 500
    text = "".join(dec.push(i) for i in ids) + dec.flush()
    assert text == tiny_bpe.decode(ids)
    assert max(calls) <= 12  # a short window, not the whole sequence


@settings(max_examples=150, deadline=None, database=None)
@given(st.text(max_size=40))
def test_stream_property_byte_level(tiny_bpe, text):
    _check(tiny_bpe, tiny_bpe.encode(text, add_special_tokens=False))


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.integers(min_value=0, max_value=399), max_size=30))
def test_stream_property_arbitrary_ids_llama2(tok_dirs, ids):
    tok = Tokenizer.from_dir(tok_dirs["llama2"])
    for skip in (True, False):
        deltas, tail = _stream(tok, ids, skip)
        assert "".join(deltas) + tail == tok.decode(ids, skip_special_tokens=skip)
