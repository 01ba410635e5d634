"""Training a mixture of experts: the router losses reach the router and only what feeds it, the
logged loss stays the objective's, activation checkpointing changes nothing, the statistics are
logged, and the load-balancing loss evens the experts' load."""

from __future__ import annotations

import json

import pytest
import torch

import numpy as np

from llmkit.models import Transformer, preset
from llmkit.models.moe import moe_layers
from llmkit.train import CausalLM, TrainConfig, Trainer
from tests.train.test_trainer import ToyLoader

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def _trainer(tmp_path, name, steps=1, checkpointing=False, loader=None, micro_batch=4, grad_accum=1, **model_kw):
    torch.manual_seed(0)
    model = Transformer(preset("tiny-mixtral", **model_kw)).double()  # float64: compare weights exactly
    # grad_clip=0: clipping scales every gradient by the global norm, which the router losses change
    cfg = TrainConfig(steps=steps, micro_batch=micro_batch, grad_accum=grad_accum, warmup_steps=0, lr=1e-2,
                      grad_clip=0.0, save_every=0, eval_every=0,
                      sample_prompts=[], device="cpu", precision="fp32", activation_checkpointing=checkpointing)
    return Trainer(model, CausalLM(), loader or ToyLoader(), cfg, tmp_path / name)


def test_the_aux_loss_moves_the_router_and_not_the_last_experts(tmp_path):
    """The load-balancing loss depends on the router logits only: with its weight on, the last
    layer's router moves differently after one step, its experts (upstream of no router) exactly alike."""
    plain = _trainer(tmp_path, "plain")
    plain.fit()
    balanced = _trainer(tmp_path, "aux", router_aux_loss_coef=1.0, router_z_loss_coef=0.1)
    balanced.fit()
    last = lambda t: t.base_model.model.layers[-1].mlp  # noqa: E731
    assert not torch.allclose(last(plain).gate.weight, last(balanced).gate.weight)
    for a, b in zip(last(plain).experts.parameters(), last(balanced).experts.parameters()):
        assert torch.equal(a, b)
    # the logged loss is the objective's (cross-entropy), not the sum minimised
    assert plain.history[0]["loss"] == pytest.approx(balanced.history[0]["loss"], abs=1e-12)
    assert balanced.history[0]["moe_aux_loss"] >= 2.0 - 1e-9  # top-2: 2 at a perfectly even load, more otherwise


def test_activation_checkpointing_keeps_the_router_losses(tmp_path):
    """Recomputing the blocks in backward must neither drop the router losses' gradient nor add a
    second copy of them."""
    a = _trainer(tmp_path, "a", steps=3, router_aux_loss_coef=0.5, router_z_loss_coef=0.05)
    a.fit()
    b = _trainer(tmp_path, "b", steps=3, router_aux_loss_coef=0.5, router_z_loss_coef=0.05, checkpointing=True)
    assert b.config.activation_checkpointing
    b.fit()
    for (n, p), q in zip(a.base_model.named_parameters(), b.base_model.parameters()):
        assert torch.allclose(p, q, atol=1e-10), n
    assert [h["moe_aux_loss"] for h in a.history] == pytest.approx([h["moe_aux_loss"] for h in b.history], abs=1e-10)


def test_router_losses_are_weighted_like_the_loss_over_micro_batches(tmp_path):
    """Two micro-batches holding the same rows minimise what one of them does: the router losses
    are averaged over the accumulation like the objective's loss, not added once per micro-batch."""

    class Twice(ToyLoader):  # rows of step i at positions 2i and 2i + 1
        def __next__(self):
            rows = np.random.default_rng([0, self.pos // 2]).integers(0, len(self.data), self.batch)
            self.pos += 1
            return torch.as_tensor(self.data[rows])

    kw = dict(steps=3, router_aux_loss_coef=1.0, router_z_loss_coef=0.1)

    class Once(ToyLoader):
        def __next__(self):
            rows = np.random.default_rng([0, self.pos]).integers(0, len(self.data), self.batch)
            self.pos += 1
            return torch.as_tensor(self.data[rows])

    once = _trainer(tmp_path, "once", loader=Once(), **kw)
    twice = _trainer(tmp_path, "twice", loader=Twice(), grad_accum=2, **kw)
    once.fit()
    twice.fit()
    for (n, p), q in zip(once.base_model.named_parameters(), twice.base_model.parameters()):
        assert torch.allclose(p, q, atol=1e-10), n


def test_router_statistics_are_logged_and_recording_stops_after_fit(tmp_path):
    t = _trainer(tmp_path, "log", steps=2)
    t.fit()
    # after the run nothing is recorded any more: a user's own training loop holds no router graphs
    layers = moe_layers(t.base_model)
    assert layers and not any(m.recording for m in layers)
    t.base_model.train()
    t.base_model(torch.randint(0, 2048, (1, 8))).sum().backward()
    assert all(m.router_logits == [] for m in layers)
    rows = [json.loads(line) for line in (tmp_path / "log" / "metrics.jsonl").read_text().splitlines()]
    row = next(r for r in rows if "moe_tokens_per_expert" in r)
    shares = row["moe_tokens_per_expert"]
    assert len(shares) == 4 and sum(shares) == pytest.approx(1.0, abs=1e-3)
    assert row["moe_load_max"] == pytest.approx(max(shares) * 4, abs=1e-3)
    assert 0.0 < row["moe_router_entropy"] <= torch.log(torch.tensor(4.0)).item() + 1e-6
    assert row["moe_z_loss"] > 0


def test_the_load_balancing_loss_evens_the_load(tmp_path):
    """Left alone, the routers of a tiny MoE drift towards favourite experts within 25 steps; with
    the auxiliary loss on, the same start keeps the load close to even (1 = every expert as busy)."""

    def run(name, coef):
        t = _trainer(tmp_path, name, steps=25, router_aux_loss_coef=coef)
        t.fit()
        loads = [h["moe_load_max"] for h in t.history]
        return loads[0], sum(loads[-5:]) / 5

    (start_free, free), (start_balanced, balanced) = run("free", 0.0), run("balanced", 0.5)
    assert start_free == pytest.approx(start_balanced)  # the same first step
    assert balanced < 1.4 < free
