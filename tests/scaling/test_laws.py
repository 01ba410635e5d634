"""Chinchilla / Kaplan calculators against hand-computed numbers, and the model-size chooser."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from llmkit.scaling import (CHINCHILLA, PF_DAY, ScalingError, chinchilla_loss, choose_model_size, compute_optimal,
                            flops_from_time, kaplan_optimal)


def test_from_flops_matches_hand_computation():
    # N = sqrt(C / (6 * 20)) = sqrt(1e21 / 120) = 2.8868e9, D = 20 N = 5.7735e10
    plan = compute_optimal(flops=1e21)
    assert plan.params == pytest.approx(2.88675e9, rel=1e-5)
    assert plan.tokens == pytest.approx(5.77350e10, rel=1e-5)
    assert plan.flops == pytest.approx(1e21)
    assert plan.tokens_per_param == pytest.approx(20.0)


def test_chinchilla_70b():
    """Hoffmann et al.: Gopher's budget 5.76e23 FLOPs is best spent on ~70B params and ~1.4T tokens."""
    plan = compute_optimal(flops=5.76e23)
    assert plan.params == pytest.approx(70e9, rel=0.02)
    assert plan.tokens == pytest.approx(1.4e12, rel=0.02)
    # and the other way round: Chinchilla's 70B at 20 tokens/param
    back = compute_optimal(params=70e9)
    assert back.tokens == pytest.approx(1.4e12) and back.flops == pytest.approx(5.88e23)


def test_from_params_and_tokens_and_ratio():
    p = compute_optimal(params=1e9)
    assert (p.tokens, p.flops) == (pytest.approx(2e10), pytest.approx(1.2e20))
    t = compute_optimal(tokens=2e10)
    assert t.params == pytest.approx(1e9) and t.flops == pytest.approx(1.2e20)
    r = compute_optimal(flops=6e20, tokens_per_param=100.0)  # N = sqrt(6e20 / 600) = 1e9
    assert r.params == pytest.approx(1e9) and r.tokens == pytest.approx(1e11)


@pytest.mark.parametrize("kwargs", [{}, {"flops": 1e20, "params": 1e9}, {"params": 1e9, "tokens": 1e10},
                                    {"flops": 1e20, "params": 1e9, "tokens": 1e10}])
def test_exactly_one_argument(kwargs):
    with pytest.raises(ScalingError, match="exactly one"):
        compute_optimal(**kwargs)


@pytest.mark.parametrize("kwargs", [{"flops": -1.0}, {"params": 0}, {"tokens": float("nan")},
                                    {"flops": 1e20, "tokens_per_param": 0}])
def test_non_positive_values_are_refused(kwargs):
    with pytest.raises(ScalingError, match="positive"):
        compute_optimal(**kwargs)


def test_time_helpers():
    plan = compute_optimal(flops=3.6e18)
    assert plan.seconds(1e15) == pytest.approx(3600.0)
    assert plan.gpu_hours(1e15) == pytest.approx(1.0)
    # one A100-hour at 312 TFLOP/s bf16 peak and 40% MFU
    assert flops_from_time(3600, 312e12, mfu=0.4) == pytest.approx(4.4928e17)
    assert flops_from_time(10, 1e12, devices=8) == pytest.approx(8e13)
    with pytest.raises(ScalingError, match="mfu"):
        flops_from_time(10, 1e12, mfu=1.5)
    with pytest.raises(ScalingError, match="throughput_flops"):
        plan.seconds(0)


def test_kaplan():
    # 1 PF-day -> 1.3e9 non-embedding params; x10 compute -> x10^0.73 params
    one = kaplan_optimal(PF_DAY)
    assert one.params == pytest.approx(1.3e9)
    assert one.flops == pytest.approx(6 * one.params * one.tokens)
    assert kaplan_optimal(10 * PF_DAY).params / one.params == pytest.approx(10 ** 0.73)
    # Kaplan puts far more of a big budget into parameters than Chinchilla
    assert kaplan_optimal(1e23).params > 5 * compute_optimal(flops=1e23).params


