"""The Trainer in-process: options that must not change the numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmkit.models import Transformer, preset
from llmkit.train import CausalLM, TrainConfig, Trainer, lr_at

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


class ToyLoader:
    """Deterministic batches with the loader interface (next, state_dict, load_state_dict)."""

    def __init__(self, batch: int = 4, seq_len: int = 32):
        self.data = np.random.default_rng(0).integers(0, 2048, (64, seq_len + 1))
        self.batch, self.pos = batch, 0

    def __next__(self):
        rows = np.random.default_rng([0, self.pos]).integers(0, len(self.data), self.batch)
        self.pos += 1
        return torch.as_tensor(self.data[rows])

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


def _losses(tmp_path, name, double=False, **train):
    torch.manual_seed(0)
    model = Transformer(preset("tiny-llama"))
    if double:  # fp32 rounding, amplified by AdamW's near-sign first steps, would move later losses ~1e-4
        model, train = model.double(), {**train, "precision": "fp32"}
    cfg = TrainConfig(steps=6, micro_batch=4, warmup_steps=2, save_every=0, eval_every=0, sample_prompts=[],
                      device="cpu", **train)
    trainer = Trainer(model, CausalLM(), ToyLoader(), cfg, tmp_path / name)
    trainer.fit()
    return [h["loss"] for h in trainer.history]


def test_activation_checkpointing_gives_the_same_losses(tmp_path):
    plain = _losses(tmp_path, "plain")
    ckpt = _losses(tmp_path, "ckpt", activation_checkpointing=True)
    assert plain == pytest.approx(ckpt, abs=1e-5)
    assert plain[-1] < plain[0]


def test_gradient_accumulation_equals_a_bigger_batch(tmp_path):
    """2 micro-batches of 4 = 1 of 8 when the batches hold the same rows. In float64: AdamW's first
    steps are nearly sign(gradient), so fp32 rounding (which differs between batch shapes and CPU
    kernels) on gradients close to zero would move the later losses by ~1e-4."""

    class Pairs(ToyLoader):
        def __next__(self):
            rows = np.random.default_rng([0, self.pos // 2]).integers(0, len(self.data), 8)
            half = rows[:4] if self.pos % 2 == 0 else rows[4:]
            self.pos += 1
            return torch.as_tensor(self.data[half])

    class Eights(ToyLoader):
        def __next__(self):
            rows = np.random.default_rng([0, self.pos]).integers(0, len(self.data), 8)
            self.pos += 1
            return torch.as_tensor(self.data[rows])

    def run(loader, **kw):
        torch.manual_seed(0)
        cfg = TrainConfig(steps=4, warmup_steps=1, save_every=0, eval_every=0, sample_prompts=[], device="cpu", **kw)
        model = Transformer(preset("tiny-llama")).double()
        t = Trainer(model, CausalLM(), loader, cfg, tmp_path / str(id(loader)))
        t.fit()
        return [h["loss"] for h in t.history]

    assert run(Pairs(), micro_batch=4, grad_accum=2) == pytest.approx(run(Eights(), micro_batch=8), abs=1e-9)


def test_schedule_shape():
    kw = dict(lr=1.0, total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1) and lr_at(9, **kw) == pytest.approx(1.0)
    # the decay spans steps 10..99, so that the last step (99) gets lr·min_lr_ratio
    assert lr_at(50, **kw, schedule="cosine") == pytest.approx(0.1 + 0.45 * (1 + np.cos(np.pi * 40 / 89)))
    assert lr_at(99, **kw, schedule="cosine") == pytest.approx(0.1)
    assert lr_at(55, **kw, schedule="linear") == pytest.approx(1.0 - 0.9 * 45 / 89)
    assert lr_at(50, **kw, schedule="constant") == 1.0


def test_weight_decay_skips_norms_biases_embeddings():
    from llmkit.train.optim import param_groups

    model = Transformer(preset("tiny-gpt2", tie_embeddings=False))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("weight") and "norm" not in names[id(p)] and "embed" not in names[id(p)]
               for p in decay["params"])
    assert any("embed_tokens" in names[id(p)] for p in no_decay["params"])
    assert any(names[id(p)].endswith("bias") for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1


@pytest.mark.slow
def test_torch_compile_gives_the_same_losses(tmp_path):
    eager = _losses(tmp_path, "eager", double=True)
    compiled = _losses(tmp_path, "compiled", double=True, compile=True)
    assert eager == pytest.approx(compiled, abs=1e-8)
