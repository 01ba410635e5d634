"""Sampling: GenerationConfig validation, the logits processors, their order and the sampler.

Every expected value is computed by hand (or by a direct formula in the test) from small
hand-made distributions.
"""

from __future__ import annotations

import math

import pytest
import torch

from llmkit.infer.sampling import (
    GenerationConfig,
    GenerationConfigError,
    SamplingState,
    build_processors,
    min_p,
    presence_frequency_penalty,
    repetition_penalty,
    sample,
    temperature,
    top_k,
    top_p,
)

NEG_INF = float("-inf")


def _state(batch: int, vocab: int, track_prompt: bool = True) -> SamplingState:
    return SamplingState(batch, vocab, torch.device("cpu"), track_prompt=track_prompt)


def _kept(logits: torch.Tensor) -> list[int]:
    """Indices of the finite entries of a 1-D logits row."""
    return [i for i, v in enumerate(logits.tolist()) if v != NEG_INF]


def _apply(procs, logits, state):
    for proc in procs:
        logits = proc(logits, state)
    return logits


# ----------------------------------------------------------------------------- top-k

@pytest.mark.parametrize("k, expected", [(1, [1, 3]), (2, [1, 3]), (3, [1, 2, 3]), (4, [0, 1, 2, 3]),
                                         (5, [0, 1, 2, 3, 4]), (6, [0, 1, 2, 3, 4]), (100, [0, 1, 2, 3, 4])])
def test_top_k_keeps_the_k_largest_with_ties(k, expected):
    logits = torch.tensor([[1.0, 5.0, 3.0, 5.0, 0.0]])
    out = top_k(k)(logits, _state(1, 5))
    assert _kept(out[0]) == expected
    # kept logits are untouched
    for i in expected:
        assert out[0, i].item() == logits[0, i].item()


def test_top_k_k2_keeps_exactly_the_two_fives():
    out = top_k(2)(torch.tensor([[1.0, 5.0, 3.0, 5.0, 0.0]]), _state(1, 5))
    assert out[0].tolist() == [NEG_INF, 5.0, NEG_INF, 5.0, NEG_INF]


def test_top_k_rows_are_independent():
    logits = torch.tensor([[1.0, 5.0, 3.0, 5.0, 0.0],
                           [9.0, 0.0, 8.0, -1.0, 7.0],
                           [0.0, 0.0, 0.0, 0.0, 1.0]])
    out = top_k(2)(logits, _state(3, 5))
    assert _kept(out[0]) == [1, 3]
    assert _kept(out[1]) == [0, 2]
    assert _kept(out[2]) == [0, 1, 2, 3, 4]  # the 2nd largest value (0) is tied by four tokens
    # each row's result equals the row processed on its own
    for r in range(3):
        assert torch.equal(out[r], top_k(2)(logits[r:r + 1], _state(1, 5))[0])


# ----------------------------------------------------------------------------- top-p

TOP_P_PROBS = [0.5, 0.3, 0.15, 0.05]


@pytest.mark.parametrize("p, expected", [(0.5, [0]), (0.8, [0, 1]), (0.81, [0, 1, 2]), (0.3, [0]),
                                         (0.51, [0, 1]), (0.96, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])])
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    logits = torch.tensor([TOP_P_PROBS]).log()
    out = top_p(p)(logits, _state(1, 4))
    assert _kept(out[0]) == expected
    assert torch.equal(out[0, expected], logits[0, expected])


@pytest.mark.parametrize("p", [1e-9, 1e-3, 0.1])
def test_top_p_always_keeps_the_top_token(p):
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [-5.0, -4.0, -4.5, -6.0]])
    out = top_p(p)(logits, _state(2, 4))
    assert _kept(out[0]) == [1]
    assert _kept(out[1]) == [1]


def test_top_p_is_independent_of_vocab_order():
    base = torch.tensor(TOP_P_PROBS).log()
    kept_base = {0, 1}  # p = 0.8 keeps 0.5 and 0.3
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        perm = torch.randperm(4, generator=g)
        shuffled = base[perm][None]
        out = top_p(0.8)(shuffled, _state(1, 4))
        kept_original_ids = {perm[i].item() for i in _kept(out[0])}
        assert kept_original_ids == kept_base


def test_top_p_rows_are_independent():
    logits = torch.tensor([TOP_P_PROBS, list(reversed(TOP_P_PROBS))]).log()
    out = top_p(0.8)(logits, _state(2, 4))
    assert _kept(out[0]) == [0, 1]
    assert _kept(out[1]) == [2, 3]