def test_chinchilla_parametric_law():
    n, d = 70e9, 1.4e12
    assert chinchilla_loss(n, d) == pytest.approx(1.69 + 406.4 / n ** 0.34 + 410.7 / d ** 0.28)
    # its optimum: N_opt = G (C/6)^(β/(α+β)), G = (αA/(βB))^(1/(α+β)), worked out by hand for 5.76e23
    g = (0.34 * 406.4 / (0.28 * 410.7)) ** (1 / 0.62)
    opt = CHINCHILLA.optimal(5.76e23)
    assert g == pytest.approx(1.3436, rel=1e-3)
    assert opt.params == pytest.approx(g * (5.76e23 / 6) ** (0.28 / 0.62), rel=1e-9)
    assert opt.params == pytest.approx(3.22e10, rel=0.01)  # the printed constants favour ~32B, ~3T tokens
    assert opt.flops == pytest.approx(6 * opt.params * opt.tokens)
    # it is a minimum along the iso-FLOP line
    best = chinchilla_loss(opt.params, opt.tokens)
    for f in (0.5, 0.8, 1.25, 2.0):
        assert chinchilla_loss(opt.params * f, opt.tokens / f) > best
    # the exponent of N_opt in C
    assert math.log(CHINCHILLA.optimal(1e24).params / CHINCHILLA.optimal(1e22).params, 100) == \
        pytest.approx(0.28 / 0.62)


class _Candidate:
    def __init__(self, n: int):
        self.n = n

    def num_parameters(self, embeddings: bool = True) -> int:
        return self.n if embeddings else self.n // 2


def test_choose_model_size_from_flops_per_second():
    cands = [_Candidate(1_000_000), _Candidate(4_000_000), _Candidate(16_000_000)]
    # C = 1e12 FLOP/s * 600 s = 6e14 -> N_opt = sqrt(6e14 / 120) = 2.236e6: 4e6 is nearer in log space
    choice = choose_model_size(600, 1e12, cands)
    assert choice.candidate is cands[1]
    assert choice.flops == pytest.approx(6e14)
    assert choice.optimal.params == pytest.approx(2.2361e6, rel=1e-4)
    assert choice.tokens == pytest.approx(6e14 / (6 * 4e6))
    # ten times the budget: N_opt = 7.07e6, nearer 4e6 than 16e6 in log space; 100x: 2.2e7 -> 16e6
    assert choose_model_size(6000, 1e12, cands).candidate is cands[1]
    assert choose_model_size(60000, 1e12, cands).candidate is cands[2]
    # the non-embedding count halves N here
    assert choose_model_size(600, 1e12, cands, embeddings=False).params == 2_000_000


def test_choose_model_size_from_tokens_per_second_and_real_configs():
    from llmkit.models import preset

    cands = [preset("tiny-llama", dim=d, n_layers=layers, n_heads=4, n_kv_heads=2, hidden_dim=3 * d)
             for d, layers in ((64, 2), (128, 4), (256, 6), (512, 8))]
    rate = 2e10  # model FLOP/s, the same for all: tokens/s = rate / (6 N)
    by_flops = choose_model_size(300, rate, cands)
    by_tokens = choose_model_size(300, lambda c: rate / (6 * c.num_parameters()), cands)
    assert by_flops.candidate is by_tokens.candidate
    assert by_flops.tokens == pytest.approx(by_tokens.tokens)
    assert 0.25 < by_flops.tokens_per_param / 20 < 4  # within a factor of the candidates' spacing
    with pytest.raises(ScalingError, match="empty"):
        choose_model_size(300, rate, [])


def test_choose_model_size_sizes_a_mixture_of_experts_by_its_active_parameters():
    """C = 6·N·D holds for the parameters a token passes through: a mixture of experts gets the tokens
    its compute buys (its FLOPs per token follow its active count), not those of all its experts."""
    from llmkit.models import Transformer, preset
    from llmkit.models.moe import MoE

    moe = preset("tiny-mixtral", n_experts=8, experts_per_token=2)
    model = Transformer(moe)
    expert = next(m for m in model.modules() if isinstance(m, MoE)).experts[0]
    active = sum(p.numel() for p in model.parameters()) - moe.n_layers * 6 * sum(p.numel() for p in expert.parameters())
    choice = choose_model_size(600, 1e12, [moe])
    assert choice.params == active
    assert choice.tokens == pytest.approx(6e14 / (6 * active))
    # tokens/s measured from the FLOPs per token, as quickstart does: the same D either way
    rate = choose_model_size(600, lambda c: 1e12 / (6 * c.num_parameters(active=True)), [moe])
    assert rate.tokens == pytest.approx(choice.tokens) and rate.flops == pytest.approx(6e14)


def test_scaling_imports_no_other_room_and_no_torch():
    code = ("import sys, llmkit.scaling; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib') "
            "or (m.startswith('llmkit.') and not m.startswith('llmkit.scaling'))]; "
            "sys.exit(', '.join(bad) or None)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, f"llmkit.scaling pulled in: {r.stderr.strip()}"
