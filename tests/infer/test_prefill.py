"""Chunked prefill in the engine: prompts enter the cache at most `prefill_chunk` tokens per step, shortest
remaining first, beside the running decodes, with the same tokens as running alone; "serial" keeps the first
behaviour (each prompt whole) for comparison."""

from __future__ import annotations

import pytest

import llmkit
from llmkit.infer import GenerationConfig
from llmkit.infer.engine import Engine
from llmkit.models.decode_step import DecodeStep

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py

SHORT = "x = 1\ny ="
LONG = "import os\nimport sys\n\n\ndef main(argv):\n    for name in sorted(os.listdir(argv[1])):\n        print(name)\n" * 2


@pytest.fixture(scope="module")
def llm(tiny_dirs):
    return llmkit.load(tiny_dirs["tiny-llama"])


def greedy(n=12):
    return GenerationConfig(max_new_tokens=n, temperature=0, ignore_eos=True)


def run(engine, reqs):
    while not all(r.done.is_set() for r in reqs):
        engine.step()


@pytest.mark.parametrize("prefill", ["chunked", "serial"])
def test_mixed_prompt_lengths_give_the_tokens_of_running_alone(llm, prefill):
    prompts = [SHORT, LONG, "def f():", LONG[:60], "class A:"]
    alone = [llm.complete([p], max_new_tokens=12, temperature=0, ignore_eos=True)[0].token_ids for p in prompts]
    assert len(llm.tokenize(LONG)) > 3 * 8  # longer than several chunks
    engine = Engine(llm, max_batch=8, block_size=4, prefill=prefill, prefill_chunk=8, prefix_cache=False)
    assert [c.token_ids for c in engine.generate(prompts, greedy())] == alone


