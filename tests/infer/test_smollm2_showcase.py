"""The README's showcase is what a user gets with the defaults: SmolLM2-135M-Instruct, asked the
README's question with no sampling options (so with the settings its model card recommends,
which the pull registry ships), answers it right in at least 18 of 20 seeds."""

from __future__ import annotations

import pytest

import llmkit

QUESTION = "What is the capital of France?"


@pytest.mark.slow
def test_smollm2_answers_the_readme_question_at_the_defaults(smollm2):
    llm = llmkit.load(smollm2.path)
    messages = [{"role": "user", "content": QUESTION}]
    replies = [llm.chat(messages, seed=seed, max_new_tokens=24) for seed in range(20)]
    right = sum("Paris" in reply for reply in replies)
    assert right >= 18, replies
