"""Prefix caching in the paged KV cache: blocks found by content (a chain over the tokens from the start,
salted by adapter), shared by reference count, evicted least-recently-used and never while in use; and
through the engine, the same greedy outputs and log-probs with and without it."""

from __future__ import annotations

import pytest
import torch

import llmkit
from llmkit.infer import GenerationConfig
from llmkit.infer.blocks import BlockPool, CacheExhaustedError, Sequence
from llmkit.infer.engine import Engine

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py

CFG = llmkit.models.preset("tiny-llama")


def prefilled(pool: BlockPool, tokens: list[int], salt: str = "") -> Sequence:
    """A sequence as the engine leaves it after a prompt's prefill: shared prefix, its own blocks, registered."""
    seq = Sequence()
    pool.share_prefix(seq, tokens, salt)
    pool.reserve(seq, len(tokens) + 1)
    seq.length = len(tokens)
    pool.register(seq, tokens, salt)
    return seq


def test_whole_blocks_of_the_same_prefix_are_shared_and_counted():
    pool = BlockPool(CFG, 20, block_size=4)
    a = prefilled(pool, list(range(10)))  # blocks: [0..3] [4..7] [8, 9]
    assert pool.cached_blocks == 2  # only full blocks are findable
    b = Sequence()
    assert pool.share_prefix(b, list(range(10)) + [77, 78]) == 8
    assert b.blocks == a.blocks[:2] and [pool.refs[x] for x in b.blocks] == [2, 2]
    c = Sequence()  # the same prompt exactly: its last token is left to compute, so only one block is shared
    assert pool.share_prefix(c, list(range(8))) == 4 and c.blocks == a.blocks[:1]


def test_a_block_is_never_shared_across_prefixes_or_adapters():
    pool = BlockPool(CFG, 20, block_size=4)
    prefilled(pool, [1, 2, 3, 4, 5, 6, 7, 8, 9])
    other_start = Sequence()  # the second block's tokens match, but not what came before them
    assert pool.share_prefix(other_start, [9, 2, 3, 4, 5, 6, 7, 8, 9]) == 0 and other_start.blocks == []
    adapter = Sequence()  # the same tokens under another adapter fill the cache differently
    assert pool.share_prefix(adapter, [1, 2, 3, 4, 5, 6, 7, 8, 9], salt="sql-lora") == 0
    prefilled(pool, [1, 2, 3, 4, 5, 6, 7, 8, 9], salt="sql-lora")
    again = Sequence()
    assert pool.share_prefix(again, [1, 2, 3, 4, 5, 6, 7, 8, 9], salt="sql-lora") == 8
    assert not set(again.blocks) & set(other_start.blocks) and pool.cached_blocks == 4


def test_eviction_takes_the_least_recently_used_idle_block_and_never_one_in_use():
    pool = BlockPool(CFG, 7, block_size=2)  # six usable blocks
    held = prefilled(pool, [1, 2, 3, 4, 5])  # three blocks, two of them cached, held
    old = prefilled(pool, [9, 9, 8, 8, 7])  # three more
    pool.release(old)  # its two cached blocks go idle (the third is plain free)
    assert pool.num_free == 3 and pool.cached_blocks == 4
    before = pool.k[:, held.blocks[0] * 2:held.blocks[0] * 2 + 2].clone()
    third = Sequence()
    pool.reserve(third, 4)  # two blocks: the plain free one first, then the least recent idle one
    assert pool.cached_blocks == 3 and not set(third.blocks) & set(held.blocks)
    with pytest.raises(CacheExhaustedError):
        pool.reserve(Sequence(), 4)  # one idle block left; the held ones are not touched
    assert pool.cached_blocks == 3 and all(pool.refs[b] == 1 for b in held.blocks)
    assert torch.equal(pool.k[:, held.blocks[0] * 2:held.blocks[0] * 2 + 2], before)
    found = Sequence()
    assert pool.share_prefix(found, [1, 2, 3, 4, 5]) == 4  # the held prefix is still found
    # the released prompt's tail went first; its head, which any reuse needs first, stayed
    assert pool.share_prefix(Sequence(), [9, 9, 8, 8, 7]) == 2


def test_off_means_no_sharing():
    pool = BlockPool(CFG, 20, block_size=4, prefix_cache=False)
    prefilled(pool, list(range(12)))
    s = Sequence()
    assert pool.share_prefix(s, list(range(12))) == 0 and pool.cached_blocks == 0 and pool.hit_rate == 0


@pytest.fixture(scope="module")
def llm(tiny_dirs):
    return llmkit.load(tiny_dirs["tiny-llama"])


