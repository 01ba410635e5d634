"""The task harness on a tiny model: numbers equal direct computations, independent of batch size."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

import llmkit
from llmkit.eval.harness import (extract_answer, fewshot_prefix, run_generation, run_multiple_choice,
                                 run_perplexity)
from llmkit.infer import LocalLLM
from llmkit.models import Transformer, preset

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


@dataclass
class Ex:
    id: str
    prompt: str
    answer: str
    choices: list[str] | None = None
    meta: dict = field(default_factory=dict)


MC = [Ex(f"q{i}", f"Question {i}: which word fits?", c[i % 3], c)
      for i, c in enumerate([["red", "green", "blue"], ["cat", "dog", "fish"], ["one", "two", "three"]] * 3)]


@pytest.fixture(scope="module")
def llm(tiny_dir):
    return llmkit.load(tiny_dir)


def _choice_logprob(llm, context: str, choice: str) -> float:
    ctx = llm.tokenize(context)
    whole = llm.tokenize(context + " " + choice)
    with torch.no_grad():
        logp = llm.model(torch.tensor([whole]))[0].log_softmax(-1)
    return sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))


def test_multiple_choice_matches_direct_scoring_and_batch_size(llm):
    res = run_multiple_choice(llm, "mc", MC, batch_size=4)
    correct = correct_norm = 0
    for ex, sample in zip(MC, res.samples):
        lls = [_choice_logprob(llm, ex.prompt, c) for c in ex.choices]
        assert sample["loglikelihoods"] == pytest.approx(lls, abs=1e-4)
        correct += ex.choices[lls.index(max(lls))] == ex.answer
        norm = [ll / len(" " + c) for ll, c in zip(lls, ex.choices)]
        correct_norm += ex.choices[norm.index(max(norm))] == ex.answer
    assert res.metrics["acc"] == pytest.approx(correct / len(MC))
    assert res.metrics["acc_norm"] == pytest.approx(correct_norm / len(MC))
    for bs in (1, 7):
        other = run_multiple_choice(llm, "mc", MC, batch_size=bs)
        assert {k: other.metrics[k] for k in ("acc", "acc_norm", "n")} == {k: res.metrics[k] for k in ("acc", "acc_norm", "n")}
        assert other.metrics == pytest.approx(res.metrics, abs=1e-6)  # calibration error: fp32 rounding
        flat = [ll for s in other.samples for ll in s["loglikelihoods"]]
        # fp32 rounding (relative 1e-6): few rows go through llmkit.quant.kernels, more through BLAS, summing in
        # other orders
        assert flat == pytest.approx([ll for s in res.samples for ll in s["loglikelihoods"]], rel=1e-6, abs=1e-5)


def test_fewshot_prefix_is_seeded_and_leaves_the_question_out():
    a = fewshot_prefix(MC, 3, seed=1, avoid="q0")
    assert a == fewshot_prefix(MC, 3, seed=1, avoid="q0") and a.count("\n\n") == 3
    assert "Question 0:" not in a
    assert a != fewshot_prefix(MC, 3, seed=2, avoid="q0")
    assert fewshot_prefix(MC, 0, seed=1) == ""


def test_answer_extraction():
    assert extract_answer("so 12 + 30 = 42.", "last_number") == "42"
    assert extract_answer("-7 is it", "last_number") == "-7"
    assert extract_answer("  first\nsecond", "first_line") == "first"
    assert extract_answer("The answer is: Paris!", r"regex:answer is: (\w+)") == "Paris"
    with pytest.raises(ValueError, match="last_number"):
        extract_answer("x", "magic")


class Scripted:
    """An LLM stand-in that answers from a script, to check the scoring arithmetic."""

    def __init__(self, replies):
        self.replies = replies
        self.seen = []

    def generate(self, prompts, **kw):
        self.seen += prompts
        return [self.replies[p.split("Q:")[-1].replace(" Let's think step by step.", "").strip()] for p in prompts]


def test_generation_scoring():
    exs = [Ex("a", "Q: 2+2", "4"), Ex("b", "Q: 3+3", "6"), Ex("c", "Q: 10-1", "9")]
    llm = Scripted({"2+2": " It is 4", "3+3": " maybe 5", "10-1": " 9\nmore"})
    res = run_generation(llm, "arith", exs)
    assert res.metrics["exact_match"] == pytest.approx(2 / 3)
    assert [s["prediction"] for s in res.samples] == ["4", "5", "9"]
    cot = run_generation(Scripted(llm.replies), "arith", exs, chain_of_thought=True)
    assert all(s["prompt"].endswith("Let's think step by step.") for s in cot.samples)


def test_generation_is_independent_of_batch_size(llm):
    exs = [Ex(str(i), f"What is {i} + {i}?", str(2 * i)) for i in range(5)]
    a = run_generation(llm, "g", exs, max_new_tokens=8, batch_size=1)
    b = run_generation(llm, "g", exs, max_new_tokens=8, batch_size=5)
    assert [s["output"] for s in a.samples] == [s["output"] for s in b.samples]


def test_perplexity_with_a_sliding_window(tiny_tokenizer):
    torch.manual_seed(0)
    model = Transformer(preset("tiny-llama", vocab_size=tiny_tokenizer.vocab_size, max_seq_len=32, init_std=0.3))
    llm = LocalLLM(model, tiny_tokenizer)
    text = "import os\nimport sys\n\ndef main(argv):\n    for name in os.listdir(argv[1]):\n        print(name)\n" * 2
    tokens = tiny_tokenizer.encode(text, add_special_tokens=False)
    assert len(tokens) > 64  # several windows
    (logprob, n), = llm.loglikelihood_rolling([text], stride=16)
    assert n == len(tokens)
    # reference: every token scored once, with at most 32 positions of input ending at it
    full = [tiny_tokenizer.eos_token_id] + tokens
    expected, pos = 0.0, 0
    with torch.no_grad():
        while pos < len(tokens):
            end = min(len(tokens), pos + (32 if pos == 0 else 16))
            first = max(0, end - 32)
            logp = model(torch.tensor([full[first:end]]))[0].log_softmax(-1)
            for j in range(pos, end):  # token j is full[j + 1], predicted at input index j - first
                expected += logp[j - first, full[j + 1]].item()
            pos = end
    assert logprob == pytest.approx(expected, abs=1e-3)
    res = run_perplexity(llm, "ppl", [text])
    assert res.metrics["tokens"] == len(tokens)
    nll = -llm.loglikelihood_rolling([text])[0][0]
    assert res.metrics["perplexity"] == pytest.approx(math.exp(nll / len(tokens)))
    assert res.metrics["bits_per_byte"] == pytest.approx(nll / (math.log(2) * len(text.encode())))
