"""Speculative decoding inside the serving engine: each running request drafts tokens (prompt lookup or a
draft model) and the target checks them in the batch's one pass, rows of different draft lengths side
by side; greedy outputs are those of plain decoding, the acceptance rate is counted, and a drafter the
target cannot check (another tokenizer) is refused."""

from __future__ import annotations

import pytest

import llmkit
from llmkit.infer import GenerationConfig
from llmkit.infer.engine import Engine
from llmkit.infer.speculative import SpeculativeError
from llmkit.data.corpus import stdlib_texts

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py

PROMPTS = ["def main():\n    x = 1\n    y = 2\n    def main():", "import os\nimport sys\nimport os\nimport",
           "class Foo:", "x = [1, 2, 3]\ny = [1, 2, 3]\nz = [1, 2,"]


@pytest.fixture(scope="module")
def repetitive(target, tmp_path_factory):
    """A random tiny Llama with the usual small init, which repeats itself: the case prompt lookup is for."""
    from llmkit.pipelines.init import init_model

    return init_model("tiny-llama", tmp_path_factory.mktemp("rep") / "r", tokenizer=target.tokenizer, seed=0)


def greedy(n=24):
    return GenerationConfig(max_new_tokens=n, temperature=0, ignore_eos=True)


def plain(llm, prompts, gens):
    return [llm.complete([p], g)[0].token_ids for p, g in zip(prompts, gens)]


@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_prompt_lookup_in_the_batch_gives_plain_greedy_tokens_in_fewer_passes(repetitive, block_size):
    gens = [greedy(24), greedy(30), greedy(5), greedy(17)]  # budgets that end mid-draft
    expected = plain(repetitive, PROMPTS, gens)
    engine = Engine(repetitive, max_batch=8, block_size=block_size, speculative="prompt-lookup", speculative_k=4)
    got = [c.token_ids for c in engine.generate(PROMPTS, gens)]
    assert got == expected
    assert engine.speculation.proposed > 0 and engine.speculation.accepted / engine.speculation.proposed > 0.5
    assert engine.steps < max(len(t) for t in expected) * 0.75  # several tokens per pass
    stats = engine.stats()
    assert stats["speculative"] and stats["draft_acceptance_rate"] == engine.speculation.accepted / engine.speculation.proposed
    assert engine.pool.num_free == engine.pool.num_blocks - 1  # every block back (the rejected drafts' too)


@pytest.mark.parametrize("which", ["other", "itself"])
def test_a_draft_model_in_the_batch_gives_plain_greedy_tokens(target, draft, which):
    drafter = draft if which == "other" else target
    gens = [greedy(20), greedy(9), greedy(20), greedy(14)]
    expected = plain(target, PROMPTS, gens)
    engine = Engine(target, max_batch=4, block_size=4, speculative=drafter, speculative_k=3)
    assert [c.token_ids for c in engine.generate(PROMPTS, gens)] == expected
    assert engine.speculation.proposed > 0
    if which == "itself":  # the target drafting for itself is always right
        assert engine.speculation.accepted == engine.speculation.proposed
    else:
        assert engine.speculation.accepted < engine.speculation.proposed  # the rejection path ran


def test_a_draft_model_under_cache_pressure_drops_its_drafts_and_keeps_going(target, draft):
    """A pool too small for both requests' drafts: drafts are dropped (or a request preempted) before they are
    checked, and the draft's own cache must forget them too."""
    from llmkit.infer.blocks import BlockPool

    prompts = ["def main():\n    x = 1", "import os\nimport sys"]
    gen = greedy(30)
    expected = plain(target, prompts, [gen, gen])
    engine = Engine(target, max_batch=2, block_size=4, speculative=draft, speculative_k=3)
    engine.pool = BlockPool(target.config, 12, 4)  # 11 usable blocks: 44 tokens for two requests of ~40 each
    assert [c.token_ids for c in engine.generate(prompts, gen)] == expected
    assert engine.speculation.proposed > 0


def test_requests_that_cannot_speculate_decode_plainly_beside_those_that_do(repetitive):
    logprobs = GenerationConfig(max_new_tokens=12, temperature=0, ignore_eos=True, logprobs=True)
    penalty = GenerationConfig(max_new_tokens=12, temperature=0, ignore_eos=True, repetition_penalty=1.3)
    gens = [greedy(16), logprobs, penalty, greedy(16)]
    expected = plain(repetitive, PROMPTS, gens)
    engine = Engine(repetitive, max_batch=4, block_size=4, speculative="prompt-lookup")
    reqs = [engine.submit(repetitive.tokenize(p), g) for p, g in zip(PROMPTS, gens)]
    assert [r.speculate for r in reqs] == [True, False, False, True]
    while not all(r.done.is_set() for r in reqs):
        engine.step()
    assert [r.generated for r in reqs] == expected
    assert len(reqs[1].logprobs) == 12 and engine.speculation.accepted > 0


def test_sampled_requests_speculate_and_end_at_their_budget(repetitive):
    gens = [GenerationConfig(max_new_tokens=20, temperature=0.8, top_k=10, seed=s, ignore_eos=True) for s in range(3)]
    engine = Engine(repetitive, max_batch=4, block_size=4, speculative="prompt-lookup")
    out = engine.generate(PROMPTS[:3], gens)
    assert [len(c.token_ids) for c in out] == [20, 20, 20] and engine.speculation.proposed > 0
    again = Engine(repetitive, max_batch=4, block_size=4, speculative="prompt-lookup").generate(PROMPTS[:3], gens)
    assert [c.token_ids for c in again] == [c.token_ids for c in out]  # seeded: reproducible


def test_a_draft_with_another_tokenizer_or_a_seq2seq_target_is_refused(target, tiny_t5_dir, tmp_path):
    from llmkit.pipelines.init import init_model

    size = target.config.vocab_size
    other = init_model("tiny-llama", tmp_path / "o", vocab_size=300, texts=stdlib_texts(50_000), seed=2)
    with pytest.raises(SpeculativeError, match=rf"draft's vocabulary \(300 tokens.*target's \({size} tokens"):
        Engine(target, speculative=other)
    # the same size, other tokens: a vocabulary is compared token by token, not by its size
    same_size = init_model("tiny-llama", tmp_path / "s", vocab_size=size, texts=[t[::-1] for t in stdlib_texts(100_000)], seed=2)
    assert same_size.config.vocab_size == size
    with pytest.raises(SpeculativeError, match=r"token \d+ is .* in the draft's vocabulary but .* in the target's"):
        Engine(target, speculative=same_size)
    with pytest.raises(SpeculativeError, match="at least one"):
        Engine(target, speculative="prompt-lookup", speculative_k=0)
    with pytest.raises(SpeculativeError, match="decoder-only"):
        Engine(llmkit.load(tiny_t5_dir), speculative="prompt-lookup")