# ----------------------------------------------------------------------------- min-p

def test_min_p_threshold_relative_to_the_top_probability():
    logits = torch.tensor([[0.6, 0.25, 0.1, 0.05]]).log()
    out = min_p(0.2)(logits, _state(1, 4))  # threshold 0.2 * 0.6 = 0.12
    assert _kept(out[0]) == [0, 1]
    assert torch.equal(out[0, :2], logits[0, :2])


def test_min_p_other_thresholds_and_rows():
    logits = torch.tensor([[0.6, 0.25, 0.1, 0.05],
                           [0.05, 0.1, 0.25, 0.6]]).log()
    # 0.1 * 0.6 = 0.06: drops only 0.05 in each row
    out = min_p(0.1)(logits, _state(2, 4))
    assert _kept(out[0]) == [0, 1, 2]
    assert _kept(out[1]) == [1, 2, 3]
    # 0.5 * 0.6 = 0.3: keeps only the top token
    out = min_p(0.5)(logits, _state(2, 4))
    assert _kept(out[0]) == [0]
    assert _kept(out[1]) == [3]


def test_min_p_is_relative_not_absolute():
    # probs [0.4, 0.3, 0.2, 0.1], min_p 0.3 -> threshold 0.3 * 0.4 = 0.12 keeps three tokens
    # (an absolute threshold of 0.3 would keep only two)
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    assert _kept(min_p(0.3)(logits, _state(1, 4))[0]) == [0, 1, 2]
    # a flat distribution over 20 tokens (p = 0.05 each) keeps everything for any min_p < 1
    flat = torch.zeros(1, 20)
    assert _kept(min_p(0.9)(flat, _state(1, 20))[0]) == list(range(20))
    # the top token is always kept
    peaked = torch.tensor([[0.0, 0.1, 0.2, 5.0]])
    assert _kept(min_p(0.99)(peaked, _state(1, 4))[0]) == [3]


# ----------------------------------------------------------------------------- temperature

@pytest.mark.parametrize("t", [0.25, 0.5, 1.0, 2.0, 7.0])
def test_temperature_softmax_matches_formula(t):
    raw = [2.0, -1.0, 0.5, 0.0]
    out = temperature(t)(torch.tensor([raw], dtype=torch.float64), _state(1, 4))
    probs = out.softmax(-1)[0].tolist()
    z = sum(math.exp(x / t) for x in raw)
    expected = [math.exp(x / t) / z for x in raw]
    assert probs == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_small_temperature_approaches_argmax():
    raw = torch.tensor([[1.0, 1.5, 1.4, -2.0]])
    probs = temperature(1e-3)(raw, _state(1, 4)).softmax(-1)[0]
    assert probs[1].item() > 1 - 1e-6
    assert probs.argmax().item() == 1
    # higher temperatures are flatter
    p_hot = temperature(10.0)(raw, _state(1, 4)).softmax(-1)[0]
    assert p_hot.max().item() < 0.3


# ----------------------------------------------------------------------------- repetition penalty

def test_repetition_penalty_on_generated_tokens():
    st = _state(1, 5)
    logits = torch.tensor([[2.0, -2.0, 3.0, -1.0, 4.0]])
    # nothing seen yet: unchanged
    assert torch.equal(repetition_penalty(2.0)(logits, st), logits)
    st.add_tokens(torch.tensor([0]))
    st.add_tokens(torch.tensor([1]))
    out = repetition_penalty(2.0)(logits, st)
    assert out[0].tolist() == [1.0, -4.0, 3.0, -1.0, 4.0]


def test_repetition_penalty_counts_prompt_tokens_without_mask():
    st = _state(2, 6)
    st.add_prompt(torch.tensor([[0, 3, 3], [5, 1, 2]]), None)
    logits = torch.tensor([[3.0, 3.0, -3.0, -3.0, 1.0, 0.5],
                           [3.0, 3.0, -3.0, -3.0, 1.0, 0.5]])
    out = repetition_penalty(1.5)(logits, st)
    assert out[0].tolist() == pytest.approx([2.0, 3.0, -3.0, -4.5, 1.0, 0.5])
    assert out[1].tolist() == pytest.approx([3.0, 2.0, -4.5, -3.0, 1.0, 0.5 / 1.5])


