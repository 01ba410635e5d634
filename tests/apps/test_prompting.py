"""Prompt templates and prompting strategies: declared variables, few-shot selection (fixed, seeded,
nearest by embedding), chain-of-thought, the self-consistency vote, least-to-most, batching through
the engine, and the same answers from a local model and from `llmkit serve` at temperature 0."""

from __future__ import annotations

import copy
import re
from typing import Any

import numpy as np
import pytest

from llmkit.apps.prompting import (Shot, chain_of_thought, few_shot, least_to_most, question_text, self_consistency,
                                   sub_questions, vote, zero_shot)
from llmkit.apps.prompts import Prompt, PromptError, render_messages
from llmkit.eval.harness import COT_SUFFIX


class Echo:
    """A stand-in model for control flow: `answer(messages, seed)` decides each reply; it records
    every call (messages and options) and fills the stream's timings as a real model does."""

    name = "echo"

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def chat(self, messages, stream=False, timings=None, **kw):
        self.calls.append((copy.deepcopy(messages), kw))
        text = self.answer(messages, kw.get("seed"))
        if timings is not None:
            timings.prompt_tokens = sum(len(m["content"].split()) for m in messages)
            timings.generated_tokens, timings.finish_reason = len(text.split()), "stop"
        return iter([text]) if stream else text


