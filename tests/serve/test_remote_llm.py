"""`llmkit.connect` gives an `LLM` over the server with the local one's methods: the same tokens,
the same log-likelihoods and is-greedy flags, the same rolling perplexity, and the evaluation
harness scores a multiple-choice task remotely exactly as it does locally."""

from __future__ import annotations

import pytest

import llmkit
from llmkit.eval.runner import evaluate

REQUESTS = [("The capital of France is", " Paris"), ("def add(a, b):", " return a + b"), ("", "hello"),
            ("import os\n", "import sys")]
TEXTS = ["A compiler reads a program and turns it into instructions. " * 24, "short"]


@pytest.fixture(scope="module")
def remote(server):
    return llmkit.connect(server.url + "/v1", api_key="k")


def test_tokens_round_trip(remote, served_llm):
    text = "def main():\n    return 42  # ünïcode"
    assert remote.tokenize(text) == served_llm.tokenize(text)
    assert remote.tokenize(text, add_special_tokens=False) == served_llm.tokenize(text, add_special_tokens=False)
    assert remote.detokenize(served_llm.tokenize(text)) == served_llm.detokenize(served_llm.tokenize(text))


def test_loglikelihood_and_rolling_match_the_local_model(remote, served_llm):
    got, want = remote.loglikelihood(REQUESTS), served_llm.loglikelihood(REQUESTS)
    assert [g.logprob for g in got] == pytest.approx([w.logprob for w in want], abs=1e-3)
    assert [g.is_greedy for g in got] == [w.is_greedy for w in want]
    assert [g.n_tokens for g in got] == [w.n_tokens for w in want]
    assert len(served_llm.tokenize(TEXTS[0])) > served_llm.config.context_window  # several windows
    got, want = remote.loglikelihood_rolling(TEXTS), served_llm.loglikelihood_rolling(TEXTS)
    assert [g[1] for g in got] == [w[1] for w in want]
    assert [g[0] for g in got] == pytest.approx([w[0] for w in want], rel=1e-4)


def test_the_harness_scores_multiple_choice_remotely(remote, served_llm):
    local = evaluate(served_llm, ["sentiment"], limit=12).tasks["sentiment"]
    far = evaluate(remote, ["sentiment"], limit=12).tasks["sentiment"]
    assert far.metrics == pytest.approx(local.metrics, abs=1e-6)
    assert [s.get("pred") for s in far.samples] == [s.get("pred") for s in local.samples]
