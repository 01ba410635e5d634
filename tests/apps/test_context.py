"""The context assembler: the system prompt and the latest turn always stay, the lowest-scoring
retrieved chunks go first, then the oldest exchanges; counts are exact for a local model and the
result is the fullest prompt within the budget; an overflow raises; the estimate for models that
cannot count never under-counts."""

from __future__ import annotations

import random

import pytest

import llmkit
from llmkit.apps.context import Chunk, ContextOverflow, as_chunks, assemble, count_tokens
from llmkit.tokenizer.chat import estimate_chat_tokens, fit_history

SYSTEM = "Answer from the passages."
CHUNKS = [("alpha passage " * 12, 0.9), ("beta passage " * 12, 0.1), ("gamma passage " * 12, 0.5)]


@pytest.fixture(scope="module")
def llm(tiny_dir):
    return llmkit.load(tiny_dir)


def conversation(n: int) -> list[dict]:
    turns = []
    for i in range(n):
        turns += [{"role": "user", "content": f"question {i} " * 4}, {"role": "assistant", "content": f"answer {i} " * 4}]
    return turns


def test_the_budget_rule_and_exact_counts(llm):
    history = conversation(12)
    full = assemble(llm, system=SYSTEM, history=history, retrieved=CHUNKS, question="last?", budget=10_000)
    smallest = assemble(llm, system=SYSTEM, history=history, retrieved=CHUNKS, question="last?",
                        budget=llm.chat_tokens([{"role": "system", "content": SYSTEM},
                                                {"role": "user", "content": "last?"}]))
    assert not full.dropped and len(smallest.dropped_chunks) == 3 and len(smallest.dropped_turns) == len(history)
    seen = set()
    for budget in range(smallest.tokens, full.tokens + 1, 7):
        a = assemble(llm, system=SYSTEM, history=history, retrieved=CHUNKS, question="last?", budget=budget)
        seen.add((len(a.dropped_chunks), len(a.dropped_turns)))
        # exact, within the budget; the system prompt first and the latest turn last, always
        assert a.tokens == llm.chat_tokens(a.messages) <= budget
        assert a.messages[0]["role"] == "system" and a.messages[0]["content"].startswith(SYSTEM)
        assert a.messages[-1] == {"role": "user", "content": "last?"}
        # the lowest-scoring chunks go first, and turns only once every chunk is gone
        assert [c.score for c in a.dropped_chunks] == sorted(c.score for c in a.dropped_chunks)
        assert all(d.score <= k.score for d in a.dropped_chunks for k in a.kept_chunks)
        assert not a.dropped_turns or len(a.dropped_chunks) == 3
        # whole exchanges, oldest first: what is sent is a suffix of the conversation
        assert len(a.dropped_turns) % 2 == 0 and a.dropped_turns == history[:len(a.dropped_turns)]
        assert a.messages[1:-1] == history[len(a.dropped_turns):]
        # kept chunks are numbered in their original order
        text = a.messages[0]["content"]
        for n, chunk in enumerate(a.kept_chunks, 1):
            assert f"[{n}] {chunk.text}" in text
        assert [c.index for c in a.kept_chunks] == sorted(c.index for c in a.kept_chunks)
        # and it is the fullest such prompt: adding back the next dropped item is over the budget
        if a.dropped_turns:
            back = assemble(llm, system=SYSTEM, history=history[len(a.dropped_turns) - 2:], question="last?",
                            budget=10_000)
            assert back.tokens > budget
        elif a.dropped_chunks:
            kept = a.kept_chunks + [a.dropped_chunks[-1]]
            back = assemble(llm, system=SYSTEM, history=history, question="last?", budget=10_000,
                            retrieved=[(c.text, c.score) for c in sorted(kept, key=lambda c: c.index)])
            assert back.tokens > budget
    assert (1, 0) in seen and (2, 0) in seen and (3, 2) in seen  # every stage was reached


