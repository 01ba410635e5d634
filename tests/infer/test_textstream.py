"""TextStream (stop strings over streamed text deltas), its hold-back helper, and fit_prompts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmkit.infer.generate import TextStream, _longest_stop_prefix_suffix, fit_prompts
from llmkit.infer.sampling import GenerationConfig
from llmkit.models.transformer import ContextLengthError


class FakeDecoder:
    """Stands in for the tokenizer's stream decoder: token i decodes to pieces[i]."""

    def __init__(self, pieces, tail=""):
        self.pieces = list(pieces)
        self.tail = tail
        self.pushed = []

    def push(self, token_id):
        self.pushed.append(token_id)
        return self.pieces[token_id]

    def flush(self):
        tail, self.tail = self.tail, ""
        return tail


def run_stream(pieces, stop=(), tail=""):
    """Push every piece, then flush; return (stream, deltas of the pushes, delta of the flush)."""
    ts = TextStream(FakeDecoder(pieces, tail), stop)
    deltas = [ts.push(i) for i in range(len(pieces))]
    return ts, deltas, ts.flush()


def expected_text(full: str, stop: str) -> str:
    i = full.find(stop)
    return full if i < 0 else full[:i]


# ----------------------------------------------------------------------------- TextStream

def test_no_stop_strings_emits_every_piece_immediately():
    pieces = ["Hel", "lo", ", ", "", "wor", "ld!"]
    ts, deltas, last = run_stream(pieces)
    assert deltas == pieces  # nothing held back without stop strings
    assert last == ""
    assert ts.text == "Hello, world!"
    assert not ts.stopped


def test_flush_returns_decoder_tail():
    ts, deltas, last = run_stream(["ab", "c"], tail="d")
    assert "".join(deltas) + last == "abcd"
    assert ts.text == "abcd"


def test_stop_inside_one_piece_cuts_before_it():
    pieces = ["Hello", " wor", "ld<|end|>junk", " more", " text"]
    ts = TextStream(FakeDecoder(pieces), ["<|end|>"])
    out = [ts.push(0), ts.push(1), ts.push(2)]
    assert "".join(out) == "Hello world"
    assert ts.stopped
    assert ts.push(3) == ""
    assert ts.push(4) == ""
    assert ts.flush() == ""
    assert ts.text == "Hello world"


def test_stop_at_very_start():
    ts, deltas, last = run_stream(["STOPx", "y"], ["STOP"])
    assert deltas == ["", ""] and last == ""
    assert ts.stopped and ts.text == ""


def test_stop_split_across_pieces_is_never_emitted():
    pieces = ["The answer", " is 42", "<|e", "nd", "|>", " trailing"]
    ts = TextStream(FakeDecoder(pieces), ["<|end|>"])
    deltas = []
    for i in range(len(pieces)):
        d = ts.push(i)
        deltas.append(d)
        # no delta ever carries any character of the stop string
        assert not any(ch in d for ch in "<|>")
    deltas.append(ts.flush())
    assert "".join(deltas) == "The answer is 42"
    assert ts.text == "The answer is 42"
    assert ts.stopped
    assert deltas[-2:] == ["", ""]


def test_stop_split_with_text_before_in_same_piece():
    pieces = ["abc<", "|e", "nd|>x"]
    ts = TextStream(FakeDecoder(pieces), ["<|end|>"])
    assert ts.push(0) == "abc"  # "<" held back
    assert ts.push(1) == ""
    assert ts.push(2) == ""
    assert ts.stopped and ts.text == "abc"


def test_false_prefix_is_held_then_released():
    ts = TextStream(FakeDecoder(["ST", "AR"]), ["STOP"])
    assert ts.push(0) == ""  # might be the start of STOP
    second = ts.push(1)
    last = ts.flush()
    assert second + last == "STAR"
    assert ts.text == "STAR"
    assert not ts.stopped


