"""Speculative decoding keeps the target model's outputs: token for token at temperature 0 (with a
different draft model and with prompt lookup), every draft accepted when the draft is the target
itself, and under sampling the first generated token follows the target's distribution
(chi-square test against the exact probabilities, rejection paths included)."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

import llmkit
from llmkit.infer import GenerationConfig
from llmkit.infer.speculative import SpeculativeError, prompt_lookup, speculative_generate

PROMPTS = ["def main():\n    x = 1\n    y = 2\n    def main():", "import os\nimport sys\nimport os\nimport",
           "class Foo:"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


@pytest.mark.parametrize("k", [1, 4])
def test_greedy_output_is_plain_greedy(target, draft, k):
    gen = GenerationConfig(max_new_tokens=30, temperature=0, ignore_eos=True)
    for p in PROMPTS:
        ids = target.tokenize(p)
        plain = target.complete([ids], gen)[0]
        for d in ("prompt-lookup", draft):
            r = speculative_generate(target, ids, gen, draft=d, k=k)
            assert r.completion.token_ids == plain.token_ids and r.completion.text == plain.text


def test_prompt_lookup_skips_passes_when_the_text_repeats(target, tmp_path):
    from llmkit.pipelines.init import init_model

    # with the usual small init a random model repeats itself: the case prompt lookup is for
    repetitive = init_model("tiny-llama", tmp_path / "r", tokenizer=target.tokenizer, seed=0)
    gen = GenerationConfig(max_new_tokens=40, temperature=0, ignore_eos=True)
    ids = repetitive.tokenize(PROMPTS[1])
    r = speculative_generate(repetitive, ids, gen, draft="prompt-lookup", k=4)
    assert r.completion.token_ids == repetitive.complete([ids], gen)[0].token_ids
    assert r.acceptance_rate > 0.5 and r.target_passes <= 20  # at least two tokens per pass


def test_the_target_as_its_own_draft_accepts_everything(target):
    ids = target.tokenize(PROMPTS[2])
    for gen in (GenerationConfig(max_new_tokens=25, temperature=0, ignore_eos=True),
                GenerationConfig(max_new_tokens=25, temperature=1.0, top_k=20, seed=3, ignore_eos=True)):
        r = speculative_generate(target, ids, gen, draft=target, k=4)
        assert r.proposed > 0 and r.accepted == r.proposed and r.acceptance_rate == 1.0
        assert r.target_passes == 5  # 25 tokens, five per pass (four drafts + one)


def _exact(target, ids, top_k):
    with torch.no_grad():
        logits = target.model(torch.tensor([ids]))[0, -1]
    kth = logits.topk(top_k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf")).softmax(-1)


@pytest.mark.parametrize("drafter", ["model", "prompt-lookup"])
def test_sampled_first_token_follows_the_target_distribution(target, draft, drafter):
    prompt = PROMPTS[1] if drafter == "prompt-lookup" else PROMPTS[2]
    ids = target.tokenize(prompt)
    p = _exact(target, ids, top_k=6)
    support = p.nonzero().squeeze(1).tolist()
    d = draft if drafter == "model" else "prompt-lookup"
    counts = dict.fromkeys(support, 0)
    n, rejected = 1200, 0
    for seed in range(n):
        gen = GenerationConfig(max_new_tokens=3, temperature=1.0, top_k=6, seed=seed, ignore_eos=True)
        r = speculative_generate(target, ids, gen, draft=d, k=2)
        first = r.completion.token_ids[0]
        assert first in counts, "a token outside the target's support"
        counts[first] += 1
        rejected += r.proposed > 0 and r.accepted == 0
    assert rejected > n // 10  # the rejection path really ran
    mass = sum(float(p[t]) for t in support)
    expected = [float(p[t]) / mass * n for t in support]
    stat, pvalue = chisquare([counts[t] for t in support], expected)
    assert pvalue > 1e-3, (counts, expected)


def test_prompt_lookup_and_refusals(target):
    assert prompt_lookup([1, 2, 3, 9, 1, 2, 3], 3) == [9, 1, 2]
    assert prompt_lookup([5, 6, 7], 2) == []
    with pytest.raises(SpeculativeError, match="penalties"):
        speculative_generate(target, [1, 2], GenerationConfig(repetition_penalty=1.3))
    with pytest.raises(SpeculativeError, match="draft"):
        speculative_generate(target, [1, 2], GenerationConfig(), draft="ngram-magic")


def test_generate_command_with_a_draft(tiny_dirs, draft):
    import subprocess
    import sys

    args = [sys.executable, "-m", "llmkit", "generate", "--model", str(tiny_dirs["tiny-llama"]), "--prompt", PROMPTS[1],
            "--temperature", "0", "--max-new-tokens", "12"]
    plain = subprocess.run([*args, "--no-stream"], capture_output=True, text=True)
    fast = subprocess.run([*args, "--draft", "prompt-lookup"], capture_output=True, text=True)
    assert plain.returncode == 0 and fast.returncode == 0, fast.stderr[-2000:]
    assert fast.stdout == plain.stdout and "drafts accepted" in fast.stderr


def test_a_draft_named_by_path_is_loaded_onto_the_target_and_timed(target, draft, tmp_path):
    path = draft.save(tmp_path / "draft")
    ids = target.tokenize(PROMPTS[0])
    gen = GenerationConfig(max_new_tokens=12, temperature=1.0, top_k=20, seed=4, ignore_eos=True)
    by_name = speculative_generate(target, ids, gen, draft=str(path), k=3)
    loaded = speculative_generate(target, ids, gen, draft=draft, k=3)
    assert by_name.completion.token_ids == loaded.completion.token_ids
    assert (by_name.proposed, by_name.accepted) == (loaded.proposed, loaded.accepted) and by_name.proposed > 0
    assert by_name.seconds > 0 and by_name.tokens_per_second == 12 / by_name.seconds
    assert by_name.summary().startswith(f"speculative: {by_name.accepted}/{by_name.proposed} drafts accepted")
    wider = llmkit.LocalLLM(llmkit.Transformer(target.config.replace(vocab_size=600)), target.tokenizer)
    with pytest.raises(SpeculativeError, match="vocabulary"):
        speculative_generate(target, ids, gen, draft=wider)
