"""Multiple choice on an encoder-decoder: each choice is scored by the decoder's likelihood of it
given the question as the source (checked against the model's own teacher-forced logits)."""

from __future__ import annotations

import pytest
import torch

import llmkit
from llmkit.eval.runner import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def test_t5_multiple_choice_scores_each_choice_as_a_target_given_the_question(tiny_t5_dir):
    llm = llmkit.load(tiny_t5_dir)
    rec = evaluate(llm, ["sentiment"], limit=4).tasks["sentiment"]
    assert len(rec.samples) == 4
    for sample in rec.samples:
        source = torch.tensor([llm.tokenize(sample["prompt"])])
        for choice, got in zip(sample["choices"], sample["loglikelihoods"]):
            target = llm.tokenize(choice)  # the choice as a target, ending with </s> as T5's targets do
            decoder = torch.tensor([[llm.config.decoder_start_token_id, *target[:-1]]])
            with torch.no_grad():
                logp = llm.model(decoder, encoder_input_ids=source)[0].log_softmax(-1)
            expected = float(logp[torch.arange(len(target)), torch.tensor(target)].sum())
            # batched and one-by-one sums of fp32 log-probs: a few ulps of a ~50-nat total
            assert got == pytest.approx(expected, rel=1e-5, abs=1e-4)
        best = max(range(len(sample["choices"])), key=sample["loglikelihoods"].__getitem__)
        assert sample["prediction"] == sample["choices"][best]
