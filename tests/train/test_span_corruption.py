"""T5's span-corruption objective: the proportions of the paper, targets that give back exactly
what the input lost, and a tiny encoder-decoder that learns from it."""

from __future__ import annotations

import pytest
import torch

from llmkit.models.config import preset
from llmkit.models.transformer import Transformer
from llmkit.train.objectives import SpanCorruption

SENTINELS = list(range(199, 99, -1))  # <extra_id_0> is the last id, as in T5's vocabulary
EOS, PAD = 1, 0

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def _fill(source: list[int], target: list[int]) -> list[int]:
    """The original row back: each sentinel of the source replaced by what follows it in the target."""
    spans, current = {}, None
    for tok in target[:-1]:
        if tok in SENTINELS:
            current = tok
            spans[current] = []
        else:
            spans[current].append(tok)
    out = []
    for tok in source[:-1]:
        out.extend(spans[tok] if tok in SENTINELS else [tok])
    return out


def test_spans_follow_the_paper_and_targets_give_back_the_input():
    obj = SpanCorruption(SENTINELS, EOS, PAD)
    assert obj.counts(512) == (77, 26)  # round(512 * 0.15) noise tokens in round(77 / 3) spans
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(2, 99, (64, 513), generator=g)
    batch = obj.batch(rows, g)
    assert batch["encoder_input_ids"].shape == (64, 512 - 77 + 26 + 1)
    assert batch["labels"].shape == (64, 77 + 26 + 1)
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1]) and (batch["input_ids"][:, 0] == PAD).all()
    for r in range(64):
        source, target = batch["encoder_input_ids"][r].tolist(), batch["labels"][r].tolist()
        assert source[-1] == EOS and target[-1] == EOS
        assert [t for t in target if t in SENTINELS] == SENTINELS[:26] == [t for t in source if t in SENTINELS]
        assert _fill(source, target) == rows[r, :-1].tolist()  # nothing lost, nothing invented
    lengths = []
    for r in range(64):  # spans of mean length 3, never two sentinels in a row in the source
        mask = obj.noise_mask(512, g)
        starts = mask[1:] & ~mask[:-1]
        lengths.append(int(mask.sum()) / (int(starts.sum()) + int(mask[0])))
    assert sum(lengths) / len(lengths) == pytest.approx(77 / 26, rel=1e-6)


def test_a_tiny_t5_learns_to_fill_spans():
    torch.manual_seed(0)
    model = Transformer(preset("tiny-t5", vocab_size=200))
    obj = SpanCorruption(SENTINELS, EOS, PAD)
    data = (torch.arange(65)[None, :] % 20 + 5).repeat(8, 1)  # a repeating pattern: spans are predictable
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.eval()
    with torch.no_grad():
        before = float(obj.loss(model, data)[0])
    model.train()
    for _ in range(60):
        loss, _ = obj.loss(model, data)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = float(obj.loss(model, data)[0])
    assert after < 0.5 * before, (before, after)
