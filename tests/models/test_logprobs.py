"""The one token log-prob function against a plain log_softmax + gather, an entropy computed by
torch.distributions, and transformers' own language-model loss on the same logits."""

from __future__ import annotations

import pytest
import torch

from llmkit.models.logprobs import token_logprobs
from tests.peers import peer


def _case(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(2, 7, 50, generator=g)).to(dtype)
    targets = torch.randint(0, 50, (2, 7), generator=g)
    return logits, targets


def _reference(logits, targets, temperature=1.0):
    logp = torch.log_softmax(logits.double() / temperature, dim=-1)
    return logp.gather(-1, targets[..., None]).squeeze(-1), logp


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.5])
def test_equals_log_softmax_and_gather(temperature):
    logits, targets = _case()
    want, _ = _reference(logits, targets, temperature)
    got = token_logprobs(logits, targets, temperature=temperature)
    assert got.dtype == torch.float32 and got.shape == (2, 7)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
    # a fixed point: the log-probs of a 1-D row of known probabilities
    row = torch.tensor([[0.5, 0.25, 0.25]]).log()
    torch.testing.assert_close(token_logprobs(row, torch.tensor([1])), torch.tensor([0.25]).log())


def test_ignored_and_masked_positions_give_zero():
    logits, targets = _case()
    want, _ = _reference(logits, targets)
    labels = targets.clone()
    labels[0, :3] = -100
    mask = torch.ones_like(targets, dtype=torch.bool)
    mask[1, 5:] = False
    got = token_logprobs(logits, labels, mask=mask)
    counted = (labels != -100) & mask
    assert (got[~counted] == 0).all() and (want[~counted] != 0).all()
    torch.testing.assert_close(got[counted].double(), want[counted], rtol=0, atol=1e-5)
    # another ignore index
    labels = targets.masked_fill(targets == targets[0, 0], 7777)
    assert token_logprobs(logits, labels, ignore_index=7777)[0, 0] == 0


def test_entropy_matches_torch_distributions():
    logits, targets = _case(seed=1)
    labels = targets.clone()
    labels[1, 0] = -100
    logp, ent = token_logprobs(logits, labels, temperature=0.8, entropy=True)
    want = torch.distributions.Categorical(logits=logits.double() / 0.8).entropy()
    want[1, 0] = 0
    torch.testing.assert_close(ent.double(), want, rtol=0, atol=1e-5)
    assert torch.equal(logp, token_logprobs(logits, labels, temperature=0.8))


def test_half_precision_logits_are_scored_in_fp32():
    logits, targets = _case(torch.bfloat16)
    got = token_logprobs(logits, targets)
    want, _ = _reference(logits.float(), targets)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


def test_bad_shapes_and_temperature_are_refused():
    logits, targets = _case()
    with pytest.raises(ValueError, match="targets of shape"):
        token_logprobs(logits, targets[:, :-1])
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, targets, temperature=0)


def test_mean_negative_equals_transformers_lm_loss():
    """transformers shifts the labels itself and averages over those != -100: the same number."""
    transformers = peer("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=64, vocab_size=101, max_position_embeddings=64)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 101, (2, 12))
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt that does not count
    with torch.no_grad():
        out = hf(ids, labels=labels)
    logp = token_logprobs(out.logits[:, :-1], labels[:, 1:])
    ours = -logp.sum() / (labels[:, 1:] != -100).sum()
    torch.testing.assert_close(ours, out.loss, rtol=0, atol=1e-5)