def test_false_prefix_at_end_released_by_flush():
    ts = TextStream(FakeDecoder(["go ", "ST"]), ["STOP"])
    assert ts.push(0) == "go "
    assert ts.push(1) == ""
    assert ts.flush() == "ST"
    assert ts.text == "go ST"
    assert not ts.stopped


def test_false_prefix_followed_by_real_stop():
    # "ST" + "ST" + "OP": the first ST is not the stop, the second is
    ts, deltas, last = run_stream(["ST", "ST", "OP", "!"], ["STOP"])
    assert "".join(deltas) + last == "ST"
    assert ts.stopped and ts.text == "ST"


def test_overlapping_prefix_of_stop():
    # stop "aab": text "aaab" contains it at index 1
    ts, deltas, last = run_stream(["a", "a", "a", "b", "c"], ["aab"])
    assert "".join(deltas) + last == "a"
    assert ts.stopped


def test_several_stop_strings_earliest_occurrence_wins():
    ts, deltas, last = run_stream(["hello END world STOP tail"], ["STOP", "END"])
    assert "".join(deltas) + last == "hello "
    assert ts.stopped
    ts, deltas, last = run_stream(["x", "yEN", "D STO", "P"], ["STOP", "END"])
    assert "".join(deltas) + last == "xy"
    ts, deltas, last = run_stream(["a STOP b END"], ["END", "STOP"])
    assert "".join(deltas) + last == "a "


def test_several_stop_strings_hold_back_for_any_of_them():
    ts = TextStream(FakeDecoder(["ab#", "#x", "<", "/s>"]), ["##", "</s>"])
    assert ts.push(0) == "ab"
    assert ts.push(1) == ""
    assert ts.stopped and ts.text == "ab"
    ts = TextStream(FakeDecoder(["ab<", "/", "s>"]), ["##", "</s>"])
    assert ts.push(0) == "ab"
    assert ts.push(1) == ""
    assert ts.push(2) == ""
    assert ts.stopped and ts.text == "ab"


def test_empty_stop_strings_are_ignored():
    ts, deltas, last = run_stream(["ab", "cd"], ["", ""])
    assert deltas == ["ab", "cd"]
    assert ts.text == "abcd" and not ts.stopped


def test_text_property_equals_concatenated_deltas_at_every_step():
    pieces = ["I s", "aid S", "T", "OR", "Y and S", "TO", "P now"]
    ts = TextStream(FakeDecoder(pieces), ["STOP"])
    acc = ""
    for i in range(len(pieces)):
        acc += ts.push(i)
        assert ts.text == acc
    acc += ts.flush()
    assert ts.text == acc == "I said STORY and "


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.text(alphabet="abc", max_size=4), max_size=12),
       stop=st.text(alphabet="abc", min_size=1, max_size=4))
def test_property_output_is_text_cut_at_first_stop(pieces, stop):
    full = "".join(pieces)
    ts = TextStream(FakeDecoder(pieces), [stop])
    out = ""
    for i in range(len(pieces)):
        d = ts.push(i)
        out += d
        assert ts.text == out
        # what has been emitted so far is always a prefix of the correct answer
        assert expected_text(full, stop).startswith(out)
    out += ts.flush()
    assert out == expected_text(full, stop)
    assert ts.text == out
    assert ts.stopped == (stop in full)


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.text(alphabet="abc", max_size=4), max_size=12))
def test_property_no_stop_strings_is_identity(pieces):
    ts = TextStream(FakeDecoder(pieces), [])
    deltas = [ts.push(i) for i in range(len(pieces))]
    assert deltas == pieces
    assert ts.flush() == ""


# ----------------------------------------------------------------------------- hold-back helper