def test_repetition_penalty_ignores_padded_prompt_positions():
    st = _state(2, 6)
    # left padding with pad id 4: row 0 has two pad positions, row 1 none
    ids = torch.tensor([[4, 4, 1, 2], [0, 1, 2, 3]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    st.add_prompt(ids, mask)
    logits = torch.full((2, 6), 2.0)
    out = repetition_penalty(2.0)(logits, st)
    assert out[0].tolist() == [2.0, 1.0, 1.0, 2.0, 2.0, 2.0]  # token 4 (padding) not penalised
    assert out[1].tolist() == [1.0, 1.0, 1.0, 1.0, 2.0, 2.0]


def test_repetition_penalty_pad_id_that_is_also_a_real_token_counts():
    st = _state(1, 4)
    st.add_prompt(torch.tensor([[0, 0, 0, 2]]), torch.tensor([[0, 0, 1, 1]]))
    out = repetition_penalty(2.0)(torch.full((1, 4), 2.0), st)
    assert out[0].tolist() == [1.0, 2.0, 1.0, 2.0]


def test_repetition_penalty_prompt_and_generated_tokens_combine():
    st = _state(1, 5)
    st.add_prompt(torch.tensor([[1]]), None)
    st.add_tokens(torch.tensor([3]))
    st.add_tokens(torch.tensor([3]))  # seen twice: still penalised once
    out = repetition_penalty(4.0)(torch.tensor([[8.0, 8.0, 8.0, -8.0, 8.0]]), st)
    assert out[0].tolist() == [8.0, 2.0, 8.0, -32.0, 8.0]


def test_sampling_state_add_tokens_per_row():
    st = _state(2, 4)
    st.add_tokens(torch.tensor([1, 3]))
    st.add_tokens(torch.tensor([1, 0]))
    assert st.counts.tolist() == [[0, 2, 0, 0], [1, 0, 0, 1]]
    assert st.seen.tolist() == [[False, True, False, False], [True, False, False, True]]


def test_sampling_state_without_prompt_tracking():
    st = _state(1, 3, track_prompt=False)
    assert st.seen is None
    st.add_prompt(torch.tensor([[0, 1]]), None)  # no-op
    st.add_tokens(torch.tensor([2]))
    assert st.counts.tolist() == [[0, 0, 1]]


# ----------------------------------------------------------------------------- presence / frequency

@pytest.mark.parametrize("presence, frequency", [(0.5, 0.25), (1.0, 0.0), (0.0, 0.7), (-0.5, 0.3)])
def test_presence_frequency_penalty_exact_change(presence, frequency):
    st = _state(1, 6)
    for tok in [2, 4, 2, 2]:  # token 2 three times, token 4 once
        st.add_tokens(torch.tensor([tok]))
    logits = torch.tensor([[1.0, -2.0, 3.0, 0.5, 0.0, 4.0]], dtype=torch.float64)
    out = presence_frequency_penalty(presence, frequency)(logits, st)
    counts = [0, 0, 3, 0, 1, 0]
    expected = [x - presence * (c > 0) - frequency * c for x, c in zip(logits[0].tolist(), counts)]
    assert out[0].tolist() == pytest.approx(expected, abs=1e-12)
    assert out.dtype == torch.float64


def test_presence_frequency_penalty_rows_and_prompt_ignored():
    st = _state(2, 3)
    st.add_prompt(torch.tensor([[0, 0], [1, 1]]), None)  # prompt does not count for these penalties
    st.add_tokens(torch.tensor([1, 2]))
    out = presence_frequency_penalty(1.0, 2.0)(torch.zeros(2, 3), st)
    assert out.tolist() == [[0.0, -3.0, 0.0], [0.0, 0.0, -3.0]]


# ----------------------------------------------------------------------------- build_processors

def test_build_processors_defaults_are_identity():
    assert build_processors(GenerationConfig()) == []


def test_greedy_ignores_top_k_top_p_min_p():
    gen = GenerationConfig(temperature=0.0, top_k=1, top_p=0.1, min_p=0.9)
    logits = torch.tensor([[1.0, 3.0, 2.9, -1.0]])
    out = _apply(build_processors(gen), logits, _state(1, 4))
    assert torch.equal(out, logits)
    assert sample(out, gen).tolist() == [1]


def test_greedy_still_applies_penalties():
    gen = GenerationConfig(temperature=0.0, presence_penalty=1.0, top_k=1)
    st = _state(1, 3)
    st.add_tokens(torch.tensor([1]))
    logits = torch.tensor([[2.5, 3.0, 0.0]])
    out = _apply(build_processors(gen), logits, st)
    assert out.tolist() == [[2.5, 2.0, 0.0]]  # no top-k masking, penalty applied
    assert sample(out, gen).tolist() == [0]


def test_build_processors_shaping_applies_when_sampling():
    gen = GenerationConfig(temperature=1.0, top_k=2)
    out = _apply(build_processors(gen), torch.tensor([[1.0, 5.0, 3.0, 0.0]]), _state(1, 4))
    assert _kept(out[0]) == [1, 2]


def test_build_processors_penalty_before_top_k():
    # logits [5, 4, 1]; token 0 already generated; presence 2 makes it 3 < 4,
    # so top-1 must keep token 1. top-k before the penalty would keep token 0.
    gen = GenerationConfig(presence_penalty=2.0, top_k=1)
    st = _state(1, 3)
    st.add_tokens(torch.tensor([0]))
    out = _apply(build_processors(gen), torch.tensor([[5.0, 4.0, 1.0]]), st)
    assert out[0].tolist() == [NEG_INF, 4.0, NEG_INF]


def test_build_processors_penalty_before_temperature():
    # (x - 1) / 0.5 vs x / 0.5 - 1 differ for the penalised token
    gen = GenerationConfig(presence_penalty=1.0, temperature=0.5)
    st = _state(1, 2)
    st.add_tokens(torch.tensor([0]))
    out = _apply(build_processors(gen), torch.tensor([[3.0, 1.0]]), st)
    assert out[0].tolist() == pytest.approx([(3.0 - 1.0) / 0.5, 1.0 / 0.5])


def test_build_processors_temperature_before_top_p():
    # probs [0.5, 0.3, 0.15, 0.05] at T = 0.5 become proportional to their squares:
    # [0.25, 0.09, 0.0225, 0.0025] / 0.365 -> top token has 0.685 >= 0.6, so top-p keeps it alone.
    # Top-p before temperature would keep two tokens (0.5 < 0.6).
    probs = [0.5, 0.3, 0.15, 0.05]
    squares = [q * q for q in probs]
    assert squares[0] / sum(squares) > 0.6
    gen = GenerationConfig(temperature=0.5, top_p=0.6)
    out = _apply(build_processors(gen), torch.tensor([probs]).log(), _state(1, 4))
    assert _kept(out[0]) == [0]
    # sanity: at T = 1 the same top-p keeps two
    out1 = _apply(build_processors(gen.replace(temperature=1.0)), torch.tensor([probs]).log(), _state(1, 4))
    assert _kept(out1[0]) == [0, 1]


def test_build_processors_repetition_penalty_uses_prompt():
    gen = GenerationConfig(repetition_penalty=2.0)
    st = _state(1, 3, track_prompt=True)
    st.add_prompt(torch.tensor([[2]]), None)
    out = _apply(build_processors(gen), torch.tensor([[1.0, 1.0, 1.0]]), st)
    assert out.tolist() == [[1.0, 1.0, 0.5]]


# ----------------------------------------------------------------------------- sample

def test_sample_greedy_is_argmax_per_row():
    logits = torch.tensor([[0.1, 0.9, 0.3], [5.0, -1.0, 4.9], [-3.0, -2.0, -1.0]])
    assert sample(logits, GenerationConfig(temperature=0)).tolist() == [1, 0, 2]


def test_sample_is_reproducible_with_seeded_generator():
    logits = torch.zeros(64, 10)
    gen = GenerationConfig()
    a = sample(logits, gen, torch.Generator().manual_seed(1234))
    b = sample(logits, gen, torch.Generator().manual_seed(1234))
    assert torch.equal(a, b)
    c = sample(logits, gen, torch.Generator().manual_seed(4321))
    assert not torch.equal(a, c)  # 64 uniform draws over 10 tokens: equal by chance has prob 1e-64
    assert a.shape == (64,) and a.dtype == torch.long


def test_sample_empirical_frequencies_match_softmax():
    probs = [0.1, 0.2, 0.3, 0.4]
    n = 20000
    logits = torch.tensor(probs).log().expand(n, 4).contiguous()
    draws = sample(logits, GenerationConfig(), torch.Generator().manual_seed(7))
    counts = torch.bincount(draws, minlength=4).tolist()
    assert sum(counts) == n
    chi2 = sum((c - n * q) ** 2 / (n * q) for c, q in zip(counts, probs))
    assert chi2 < 27.9  # chi-square, 3 degrees of freedom, p = 1e-5
    for c, q in zip(counts, probs):
        sigma = math.sqrt(n * q * (1 - q))
        assert abs(c - n * q) < 4 * sigma


def test_sample_uses_logits_not_probs():
    # logits [0, log 3] -> probs [0.25, 0.75]; if raw logits were used as weights token 0 would never
    # be drawn (weight 0), so its frequency tells them apart.
    n = 20000
    logits = torch.tensor([0.0, math.log(3.0)]).expand(n, 2).contiguous()
    draws = sample(logits, GenerationConfig(), torch.Generator().manual_seed(3))
    freq0 = (draws == 0).float().mean().item()
    assert abs(freq0 - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)


def test_sample_never_draws_masked_tokens():
    n = 5000
    logits = torch.tensor([[NEG_INF, 0.0, NEG_INF, 0.0, NEG_INF]]).expand(n, 5).contiguous()
    draws = sample(logits, GenerationConfig(), torch.Generator().manual_seed(0))
    assert set(draws.tolist()) <= {1, 3}
    assert set(draws.tolist()) == {1, 3}


def test_sample_after_top_k_never_draws_dropped_tokens():
    n = 5000
    logits = torch.tensor([[1.0, 1.2, 1.1, 0.9]]).expand(n, 4).contiguous()
    shaped = top_k(2)(logits, _state(n, 4))
    draws = sample(shaped, GenerationConfig(), torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1, 2}


def test_sample_low_precision_logits():
    logits = torch.tensor([[0.0, 10.0, NEG_INF]], dtype=torch.bfloat16).expand(100, 3).contiguous()
    draws = sample(logits, GenerationConfig(), torch.Generator().manual_seed(0))
    assert 2 not in draws.tolist()


# ----------------------------------------------------------------------------- GenerationConfig

@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1),
    ("temperature", -1.0),
    ("top_p", 0.0),
    ("top_p", 1.5),
    ("top_p", -0.2),
    ("min_p", 1.0),
    ("min_p", -0.1),
    ("max_new_tokens", -1),
    ("max_new_tokens", 2.5),
    ("top_k", -1),
    ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0),
    ("top_logprobs", -1),
    ("stop", [""]),
    ("stop", ""),
    ("stop", ["ok", ""]),
])
def test_generation_config_invalid_values_name_the_field(field, value):
    with pytest.raises(GenerationConfigError) as info:
        GenerationConfig(**{field: value})
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("field, value", [
    ("temperature", 0.0), ("top_p", 1.0), ("top_p", 1e-6), ("min_p", 0.0), ("min_p", 0.999),
    ("max_new_tokens", 0), ("top_k", 0), ("repetition_penalty", 0.5),
])
def test_generation_config_boundary_values_accepted(field, value):
    assert getattr(GenerationConfig(**{field: value}), field) == value


