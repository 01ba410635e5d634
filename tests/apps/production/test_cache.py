"""Exact and semantic caches: temperature 0 only, never across system prompts or settings, TTL,
hit rate and saved tokens; the shipped near-miss pairs, and the default threshold checked with
the real all-MiniLM-L6-v2."""

from __future__ import annotations

import pytest

from llmkit.apps.production import (DEFAULT_THRESHOLD, CacheEntry, SemanticCache, cache_report, guarded,
                                    load_cache_pairs, same_specifics)
from tests.apps.production.fakes import Counting, WordsEmbedder


def ask(text: str, system: str | None = None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


def test_exact_cache_answers_only_the_same_temperature_0_call():
    inner = Counting()
    llm = guarded(inner, cache="exact")
    first = llm.chat(ask("What is 2+2?", "Be brief."), temperature=0, max_new_tokens=8)
    assert llm.chat(ask("What is 2+2?", "Be brief."), temperature=0, max_new_tokens=8) == first == "answer 1"
    assert len(inner.calls) == 1
    # never across settings or system prompts, never when sampling
    assert llm.chat(ask("What is 2+2?", "Be brief."), temperature=0, max_new_tokens=9) == "answer 2"
    assert llm.chat(ask("What is 2+2?", "Be verbose."), temperature=0, max_new_tokens=8) == "answer 3"
    assert llm.chat(ask("What is 2+2?"), temperature=0, max_new_tokens=8) == "answer 4"
    assert llm.chat(ask("What is 2+2?", "Be brief."), temperature=0.7, max_new_tokens=8) == "answer 5"
    assert llm.chat(ask("What is 2+2?", "Be brief."), temperature=0.7, max_new_tokens=8) == "answer 6"
    assert llm.generate("What is 2+2?", temperature=0, max_new_tokens=8) == "answer 7"  # another kind of call
    assert llm.generate("What is 2+2?", temperature=0, max_new_tokens=8) == "answer 7"
    stats = llm.stats()["cache"]
    assert (stats["lookups"], stats["exact_hits"], stats["semantic_hits"]) == (7, 2, 0)
    assert stats["hit_rate"] == pytest.approx(2 / 7) and stats["saved_tokens"] > 0


def test_a_stream_is_cached_once_whole_and_served_whole():
    inner = Counting()
    llm = guarded(inner, cache="exact")
    assert "".join(llm.stream("hi", temperature=0)) == "answer 1"
    assert list(llm.stream("hi", temperature=0)) == ["answer 1"] and len(inner.calls) == 1
    broken = llm.stream("left early", temperature=0)
    next(broken)
    broken.close()  # a stream not read to its end is not cached
    assert "".join(llm.stream("left early", temperature=0)) == "answer 3"


def test_semantic_cache_hits_close_questions_within_its_ttl_but_never_near_misses():
    now = [0.0]
    inner = Counting()
    llm = guarded(inner, cache=SemanticCache(WordsEmbedder(), threshold=0.8, ttl=60, clock=lambda: now[0]))
    assert llm.chat(ask("What is 2+2?", "S"), temperature=0) == "answer 1"
    assert llm.chat(ask("what is 2+2", "S"), temperature=0) == "answer 1"  # close enough: served
    assert llm.chat(ask("What is 2+3?", "S"), temperature=0) == "answer 2"  # a changed number: never
    assert llm.chat(ask("What is not 2+2?", "S"), temperature=0) == "answer 3"  # a negation: never
    assert llm.chat(ask("what is 2+2", "Other"), temperature=0) == "answer 4"  # another system prompt: never
    now[0] = 61.0
    assert llm.chat(ask("what is 2+2", "S"), temperature=0) == "answer 5"  # expired
    assert llm.stats()["cache"]["semantic_hits"] == 1


def test_specifics_tell_paraphrases_from_near_misses():
    assert same_specifics("How do I reverse a list in Python?", "What's the way to reverse a Python list?")
    assert not same_specifics("What is 2+2?", "What is 2+3?")
    assert not same_specifics("What is two plus two?", "What is 2+3?")
    assert same_specifics("What is two plus two?", "what is 2 plus 2")
    assert not same_specifics("Which fruits contain vitamin C?", "Which fruits don't contain vitamin C?")
    assert not same_specifics("What is the capital of France?", "What is the capital of Germany?")
    assert not same_specifics("How do I convert Celsius to Fahrenheit?", "How do I convert Fahrenheit to Celsius?")


SWAPS = [("What is 10 divided by 2?", "What is 2 divided by 10?"), ("Convert 5 km to miles", "Convert 5 miles to km"),
         ("Is 7 bigger than 12?", "Is 12 bigger than 7?"), ("grams in 3 kilograms", "kilograms in 3 grams"),
         ("how do i convert celsius to fahrenheit", "how do i convert fahrenheit to celsius"),
         ("2 to the power of 10", "10 to the power of 2"), ("Subtract 3 from 10", "Subtract 10 from 3")]


def test_specifics_keep_the_order_of_numbers_and_words():
    for a, b in SWAPS:
        assert not same_specifics(a, b), (a, b)
    assert not same_specifics("Is milk chocolate sweet?", "Is chocolate milk sweet?")  # a compound swapped
    # a compound on one side and a phrase on the other is a paraphrase
    assert same_specifics("How do I reverse a list in Python?", "What's the way to reverse a Python list?")
    assert same_specifics("Recommend a good book about history.", "Can you recommend a good history book?")
    assert same_specifics("what is 10 divided by 2", "What's 10 divided by 2?")


def test_the_shipped_pairs_cover_every_kind():
    dev, heldout = load_cache_pairs("dev"), load_cache_pairs("heldout")
    pairs = dev + heldout
    assert (len(dev), len(heldout)) == (36, 38) and len({p.id for p in pairs}) == len(pairs)
    kinds = {p.kind for p in pairs}
    assert kinds == {"paraphrase", "number", "negation", "entity", "antonym", "order"}
    order = [{(p.a, p.b) for p in split if p.kind == "order"} for split in (dev, heldout)]
    assert (len(order[0]), len(order[1])) == (8, 10) and not order[0] & order[1]  # different pairs in each
    assert any(p.a == "What is 2+2?" and p.b == "What is 2+3?" and not p.same for p in pairs)


def test_the_default_threshold_keeps_false_hits_rare_with_minilm(minilm):
    import llmkit

    embedder = llmkit.load(minilm.path)
    report = cache_report(embedder, DEFAULT_THRESHOLD, "heldout")
    assert report["false_hit_rate"] == 0.0 and report["hit_rate"] >= 0.4, report
    assert (report["near_misses"], round(report["false_hit_upper"], 3)) == (26, 0.129)  # Wilson 95%: 0 of 26
    unguarded = cache_report(embedder, DEFAULT_THRESHOLD, "heldout", guard=False)
    assert unguarded["false_hit_rate"] > 0  # the embedding alone would serve near misses
    assert unguarded["hits_by_kind"]["order"] >= 8  # swapped words above all: 0.99 for MiniLM
    cache = SemanticCache(embedder)
    cache.put("ctx", "What is 2+2?", CacheEntry("4"))
    assert cache.get("ctx", "what's 2+2")[1] == "semantic"
    assert cache.get("ctx", "What is 2+3?") is None and cache.get("other", "What is 2+2?") is None
    for a, b in SWAPS:  # each over the threshold, none served
        cache.put("swaps", a, CacheEntry("answer to " + a))
        assert cache.get("swaps", b) is None, (a, b)


class Flaky(Counting):
    """Fails its first call (a reset connection), then answers."""

    name = "primary"

    def chat(self, messages, gen=None, stream=False, timings=None, **kwargs):
        if not self.calls:
            self.calls.append("reset")
            raise ConnectionResetError("reset by peer")
        return "primary " + super().chat(messages)


def test_a_fallbacks_answer_is_never_served_later_as_the_first_models(tmp_path):
    backup = Counting()
    llm = guarded(Flaky(), fallbacks=[backup], retries=0, cache="exact", log=tmp_path / "c.jsonl")
    assert llm.chat(ask("What is 2+2?"), temperature=0) == "answer 1"  # the fallback's, not cached
    assert llm.chat(ask("What is 2+2?"), temperature=0) == "primary answer 2"  # the first model is back
    assert llm.chat(ask("What is 2+2?"), temperature=0) == "primary answer 2"  # its answer is cached
    assert [(r["model"], r["cache_hit"]) for r in llm.log.rows()] == [
        ("counting", None), ("primary", None), ("primary", "exact")]


class DownEmbedder:
    def embed(self, texts, **kwargs):
        raise ConnectionError("embedding server down")


def test_a_failing_cache_is_a_miss_never_a_failed_call(caplog):
    inner = Counting()
    llm = guarded(inner, cache=SemanticCache(DownEmbedder()), retries=0)
    with caplog.at_level("WARNING"):
        assert llm.chat(ask("hi"), temperature=0) == "answer 1"  # caching it failed: said, not raised
        assert llm.chat(ask("hello"), temperature=0) == "answer 2"
        assert "".join(llm.stream("hey", temperature=0)) == "answer 3"
    assert "could not cache the answer (ConnectionError: embedding server down)" in caplog.text
    assert llm.budget.calls == 3
    cache = SemanticCache(WordsEmbedder())
    llm = guarded(Counting(), cache=cache)
    llm.chat(ask("hi there"), temperature=0)
    cache.embedder = DownEmbedder()  # now a lookup fails too: a miss
    with caplog.at_level("WARNING"):
        assert llm.chat(ask("hi there friend"), temperature=0) == "answer 2"
    assert "the cache lookup failed (ConnectionError: embedding server down)" in caplog.text
