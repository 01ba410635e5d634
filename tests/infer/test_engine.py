"""The continuous-batching engine: batching that is real (requests arriving at different times
share decoding steps, seen from the engine's own state), outputs equal to each request run alone,
blocks back in the pool the step a request is cancelled, preemption that changes nothing, and
each request's own sampling settings."""

from __future__ import annotations

import pytest

import llmkit
from llmkit.infer import GenerationConfig
from llmkit.infer.blocks import BlockPool, CacheExhaustedError, Sequence
from llmkit.infer.engine import Engine, QueueFullError, RequestTooLargeError

PROMPTS = ["def main():", "import os\nimport sys\n", "class Foo(object):\n    def", "x = 1\ny ="]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


@pytest.fixture(scope="module")
def llm(tiny_dirs):
    return llmkit.load(tiny_dirs["tiny-llama"])


@pytest.fixture(scope="module")
def alone(llm):
    """Each prompt's greedy tokens, generated alone by the plain (non-engine) generator."""
    return [llm.complete([p], max_new_tokens=24, temperature=0, ignore_eos=True)[0].token_ids for p in PROMPTS]


def greedy(n=24, **kw):
    return GenerationConfig(max_new_tokens=n, temperature=0, ignore_eos=True, **kw)


def test_staggered_requests_share_steps_and_match_running_alone(llm, alone):
    engine = Engine(llm, max_batch=8, block_size=4)
    reqs, seen = [], []
    for p in PROMPTS:  # a new request every three steps, while the earlier ones are mid-flight
        reqs.append(engine.submit(llm.tokenize(p), greedy()))
        for _ in range(3):
            engine.step()
            seen.append(engine.batch_size)
    while engine.has_work():
        engine.step()
        seen.append(engine.batch_size)
    assert max(seen) == len(PROMPTS)  # all four ran in one batch at some step
    assert seen[0] == 1 and seen[-1] == 0  # and they joined and left one by one
    assert [r.generated for r in reqs] == alone
    assert all(r.finish_reason == "length" for r in reqs)
    assert engine.pool.num_free == engine.pool.num_blocks - 1  # every block came back


def test_a_cancelled_request_frees_its_blocks_at_the_next_step(llm):
    engine = Engine(llm, max_batch=4, block_size=4)
    keep = engine.submit(llm.tokenize(PROMPTS[1]), greedy(40))
    gone = engine.submit(llm.tokenize(PROMPTS[2]), greedy(40))
    for _ in range(5):
        engine.step()
    held = list(gone.cache.blocks)
    assert held and engine.batch_size == 2
    engine.cancel(gone.id)
    engine.step()
    assert gone.finish_reason == "cancelled" and engine.batch_size == 1
    assert all(engine.pool.is_free(b) for b in held)  # its blocks are free again (cached, or never used)
    assert engine.pool.num_free == engine.pool.num_blocks - 1 - len(keep.cache.blocks)
    while engine.has_work():
        engine.step()
    assert keep.finish_reason == "length" and len(keep.generated) == 40


def test_preemption_when_the_cache_runs_dry_changes_no_output(llm):
    long = [llm.complete([p], max_new_tokens=80, temperature=0, ignore_eos=True)[0].token_ids for p in PROMPTS]
    engine = Engine(llm, max_batch=4, block_size=8)
    engine.pool = BlockPool(llm.config, 260 // 8 + 1, 8)  # room for ~3 of the 4 requests at full length
    out = engine.generate(PROMPTS, greedy(80))
    assert engine.preemptions > 0
    assert [c.token_ids for c in out] == long


def test_each_request_keeps_its_own_sampling(llm):
    engine = Engine(llm, max_batch=4)
    seeded = GenerationConfig(max_new_tokens=16, temperature=1.0, top_k=20, seed=123)
    solo = engine.generate([PROMPTS[0]], seeded)[0].token_ids
    mixed = engine.generate([PROMPTS[0], PROMPTS[1], PROMPTS[0]],
                            GenerationConfig(max_new_tokens=16, temperature=1.0, top_k=20, seed=123))
    assert mixed[0].token_ids == solo == mixed[2].token_ids  # a seed gives the same draw in any batch
    a = engine.submit(llm.tokenize(PROMPTS[0]), greedy(5))
    b = engine.submit(llm.tokenize(PROMPTS[0]), GenerationConfig(max_new_tokens=30, temperature=0.8, seed=1,
                                                                 ignore_eos=True))
    while engine.has_work():
        engine.step()
    assert len(a.generated) == 5 and len(b.generated) == 30  # own token budgets in one batch


def test_stop_strings_eos_and_zero_tokens(llm, alone):
    engine = Engine(llm)
    text = llm.detokenize(alone[0])
    stop = text[len(text) // 2:][:3]
    c = engine.generate([PROMPTS[0]], greedy(stop=[stop]))[0]
    assert c.finish_reason == "stop" and stop not in c.text and text.startswith(c.text)
    eos_at = alone[0][3]
    c = engine.generate([PROMPTS[0]], GenerationConfig(max_new_tokens=24, temperature=0, stop_token_ids=[eos_at]))[0]
    assert c.token_ids == alone[0][:alone[0].index(eos_at)] and c.finish_reason == "stop"
    assert engine.generate([PROMPTS[0]], greedy(0))[0].token_ids == []


def test_bounded_queue_and_oversized_requests(llm):
    engine = Engine(llm, max_batch=1, max_queue=2)
    engine.submit([5, 6], greedy(4))
    engine.submit([5, 6], greedy(4))
    with pytest.raises(QueueFullError, match="retry later"):
        engine.submit([5, 6], greedy(4))
    small = Engine(llm, max_batch=1)
    small.pool = BlockPool(llm.config, 5, 4)
    with pytest.raises(RequestTooLargeError, match="max_tokens"):
        small.submit([5, 6], greedy(100))


def test_block_pool_reserve_release():
    cfg = llmkit.models.preset("tiny-llama")
    pool = BlockPool(cfg, 5, block_size=4)
    s = Sequence()
    pool.reserve(s, 9)  # three blocks of four
    assert len(s.blocks) == 3 and pool.num_free == 1 and 0 not in s.blocks
    assert pool.slots(s, 3, 6).tolist() == [s.blocks[0] * 4 + 3, s.blocks[1] * 4, s.blocks[1] * 4 + 1]
    with pytest.raises(CacheExhaustedError):
        pool.reserve(Sequence(), 8)
    pool.release(s)
    assert pool.num_free == 4 and s.blocks == []


def test_engine_matches_plain_generation_on_gpt2_family(tiny_dirs):
    """Learned positions and biases (GPT-2) through the paged path, against the plain generator."""
    llm = llmkit.load(tiny_dirs["tiny-gpt2"])
    want = [llm.complete([p], max_new_tokens=12, temperature=0, ignore_eos=True)[0].token_ids for p in PROMPTS]
    got = Engine(llm, block_size=4).generate(PROMPTS, greedy(12))
    assert [c.token_ids for c in got] == want


def test_engine_matches_plain_generation_on_a_mixture_of_experts(tiny_dirs):
    """A Mixtral-style model (tokens of different requests routed to different experts in one
    batched step) through the paged path, against each prompt generated alone."""
    llm = llmkit.load(tiny_dirs["tiny-mixtral"])
    assert llm.model.config.is_moe
    want = [llm.complete([p], max_new_tokens=12, temperature=0, ignore_eos=True)[0].token_ids for p in PROMPTS]
    assert len({tuple(w) for w in want}) == len(PROMPTS)
    got = Engine(llm, block_size=4).generate(PROMPTS, greedy(12))
    assert [c.token_ids for c in got] == want