@pytest.mark.parametrize("buf, stops, expected", [
    ("hello", ["STOP"], 0),
    ("hello S", ["STOP"], 1),
    ("hello ST", ["STOP"], 2),
    ("hello STO", ["STOP"], 3),
    ("STOP", ["STOP"], 0),  # a whole stop string is not a *proper* prefix
    ("xSTOP", ["STOP"], 0),
    ("aaa", ["aab"], 2),
    ("ab<|e", ["<|end|>", "e"], 3),
    ("x<", ["<|end|>", "<<"], 1),
    ("x<<", ["<|end|>", "<<<"], 2),
    ("", ["STOP"], 0),
    ("S", ["STOP"], 1),
    ("abc", ["a"], 0),  # single-character stop has no proper prefix
])
def test_longest_stop_prefix_suffix(buf, stops, expected):
    assert _longest_stop_prefix_suffix(buf, stops) == expected


@settings(max_examples=300, deadline=None)
@given(buf=st.text(alphabet="ab", max_size=8), stops=st.lists(st.text(alphabet="ab", min_size=1, max_size=5),
                                                              min_size=1, max_size=3))
def test_longest_stop_prefix_suffix_matches_brute_force(buf, stops):
    brute = max([n for s in stops for n in range(0, min(len(s) - 1, len(buf)) + 1)
                 if buf[len(buf) - n:] == s[:n]] + [0])
    assert _longest_stop_prefix_suffix(buf, stops) == brute


# ----------------------------------------------------------------------------- fit_prompts

def test_fit_prompts_passes_prompts_that_fit():
    gen = GenerationConfig(max_new_tokens=4)
    prompts = [[1, 2, 3, 4, 5, 6], [7], (8, 9)]
    assert fit_prompts(prompts, gen, 10) == [[1, 2, 3, 4, 5, 6], [7], [8, 9]]


def test_fit_prompts_too_long_raises_with_counts():
    gen = GenerationConfig(max_new_tokens=4)
    with pytest.raises(ContextLengthError) as info:
        fit_prompts([[1, 2], list(range(7))], gen, 10)
    msg = str(info.value)
    assert "7" in msg and "4" in msg and "10" in msg
    assert "prompt 1" in msg
    assert isinstance(info.value, ValueError)


def test_fit_prompts_truncates_keeping_last_tokens():
    gen = GenerationConfig(max_new_tokens=4, truncate_prompt=True)
    out = fit_prompts([list(range(100, 109)), [1, 2, 3]], gen, 10)
    assert out == [[103, 104, 105, 106, 107, 108], [1, 2, 3]]
    assert len(out[0]) + gen.max_new_tokens == 10


def test_fit_prompts_boundary_exactly_fills_window():
    gen = GenerationConfig(max_new_tokens=3)
    assert fit_prompts([[1, 2, 3, 4, 5]], gen, 8) == [[1, 2, 3, 4, 5]]
    with pytest.raises(ContextLengthError):
        fit_prompts([[1, 2, 3, 4, 5, 6]], gen, 8)


@pytest.mark.parametrize("max_new, window", [(10, 10), (11, 10), (1, 1)])
def test_fit_prompts_max_new_tokens_filling_window_raises(max_new, window):
    for truncate in (False, True):
        gen = GenerationConfig(max_new_tokens=max_new, truncate_prompt=truncate)
        with pytest.raises(ContextLengthError) as info:
            fit_prompts([[1]], gen, window)
        assert str(max_new) in str(info.value) and str(window) in str(info.value)


def test_fit_prompts_max_new_tokens_one_below_window_allows_one_token_prompt():
    gen = GenerationConfig(max_new_tokens=9, truncate_prompt=True)
    assert fit_prompts([[5, 6, 7]], gen, 10) == [[7]]


def test_fit_prompts_empty_prompt_raises_value_error():
    with pytest.raises(ValueError, match="empty"):
        fit_prompts([[1, 2], []], GenerationConfig(max_new_tokens=2), 10)
    with pytest.raises(ValueError):
        fit_prompts([[]], GenerationConfig(max_new_tokens=2, truncate_prompt=True), 10)
