"""The README's showcase is what a user gets with the defaults: SmolLM2-135M-Instruct, asked the
README's question with no sampling options (so with the settings its model card recommends,
which the pull registry ships), answers it right in at least 18 of 20 seeds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import llmkit

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_showcase() -> tuple[str, str]:
    """The question and the answer of the README's `llmkit chat --model smollm2-135m-instruct` line."""
    line = re.search(r'llmkit chat --model smollm2-135m-instruct\s+# "([^"]+)" -> "([^"]+)"', README.read_text())
    assert line, "README.md has no showcase line for llmkit chat --model smollm2-135m-instruct"
    return line.group(1), line.group(2)


def test_the_readme_has_a_showcase_question():
    question, answer = readme_showcase()
    assert question.endswith("?") and answer.rstrip(".").split()[-1]


@pytest.mark.slow
def test_smollm2_answers_the_readme_question_at_the_defaults(smollm2):
    question, answer = readme_showcase()
    key = answer.rstrip(".").split()[-1]  # "The capital of Japan is Tokyo." -> Tokyo
    llm = llmkit.load(smollm2.path)
    replies = [llm.chat([{"role": "user", "content": question}], seed=seed, max_new_tokens=24) for seed in range(20)]
    right = sum(key in reply for reply in replies)
    assert right >= 18, replies
