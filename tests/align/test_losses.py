"""The alignment losses on hand-computed values and their known properties (the trl comparison
is in test_trl_parity.py)."""

from __future__ import annotations

import math

import pytest
import torch

from llmkit.align.losses import (bradley_terry_loss, dpo_loss, gae, group_advantages, kl_per_token,
                                 ppo_policy_loss, ppo_value_loss, sequence_logps)


def t(*v):
    return torch.tensor(v, dtype=torch.float64)


def test_dpo_and_ipo_by_hand():
    # h = (-1 - -3) - (-2 - -2.5) = 2 - 0.5 = 1.5
    out = dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.5), beta=0.2)
    assert out.loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.3))))
    assert out.chosen_rewards.item() == pytest.approx(0.2 * (-1 + 2)) and out.rejected_rewards.item() == pytest.approx(0.2 * (-3 + 2.5))
    smooth = dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.5), beta=0.2, label_smoothing=0.1)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert smooth.loss.item() == pytest.approx(-0.9 * math.log(sig(0.3)) - 0.1 * math.log(sig(-0.3)))
    ipo = dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.5), beta=0.2, loss="ipo")
    assert ipo.loss.item() == pytest.approx((1.5 - 1 / 0.4) ** 2)


def test_dpo_is_log2_when_the_policy_is_the_reference():
    g = torch.Generator().manual_seed(0)
    pc, pr = -torch.rand(8, generator=g, dtype=torch.float64) * 20, -torch.rand(8, generator=g, dtype=torch.float64) * 20
    out = dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=0.5)
    torch.testing.assert_close(out.loss, torch.full_like(pc, math.log(2)))
    assert (out.chosen_rewards == 0).all() and (out.rejected_rewards == 0).all()


def test_dpo_gradient_pushes_chosen_up_and_rejected_down():
    pc, pr = t(-4.0, -1.0).requires_grad_(), t(-2.0, -6.0).requires_grad_()
    dpo_loss(pc, pr, t(-4.0, -1.0), t(-2.0, -6.0), beta=0.1).loss.sum().backward()
    # at h = 0 the gradient is -beta * sigmoid(0) = -0.05 for chosen, +0.05 for rejected
    torch.testing.assert_close(pc.grad, t(-0.05, -0.05))
    torch.testing.assert_close(pr.grad, t(0.05, 0.05))
    with pytest.raises(ValueError, match="loss='hinge'"):
        dpo_loss(pc, pr, pc, pr, loss="hinge")
    with pytest.raises(ValueError, match="beta=0"):
        dpo_loss(pc, pr, pc, pr, beta=0)


def test_bradley_terry_by_hand():
    loss = bradley_terry_loss(t(2.0, 0.0), t(1.0, 0.0))
    torch.testing.assert_close(loss, t(math.log(1 + math.exp(-1)), math.log(2)))
    torch.testing.assert_close(bradley_terry_loss(t(2.0), t(1.0), margin=1.0), t(math.log(2)))


def test_sequence_logps_counts_only_labelled_positions():
    logits = torch.log(t(0.5, 0.25, 0.25)).expand(1, 3, 3).clone()
    labels = torch.tensor([[0, -100, 2]])
    assert sequence_logps(logits, labels).item() == pytest.approx(math.log(0.5) + math.log(0.25))
    assert sequence_logps(logits, labels, average=True).item() == pytest.approx((math.log(0.5) + math.log(0.25)) / 2)


def test_kl_estimators_are_zero_at_the_start():
    lp = -torch.rand(5, dtype=torch.float64)
    assert (kl_per_token(lp, lp) == 0).all() and (kl_per_token(lp, lp, "k3") == 0).all()
    assert kl_per_token(t(-1.0), t(-2.0)).item() == 1.0
    assert kl_per_token(t(-1.0), t(-2.0), "k3").item() == pytest.approx(math.exp(-1) + 1 - 1)


def test_gae_by_hand():
    # one episode of 3 tokens (then padding), gamma 0.9, lambda 0.8
    rewards, values = t(0.0, 0.0, 1.0, 5.0)[None], t(0.5, 0.4, 0.3, 9.0)[None]
    mask = torch.tensor([[1, 1, 1, 0]])
    d2 = 1.0 - 0.3  # last token: no next value
    d1 = 0.0 + 0.9 * 0.3 - 0.4
    d0 = 0.0 + 0.9 * 0.4 - 0.5
    a2 = d2
    a1 = d1 + 0.9 * 0.8 * a2
    a0 = d0 + 0.9 * 0.8 * a1
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, t(a0, a1, a2, 0.0)[None])
    torch.testing.assert_close(ret, t(a0 + 0.5, a1 + 0.4, a2 + 0.3, 0.0)[None])
    # lambda 1, gamma 1: advantages are the return-to-go minus the value
    adv, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, t(1 - 0.5, 1 - 0.4, 1 - 0.3, 0.0)[None])


def test_ppo_clipping_by_hand():
    logp, old = torch.log(t(1.5, 0.5, 1.1)), torch.zeros(3, dtype=torch.float64)
    adv, mask = t(1.0, -1.0, 2.0), torch.ones(3)
    loss, frac = ppo_policy_loss(logp, old, adv, mask, clip=0.2)
    # ratio 1.5, A=+1 -> min(1.5, 1.2) = 1.2; ratio 0.5, A=-1 -> min(-0.5, -0.8) = -0.8; ratio 1.1 -> 2.2
    assert loss.item() == pytest.approx(-(1.2 - 0.8 + 2.2) / 3)
    assert frac.item() == pytest.approx(2 / 3)
    v, ov, ret = t(1.0, 0.0), t(0.0, 0.0), t(2.0, 0.1)
    vloss, vfrac = ppo_value_loss(v, ov, ret, torch.ones(2), clip=0.2)
    # token 0: unclipped (1-2)^2 = 1, clipped (0.2-2)^2 = 3.24 -> 3.24; token 1: 0.01 both
    assert vloss.item() == pytest.approx(0.5 * (3.24 + 0.01) / 2) and vfrac.item() == pytest.approx(0.5)


def test_group_advantages_by_hand():
    r = t(1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0).reshape(2, 4)
    adv = group_advantages(r, eps=0.0 + 1e-12)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64).std().item()
    torch.testing.assert_close(adv[0], t(0.5, -0.5, -0.5, 0.5) / std)
    assert (adv[1] == 0).all()  # all equal: nothing to learn
    torch.testing.assert_close(group_advantages(r, scale=False)[0], t(0.5, -0.5, -0.5, 0.5))