def test_a_long_prompt_is_prefilled_in_chunks_while_the_running_request_keeps_decoding(llm):
    engine = Engine(llm, max_batch=4, block_size=4, prefill_chunk=8, prefix_cache=False)
    running = engine.submit(llm.tokenize(SHORT), greedy(40))
    engine.step()
    assert running in engine.running
    long = engine.submit(llm.tokenize(LONG), greedy(4))
    n = len(llm.tokenize(LONG))
    lengths, decoded = [], []
    while long not in engine.running and not long.done.is_set():
        before = len(running.generated)
        engine.step()
        lengths.append(long.cache.length)
        decoded.append(len(running.generated) - before)
    assert len(lengths) == -(-n // 8) and all(b - a <= 8 for a, b in zip([0] + lengths, lengths))
    assert decoded == [1] * len(lengths)  # one token for the running request at every one of those steps
    serial = Engine(llm, max_batch=4, block_size=4, prefill="serial", prefix_cache=False)
    whole = serial.submit(llm.tokenize(LONG), greedy(4))
    serial.step()
    assert whole in serial.running and whole.cache.length >= n  # the whole prompt in one step


def test_a_short_prompt_is_not_stuck_behind_a_long_one_and_the_long_one_is_not_starved(llm):
    engine = Engine(llm, max_batch=16, block_size=4, prefill_chunk=8, prefix_cache=False)
    long = engine.submit(llm.tokenize(LONG), greedy(20))
    short = engine.submit(llm.tokenize(SHORT), greedy(2))  # arrives after the long one
    engine.step()
    assert short.generated and not long.generated  # shortest first: its first token in the first step
    more, grown, n = [], [], len(long.todo)
    while long in engine.prefilling:  # short prompts keep arriving
        more.append(engine.submit(llm.tokenize(SHORT), greedy(2)))
        before = long.cache.length
        engine.step()
        grown.append(min(long.cache.length, n) - before)
    # the newcomers go first for three steps; from the fourth the long prompt takes the whole budget (or what
    # is left of it) every step until it is in
    assert all(g < 8 for g in grown[:3]) and grown[3:-1] == [8] * (len(grown) - 4) and 0 < grown[-1] <= 8, str(grown)
    assert all(r.generated for r in more[:3])
    run(engine, [long, short, *more])


def test_cancelling_a_request_mid_prefill_frees_its_blocks(llm):
    engine = Engine(llm, max_batch=4, block_size=4, prefill_chunk=8, prefix_cache=False)
    long = engine.submit(llm.tokenize(LONG), greedy(4))
    engine.step()
    assert long in engine.prefilling and long.cache.blocks
    engine.cancel(long.id)
    engine.step()
    assert long.finish_reason == "cancelled" and not engine.prefilling
    assert engine.pool.num_free == engine.pool.num_blocks - 1


def test_bad_prefill_settings_are_refused(llm):
    with pytest.raises(ValueError, match="'chunked' or 'serial'"):
        Engine(llm, prefill="batched")
    with pytest.raises(ValueError, match="prefill_chunk=0"):
        Engine(llm, prefill_chunk=0)


@pytest.mark.parametrize("prefill", ["chunked", "serial"])
def test_the_newest_request_gives_way_when_the_cache_runs_dry(llm, prefill):
    """An old request far into its reply and a new long prompt: the new one is preempted, not the old."""
    engine = Engine(llm, max_batch=4, block_size=4, kv_cache_tokens=512, prefill=prefill, prefill_chunk=16)
    old = engine.submit(list(range(10, 20)), greedy(400))
    for _ in range(190):
        engine.step()
    new = engine.submit([5 + (i * 7) % 400 for i in range(300)], greedy(50))
    victims = []
    preempt = engine._preempt
    engine._preempt = lambda r: (victims.append("old" if r is old else "new"), preempt(r))
    run(engine, [old, new])
    assert victims and set(victims) == {"new"}, victims
    assert len(old.generated) == 400 and len(new.generated) == 50


def test_dynamic_rope_scaling_takes_prompts_whole_and_shares_nothing(tiny_dirs, tmp_path):
    """Dynamic NTK rope rescales by the longest position in a pass: chunks and shared blocks would change
    the keys, so such a model is served with whole prompts and no prefix cache."""
    import json
    import shutil

    path = tmp_path / "dyn"
    shutil.copytree(tiny_dirs["tiny-llama"], path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "dynamic", "factor": 4.0}
    (path / "config.json").write_text(json.dumps(cfg))
    dyn = llmkit.load(path)
    engine = Engine(dyn, block_size=4, prefill_chunk=8)
    assert engine.prefill == "serial" and not engine.pool.prefix_cache


def test_new_prompts_are_prefilled_together_in_passes_of_similar_length(llm, monkeypatch):
    from llmkit.infer.blocks import padded_passes

    assert padded_passes([20, 1500, 30, 25, 1400, 200]) == [[0, 3, 2], [5], [4, 1]]  # never a 20 padded to 1500
    assert padded_passes([8, 8, 8]) == [[0, 1, 2]] and padded_passes([5]) == [[0]]
    prompts = [SHORT, "def f():", "class A:", "x = 2\nz ="]
    alone = [llm.complete([p], max_new_tokens=6, temperature=0, ignore_eos=True)[0].token_ids for p in prompts]
    engine = Engine(llm, max_batch=8, block_size=4, prefix_cache=False)
    # the decode pass through the model's forward too (not the C++ step), so that every pass is counted here
    monkeypatch.setattr(DecodeStep, "for_pool", classmethod(lambda cls, model, pool: None))
    passes = []
    forward = type(llm.model).forward
    monkeypatch.setattr(type(llm.model), "forward", lambda self, ids, **kw: passes.append(ids.shape) or
                        forward(self, ids, **kw))
    reqs = [engine.submit(llm.tokenize(p), greedy(6)) for p in prompts]
    engine.step()
    assert passes == [(4, max(len(llm.tokenize(p)) for p in prompts)), (4, 1)]  # one prefill pass, one decode pass
    run(engine, reqs)
    assert [r.generated for r in reqs] == alone
