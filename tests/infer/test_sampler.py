"""The one `Sampler`: what each path (static loop, engine, speculative decoding) asks of it — the
chosen tokens, the distribution they are drawn from, stop ids, log-probs and per-row grammars —
on hand-made logits."""

from __future__ import annotations

import math

import torch

from llmkit.infer.sampling import GenerationConfig, Sampler, sample, stop_token_ids

NEG_INF = float("-inf")
LOGITS = torch.tensor([[0.0, 2.0, 1.0, -1.0], [3.0, 0.0, 0.5, 0.2]])


def _sampler(rows=2, **kw) -> Sampler:
    return Sampler(GenerationConfig(**kw), 4, "cpu", rows=rows, eos_ids={3})


class Forbid:
    """A stand-in grammar: forbids some tokens, records what it is told was chosen."""

    def __init__(self, banned):
        self.banned, self.accepted = list(banned), []

    def mask(self, logits):
        return logits.index_fill(-1, torch.tensor(self.banned), NEG_INF)

    def accept(self, token):
        self.accepted.append(token)


def test_stop_ids_are_the_requests_and_the_end_tokens_unless_ignored():
    assert stop_token_ids(GenerationConfig(stop_token_ids=[7]), {3, 4}) == {3, 4, 7}
    assert stop_token_ids(GenerationConfig(stop_token_ids=[7], ignore_eos=True), {3, 4}) == {7}
    s = _sampler(stop_token_ids=[1])
    assert s.is_stop(1) and s.is_stop(3) and not s.is_stop(0)


def test_greedy_has_no_generator_and_a_one_hot_distribution():
    s = _sampler(temperature=0, seed=5)
    assert s.generator is None
    assert s.choose(LOGITS).tolist() == [1, 0]
    assert s.distribution(LOGITS).tolist() == [[0, 1, 0, 0], [1, 0, 0, 0]]


def test_seeded_rows_share_one_generator_and_draw_as_one_multinomial():
    gen = GenerationConfig(temperature=0.7, top_k=3, seed=11)
    logits = LOGITS.repeat(50, 1)
    got = Sampler(gen, 4, "cpu", rows=100).choose(logits)
    dropped = torch.tensor([[False, False, False, True], [False, True, False, False]]).repeat(50, 1)
    want = sample((logits / 0.7).masked_fill(dropped, NEG_INF), gen, torch.Generator().manual_seed(11))
    assert torch.equal(got, want)
    assert 3 not in got[0::2].tolist() and 1 not in got[1::2].tolist()  # top-k dropped each row's least likely


def test_distribution_is_what_choose_draws_from():
    s = _sampler(rows=1, temperature=0.5, top_p=0.9)
    p = s.distribution(LOGITS[:1])[0]
    scaled = (LOGITS[0] / 0.5).softmax(-1)  # [0.016, 0.867, 0.117, 0.002]: top-p 0.9 keeps tokens 1 and 2
    kept = scaled * torch.tensor([0, 1, 1, 0])
    torch.testing.assert_close(p, kept / kept.sum())
    draws = [int(s.draw(p)) for _ in range(400)]
    assert set(draws) == {1, 2}


def test_penalties_count_the_chosen_tokens():
    s = _sampler(rows=1, temperature=0, frequency_penalty=5.0)
    assert s.choose(LOGITS[:1]).tolist() == [1]
    assert s.choose(LOGITS[:1]).tolist() == [2]  # token 1 is now 5 lower: 2 - 5 < 1


def test_each_row_has_its_own_grammar_until_released():
    first, second = Forbid([1]), Forbid([0, 2])
    s = Sampler(GenerationConfig(temperature=0), 4, "cpu", rows=2, constraints=[first, second])
    assert s.choose(LOGITS).tolist() == [2, 3]
    assert first.accepted == [2] and second.accepted == [3]
    s.release(1)  # row 1 has finished: its grammar is no longer asked
    assert s.choose(LOGITS).tolist() == [2, 0]
    assert first.accepted == [2, 2] and second.accepted == [3]


def test_logprobs_are_the_models_before_shaping():
    s = _sampler(temperature=0.5, top_k=1, logprobs=True, top_logprobs=2)
    tokens = torch.tensor([2, 1])
    chosen, tops = s.logprobs(LOGITS, tokens)
    logp = LOGITS.log_softmax(-1)
    assert chosen == [logp[0, 2].item(), logp[1, 1].item()]
    assert list(tops[0]) == [1, 2] and math.isclose(tops[1][0], logp[1, 0].item())
    assert _sampler().logprobs(LOGITS, tokens) == (None, None)