# -------------------------------------------------------------------------------------- templates
def test_prompt_names_a_missing_or_unknown_variable():
    p = Prompt("Translate to {{ language }}: {{ text }}", system="You are {{ tone }}.")
    assert p.variables == ("language", "text", "tone")
    assert p.messages(language="French", text="cheese", tone="terse") == [
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Translate to French: cheese"}]
    with pytest.raises(PromptError, match="missing variable 'text'"):
        p.render(language="French", tone="terse")
    with pytest.raises(PromptError, match="unknown variable 'langauge'"):
        p.render(langauge="French", language="x", text="y", tone="z")
    with pytest.raises(PromptError, match="'lang'.*does not declare"):
        Prompt("{{ lang }}", variables=["language"])
    with pytest.raises(PromptError, match="does not parse"):
        Prompt("{{ oops")


def test_prompt_renders_through_the_models_chat_template(tiny_dir):
    import llmkit

    llm = llmkit.load(tiny_dir)
    p = Prompt("Q: {{ q }}", system="Be brief.")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q: 2+2"}]
    assert p.text_for(llm, q="2+2") == llm.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
    assert render_messages(object(), msgs) == "Be brief.\n\nQ: 2+2\n"  # no template: plain text


# -------------------------------------------------------------------------------------- strategies
POOL = [Shot(f"What is {a} + {b}?", str(a + b), f"p{a}-{b}") for a in range(4) for b in range(3)]


def test_few_shot_selection_fixed_seeded_and_nearest():
    fixed = few_shot(POOL, k=2, select="fixed")
    assert [s.id for s in fixed.shots("What is 9 + 9?", "q1")] == ["p0-0", "p0-1"]
    seeded = few_shot(POOL, k=3, select="random", seed=1)
    a, b = seeded.shots("What is 9 + 9?", "q1"), seeded.shots("What is 9 + 8?", "q2")
    assert a == seeded.shots("What is 9 + 9?", "q1")  # reproducible
    assert a != b and len({s.id for s in a}) == 3  # differs between questions, no repeats
    assert [s.id for s in few_shot(POOL, k=3, select="random", seed=2).shots("x", "q1")] != [s.id for s in a]
    own = few_shot(POOL, k=11, select="random").shots("What is 1 + 1?", "p1-1")
    assert "p1-1" not in {s.id for s in own}  # a question is never its own example

    class CharEmbedder:  # a bag of characters: questions sharing digits are near
        def embed(self, texts):
            return np.array([[t.count(c) for c in "0123456789+"] for t in texts], dtype=np.float32)

    near = few_shot(POOL, k=2, select="nearest", embedder=CharEmbedder())
    shots = near.shots("What is 1 + 3?", "q")  # not in the pool; "3 + 1" has the same characters
    assert shots[0].question == "What is 3 + 1?"
    assert [s.question for s in near.shots("What is 3 + 1?", "q")][0] != "What is 3 + 1?"  # never itself
    with pytest.raises(ValueError, match="embedder"):
        few_shot(POOL, select="nearest")


def test_few_shot_asks_after_solved_turns_and_zero_shot_asks_the_question():
    llm = Echo(lambda m, s: "7")
    out = few_shot(POOL, k=2, select="fixed").answer(llm, "What is 3 + 4?")
    msgs = llm.calls[0][0]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[1]["content"] == "0" and msgs[-1]["content"] == "What is 3 + 4?"
    assert out.answer == "7" and out.tokens > 0
    zero_shot().answer(llm, "What is 3 + 4?")
    assert llm.calls[1][0] == [{"role": "user", "content": "What is 3 + 4?"}] and llm.calls[1][1]["temperature"] == 0


def test_chain_of_thought_uses_the_harness_suffix_and_extracts_the_last_number():
    llm = Echo(lambda m, s: "3 + 4 makes 7, and then 7 + 1 = 8. The answer is 8.")
    out = chain_of_thought().answer(llm, "What is 3 + 4 + 1?")
    assert llm.calls[0][0][-1]["content"] == "What is 3 + 4 + 1?" + COT_SUFFIX
    assert out.answer == "8" and llm.calls[0][1]["max_new_tokens"] >= 128


def test_self_consistency_votes_with_a_seed_per_sample_and_reports_the_margin():
    replies = {0: "so 25", 1: "it is 24", 2: "25", 3: "no idea", 4: "= 25"}
    llm = Echo(lambda m, seed: replies[seed % 5])
    out = self_consistency(k=5, temperature=0.9).answer(llm, "What is 17 + 8?")
    seeds = [kw["seed"] for _, kw in llm.calls]
    assert len(set(seeds)) == 5 and all(kw["temperature"] == 0.9 for _, kw in llm.calls)
    assert out.answer == "25" and out.votes == {"25": 3, "24": 1} and out.margin == pytest.approx((3 - 1) / 5)
    # ties go to the answer reached first
    from llmkit.apps.batching import Reply

    tie = vote([Reply("24", 1, 1, "stop", 0), Reply("25", 1, 1, "stop", 0)], "last_number")
    assert tie.answer == "24" and tie.margin == 0
    assert vote([Reply("none", 1, 1, "stop", 0)], "last_number").answer is None
    with pytest.raises(ValueError, match="temperature"):
        self_consistency(temperature=0)


def test_least_to_most_answers_sub_questions_in_one_conversation():
    def answer(messages, seed):
        last = messages[-1]["content"]
        if last.startswith("Break the problem"):
            return "1. What is 3 + 4?\n2. What is 7 + 1?\n3. What is 3 + 4 + 1?"
        return {"What is 3 + 4?": "7", "What is 7 + 1?": "8"}.get(last, "So the answer is 8.")

    llm = Echo(answer)
    out = least_to_most(max_steps=3).answer(llm, "What is 3 + 4 + 1?")
    assert out.steps == ["What is 3 + 4?", "What is 7 + 1?", "What is 3 + 4 + 1?"]
    final = llm.calls[-1][0]
    assert [m["content"] for m in final if m["role"] == "assistant"] == ["7", "8"]
    assert out.answer == "8"
    assert sub_questions("- a\n- b\n- c\n- d", "Q", 3) == ["a", "b", "Q"]


def test_question_text_strips_the_harness_frame():
    from llmkit.data.tasks import load_task

    ex = load_task("arith-small", "dev")[0]
    assert re.fullmatch(r"What is \d+ [+x-] \d+\?", question_text(ex))


def test_batched_answers_equal_one_by_one_chat_on_a_real_model(tiny_dir):
    """A local model runs a strategy's questions through the engine's continuous batching; each
    answer is what its own `chat` call gives at temperature 0."""
    import llmkit

    llm = llmkit.load(tiny_dir)
    questions = [f"What is {a} + {a + 1}?" for a in range(5)]
    batched = zero_shot(max_new_tokens=8).answer_all(llm, questions, batch_size=3)
    for q, got in zip(questions, batched):
        alone = llm.chat([{"role": "user", "content": q}], max_new_tokens=8, temperature=0)
        assert got.output == alone
        assert got.prompt_tokens == llm.chat_tokens([{"role": "user", "content": q}]) and got.completion_tokens > 0


@pytest.fixture(scope="module")
def smol_pair(smollm2):
    from llmkit.infer.remote import RemoteLLM
    from llmkit.serve import ServedModel, create_app
    from tests.apps.scripted import smol_llm
    from tests.serve.conftest import Running

    local = smol_llm(str(smollm2.path))
    with Running(create_app([ServedModel("smol", local, engine_options={"max_batch": 4})])) as running:
        yield local, RemoteLLM(running.url + "/v1")


def test_local_and_remote_give_the_same_answers_at_temperature_zero(smol_pair):
    local, remote = smol_pair
    questions = ["What is 7 + 5?", "What is 9 x 3?"]
    for strategy in (zero_shot(max_new_tokens=16), chain_of_thought(max_new_tokens=32)):
        here = strategy.answer_all(local, questions)
        there = strategy.answer_all(remote, questions)
        assert [a.output for a in here] == [a.output for a in there]
        assert [a.answer for a in here] == [a.answer for a in there]
        assert [a.prompt_tokens for a in here] == [a.prompt_tokens for a in there]
