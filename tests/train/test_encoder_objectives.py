"""Masked-LM and classification objectives, and the metrics that judge them."""

from __future__ import annotations

import pytest
import torch

from llmkit.eval.metrics import macro_f1, wilson_interval
from llmkit.models.config import preset
from llmkit.models.loss import IGNORE_INDEX
from llmkit.models.transformer import Transformer
from llmkit.train.objectives import MaskedLM
from tests.peers import peer

MASK, SPECIAL = 4, (0, 1, 2, 3)


def test_masking_follows_bert_proportions():
    """15% of the non-special positions are selected; of those 80% masked, 10% random, 10% kept;
    labels hold the original token exactly there."""
    obj = MaskedLM(MASK, vocab_size=1000, special_ids=SPECIAL)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (64, 512), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    mask = torch.ones_like(ids)
    mask[:, 400:] = 0  # padding is never selected
    inputs, labels = obj.mask(ids, mask, torch.Generator().manual_seed(1))
    selected = labels != IGNORE_INDEX
    assert not selected[:, 0].any() and not selected[:, 400:].any()
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])  # only selected positions change
    candidates = 64 * 398
    assert selected.sum() / candidates == pytest.approx(0.15, abs=0.01)
    masked = (inputs[selected] == MASK).float().mean()
    kept = (inputs[selected] == ids[selected]).float().mean()
    assert masked == pytest.approx(0.8, abs=0.02)
    # kept: the 10% left alone plus random draws that hit the same token (1/1000 of 10%)
    assert kept == pytest.approx(0.1, abs=0.02)
    assert 1 - masked - kept == pytest.approx(0.1, abs=0.02)


def test_evaluation_masks_are_fixed_and_training_masks_are_not():
    obj = MaskedLM(MASK, vocab_size=50, special_ids=SPECIAL)
    model = Transformer(preset("tiny-bert", vocab_size=50, max_seq_len=64))
    batch = torch.randint(5, 50, (4, 33))
    model.eval()
    assert obj.loss(model, batch)[0] == obj.loss(model, batch)[0]
    model.train()
    torch.manual_seed(0)
    first = obj.loss(model, batch)[0]
    assert first != obj.loss(model, batch)[0]


def test_macro_f1_and_wilson_match_their_references():
    sklearn_metrics = peer("sklearn").metrics
    preds = ["a", "b", "a", "c", "a", "b", "b"]
    gold = ["a", "b", "b", "c", "c", "b", "a"]
    assert macro_f1(preds, gold) == pytest.approx(sklearn_metrics.f1_score(gold, preds, average="macro"))
    always = ["a"] * len(gold)
    assert macro_f1(always, gold) == pytest.approx(sklearn_metrics.f1_score(gold, always, average="macro",
                                                                            zero_division=0))
    lo, hi = wilson_interval(30, 60)  # the textbook value for 30/60
    assert (lo, hi) == (pytest.approx(0.3773, abs=1e-4), pytest.approx(0.6227, abs=1e-4))