def test_the_engine_gives_the_same_tokens_and_logprobs_with_and_without_the_cache(llm):
    system = "You are a careful assistant. Answer in one short sentence, in English, and cite the manual. " * 3
    prompts = [system + q for q in ("def main():", "import os", "class Foo:", "x = 1")]
    gen = GenerationConfig(max_new_tokens=12, temperature=0, ignore_eos=True, logprobs=True)
    want = [llm.complete([p], max_new_tokens=12, temperature=0, ignore_eos=True)[0].token_ids for p in prompts]
    runs = {}
    for cached in (True, False):
        engine = Engine(llm, max_batch=4, block_size=4, prefix_cache=cached)
        first = engine.generate(prompts[:1], gen)  # the shared prefix is computed once ...
        rest = engine.generate(prompts[1:], gen)  # ... and found by the later requests
        runs[cached] = (first + rest, engine.pool.hit_rate)
        assert engine.pool.num_free == engine.pool.num_blocks - 1  # every block back (cached or never used)
    (hit, rate), (miss, no_rate) = runs[True], runs[False]
    assert [c.token_ids for c in hit] == [c.token_ids for c in miss] == want
    for a, b in zip(hit, miss):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    shared = len(llm.tokenize(system)) // 4 * 4
    assert no_rate == 0 and rate >= 3 * shared / sum(len(llm.tokenize(p)) for p in prompts) - 0.05


def test_adapters_keep_their_own_blocks_in_the_engine(llm):
    import contextlib

    engine = Engine(llm, block_size=4, use_adapter=lambda name: contextlib.nullcontext())
    prompt = llm.tokenize("The same long prompt, asked under two adapters, must not share its cache. " * 2)
    for adapter, found in (("a", 0), ("b", 0), ("a", len(prompt) - 1 - (len(prompt) - 1) % 4)):
        before = engine.pool.hit_tokens
        req = engine.submit(prompt, GenerationConfig(max_new_tokens=2, temperature=0), adapter=adapter)
        while not req.done.is_set():
            engine.step()
        assert engine.pool.hit_tokens - before == found, adapter


def test_chunked_prefill_with_the_cache_and_identical_prompts_admitted_together(llm):
    """Long prompts sharing a prefix, prefilled in chunks of 8, and four identical prompts admitted in one
    step: the tokens of running alone, and the identical ones share what the first one computed."""
    head = "Rules: answer briefly, in English, citing the manual's section numbers where you can. " * 2
    prompts = [head + tail for tail in ("def main():", "import os", "x = 1")] + [head + "class A:"] * 4
    want = [llm.complete([p], max_new_tokens=8, temperature=0, ignore_eos=True)[0].token_ids for p in prompts]
    engine = Engine(llm, max_batch=8, block_size=4, prefill_chunk=8)
    got = engine.generate(prompts, GenerationConfig(max_new_tokens=8, temperature=0, ignore_eos=True))
    assert [c.token_ids for c in got] == want
    n = len(llm.tokenize(head + "class A:"))
    assert engine.pool.hit_tokens >= 3 * ((n - 1) // 4 * 4)  # the three later copies found the first one's blocks
    assert engine.pool.prompt_tokens == sum(len(llm.tokenize(p)) for p in prompts)  # each prompt counted once


def test_the_hit_rate_counts_each_served_prompt_once(llm):
    """A request that waits for blocks over many steps, and one that is preempted and recomputed, each add
    their prompt to the hit rate once."""
    engine = Engine(llm, max_batch=4, block_size=4, kv_cache_tokens=256, prefill_chunk=16)
    first = engine.submit(list(range(10, 30)), GenerationConfig(max_new_tokens=150, temperature=0, ignore_eos=True))
    engine.step()
    second = engine.submit(list(range(10, 26)) + list(range(100, 140)),
                           GenerationConfig(max_new_tokens=60, temperature=0, ignore_eos=True))
    while not (first.done.is_set() and second.done.is_set()):
        engine.step()
    assert engine.pool.prompt_tokens == 20 + 56
    assert engine.pool.hit_tokens <= 16  # at most the shared first 16 tokens, once


def test_identical_prompts_behind_a_cached_prefix_compute_their_new_blocks_once(llm):
    """Two samples of one prompt whose system part is cached: one computes the new blocks, the other waits a
    step and shares them (batched prefill would otherwise compute them twice)."""
    system = llm.tokenize("You are a helpful assistant. Answer briefly and politely, please. " * 2)
    question = llm.tokenize(" What is the capital of France, and why is it famous? Explain in detail." * 2)
    gen = GenerationConfig(max_new_tokens=2, temperature=0, ignore_eos=True)
    engine = Engine(llm, max_batch=8, block_size=4)
    engine.generate([system + [5]], gen)  # caches the system prompt's blocks
    before = engine.pool.hit_tokens
    out = engine.generate([system + question] * 2, gen)
    assert out[0].token_ids == out[1].token_ids
    shared = engine.pool.hit_tokens - before
    assert shared >= 2 * (len(system) // 4 * 4) + (len(question) // 4 - 1) * 4  # the second found the question too