def test_generation_config_replace_validates():
    gen = GenerationConfig()
    with pytest.raises(GenerationConfigError, match="top_p"):
        gen.replace(top_p=2.0)
    assert gen.replace(top_p=0.5).top_p == 0.5
    assert gen.top_p == 1.0  # original unchanged


def test_generation_config_stop_string_becomes_list():
    assert GenerationConfig(stop="x").stop == ["x"]
    assert GenerationConfig(stop=["a", "bc"]).stop == ["a", "bc"]
    assert GenerationConfig().stop == []
    assert GenerationConfig.from_kwargs(stop="</s>").stop == ["</s>"]


def test_generation_config_defaults_do_not_share_lists():
    a, b = GenerationConfig(), GenerationConfig()
    a.stop.append("x")
    assert b.stop == []


def test_from_kwargs_rejects_unknown_keys_naming_them():
    with pytest.raises(GenerationConfigError) as info:
        GenerationConfig.from_kwargs(temprature=0.5, max_tokens=3, top_k=2)
    msg = str(info.value)
    assert "temprature" in msg and "max_tokens" in msg


def test_from_kwargs_merges_into_base():
    base = GenerationConfig(temperature=0.3, top_k=5)
    merged = GenerationConfig.from_kwargs(base, top_k=7)
    assert (merged.temperature, merged.top_k) == (0.3, 7)
    assert base.top_k == 5
    assert GenerationConfig.from_kwargs(base) is base
    assert GenerationConfig.from_kwargs() == GenerationConfig()
    with pytest.raises(GenerationConfigError, match="min_p"):
        GenerationConfig.from_kwargs(base, min_p=1.0)