def test_few_counts_and_a_clear_overflow(llm):
    calls = []

    def count(messages):
        calls.append(1)
        return llm.chat_tokens(messages)

    history = conversation(40)
    a = assemble(llm, system=SYSTEM, history=history, retrieved=CHUNKS, question="last?", budget=150, count=count)
    assert a.dropped_turns and len(calls) <= 8  # a bisection over 44 candidates, not one count each
    calls.clear()
    assemble(llm, system=SYSTEM, history=history[:4], question="last?", count=count)
    assert len(calls) == 1  # everything fits: one count

    with pytest.raises(ContextOverflow, match=r"system prompt takes \d+ tokens.*budget of 40 tokens") as e:
        assemble(llm, system=SYSTEM * 10, history=history, retrieved=CHUNKS, question="last?", budget=40)
    assert isinstance(e.value, ValueError)
    window = llm.context_window
    with pytest.raises(ContextOverflow, match=f"context window less max_new_tokens={window - 8}"):
        assemble(llm, question="a long question " * 100, max_new_tokens=window - 8)


def test_default_budget_and_inputs(llm):
    history = conversation(60)  # far more than the 512-token window
    a = assemble(llm, history=history + [{"role": "user", "content": "now?"}], max_new_tokens=100)
    assert a.budget == llm.context_window - 100 and a.tokens <= a.budget and a.dropped_turns
    with pytest.raises(ValueError, match="nothing to answer"):
        assemble(llm, system=SYSTEM)
    with pytest.raises(ValueError, match="system prompt once"):
        assemble(llm, system=SYSTEM, history=[{"role": "system", "content": "x"}], question="q")

    class Hit:
        text, score = "hit text", 2.0

    chunks = as_chunks([("pair", 1.0), Hit(), {"text": "dict", "score": 3}, "plain"])
    assert [(c.text, c.score, c.index) for c in chunks[:3]] == [("pair", 1.0, 0), ("hit text", 2.0, 1), ("dict", 3.0, 2)]
    assert chunks[3] == Chunk("plain", -3.0, 3)
    with pytest.raises(TypeError, match=r"retrieved\[0\]"):
        as_chunks([42])


def test_fit_history_keeps_the_one_rule(llm):
    """fit_history bisects now; it drops exactly what the old one-exchange-at-a-time loop dropped."""
    def old(messages, budget, count):
        head = messages[:1] if messages and messages[0].get("role") == "system" else []
        rest = list(messages[len(head):])
        while len(rest) > 1 and count(head + rest) > budget:
            rest = rest[2:] if len(rest) > 2 else rest[1:]
        return head + rest

    rng = random.Random(0)
    for _ in range(30):
        n = rng.randrange(0, 12)
        messages = ([{"role": "system", "content": "s"}] if rng.random() < 0.5 else []) + conversation(n)
        messages.append({"role": "user", "content": "x " * rng.randrange(1, 60)})
        budget = rng.randrange(10, 400)
        assert fit_history(messages, budget, llm.chat_tokens) == old(messages, budget, llm.chat_tokens)


TEXTS = ["The quick brown fox jumps over the lazy dog. " * 6, "def add(a, b):\n    return a + b\n" * 4,
         "1234567890 3.14159 2026-01-01 0xdeadbeef", "Grüße aus Köln, naïve café — 東京タワー 😀🎉",
         'x = {"a": [1, 2, 3]}; print(x)  # noqa', "  \t\n  spaced   out  \n"]


def test_the_estimate_never_under_counts_a_real_bpe(llm):
    for text in TEXTS:
        for messages in ([{"role": "user", "content": text}],
                         [{"role": "system", "content": text}, {"role": "user", "content": text},
                          {"role": "assistant", "content": text}, {"role": "user", "content": "?"}]):
            assert estimate_chat_tokens(messages) >= llm.chat_tokens(messages), text

    class NoCounter:  # an LLM that cannot count: the estimate, the same upper bound
        pass

    messages = [{"role": "user", "content": TEXTS[0]}]
    assert count_tokens(NoCounter(), messages) == estimate_chat_tokens(messages)
    assert count_tokens(llm, messages) == llm.chat_tokens(messages)
