"""The fused head + cross-entropy against PyTorch's own, values and gradients, and its promise:
no (tokens, vocab) tensor is kept for backward."""

import pytest
import torch
import torch.nn.functional as F

from llmkit.models import Transformer, preset
from llmkit.models.loss import linear_cross_entropy

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def _reference(h, w, b, t):
    return F.cross_entropy(F.linear(h, w, b).flatten(0, -2), t.flatten(), ignore_index=-100)


@pytest.mark.parametrize("chunk_rows", [1, 7, None])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_cross_entropy_and_its_gradients(chunk_rows, bias):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 37, 16, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(101, 16, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(101, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    t = torch.randint(0, 101, (3, 37), generator=g)
    t[0, :5] = -100
    t[2, 30:] = -100
    params = [x for x in (h, w, b) if x is not None]
    ref = _reference(h, w, b, t)
    ours = linear_cross_entropy(h, w, t, bias=b, chunk_rows=chunk_rows)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    for a, r in zip(torch.autograd.grad(2.5 * ours, params), torch.autograd.grad(2.5 * ref, params)):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-12)


def test_frozen_head_gets_no_gradient_and_no_grad_mode_works():
    h = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(50, 8)  # frozen, as under LoRA
    t = torch.randint(0, 50, (10,))
    (gh,) = torch.autograd.grad(linear_cross_entropy(h, w, t), [h])
    (rh,) = torch.autograd.grad(_reference(h, w, None, t), [h])
    torch.testing.assert_close(gh, rh)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, t), _reference(h, w, None, t))
    assert torch.isnan(linear_cross_entropy(h, w, torch.full_like(t, -100)))


def _largest_saved(fn, vocab):
    """The loss, and the most elements of any tensor autograd keeps whose last dim is the vocabulary."""
    sizes = [0]

    def pack(x):
        if x.dim() >= 2 and x.shape[-1] == vocab:
            sizes[0] = max(sizes[0], x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = fn()
    return loss, sizes[0]


def test_transformer_labels_give_the_loss_of_its_logits_without_saving_them():
    torch.manual_seed(0)
    cfg = preset("tiny-llama")
    model = Transformer(cfg).double()
    ids = torch.randint(0, cfg.vocab_size, (2, 24))
    labels = torch.randint(0, cfg.vocab_size, (2, 24))
    labels[:, :6] = -100
    ref, ref_saved = _largest_saved(lambda: F.cross_entropy(model(ids).flatten(0, 1), labels.flatten()),
                                    cfg.vocab_size)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    loss, saved = _largest_saved(lambda: model(ids, labels=labels), cfg.vocab_size)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-12)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-10)
    logits = ids.numel() * cfg.vocab_size
    assert ref_saved >= logits  # the plain path keeps the logits for backward; the fused one none
    assert saved == 0
