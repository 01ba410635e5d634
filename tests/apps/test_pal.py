"""PAL: the program comes out of the reply, runs in the sandbox, and its last printed line is the
answer; each way it can fail has its status. A scripted model for the control flow (chat through a
server, one batched generate locally), and the real SmolLM2 to check that the pipeline runs."""

from __future__ import annotations

import pytest

from llmkit.apps.callbacks import Recorder
from llmkit.apps.pal import FENCE, PAL_EXAMPLES, STATUSES, extract_program, pal, pal_batch, pal_messages, run_program
from tests.apps.scripted import ScriptedLLM, closed_port, smol_llm

QUESTION = "A box holds 6 rows of 7 eggs. How many eggs is that?"


@pytest.mark.parametrize("text, program", [
    ("Here it is:\n```python\nx = 6 * 7\nprint(x)\n```\nThat prints 42.", "x = 6 * 7\nprint(x)"),
    ("```\nprint(1)\n```", "print(1)"),
    ("```py\nprint(2)", "print(2)"),  # cut before the closing fence
    ("print(3)", "print(3)"),  # no fence: the whole reply
    ("```python\n    print(4)\n```\n```python\nprint(5)\n```", "    print(4)"),
])
def test_extract_program(text, program):
    assert extract_program(text) == program


def test_pal_runs_the_program_the_model_wrote():
    llm = ScriptedLLM(["Sure.\n```python\nrows = 6\neggs = rows * 7\nprint('thinking')\nprint(eggs)\n```"])
    recorder = Recorder()
    result = pal(llm, QUESTION, callbacks=[recorder])
    assert (result.status, result.answer, result.output, result.error) == ("answered", "42", "thinking\n42\n", None)
    assert result.program == "rows = 6\neggs = rows * 7\nprint('thinking')\nprint(eggs)"
    messages, options = llm.calls[0]
    assert messages == pal_messages(QUESTION) and options["temperature"] == 0
    assert [e.kind for e in recorder.events] == ["model", "tool", "step"]
    assert recorder.events[1].name == "sandbox" and recorder.events[2].data["answer"] == "42"


def test_pal_messages_show_worked_examples_and_render_a_training_example():
    messages = pal_messages(QUESTION, program="print(42)")
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * (len(PAL_EXAMPLES) + 1)
    assert messages[2]["content"].startswith(FENCE) and messages[2]["content"].endswith("print(answer)\n```")
    assert messages[-1]["content"] == "```python\nprint(42)\n```"
    assert extract_program(messages[-1]["content"]) == "print(42)"


@pytest.mark.parametrize("program, status, error", [
    ("def f(:\n    pass", "syntax_error", "the program does not compile (line 1)"),
    ("x = 1 / 0", "error", "ZeroDivisionError"),
    ("x = 42", "no_output", "the program printed nothing"),
    ("", "no_program", "no program"),
    ("while True:\n    pass", "timeout", "timeout=1 s"),
])
def test_failures_have_a_status_and_no_answer(program, status, error):
    result = run_program(QUESTION, program, timeout=1)
    assert (result.status, result.answer) == (status, None) and error in result.error, result


def test_extract_rules_of_the_harness_apply_to_the_output():
    assert run_program(QUESTION, "print('the answer is 42 eggs')", extract="last_number").answer == "42"
    missing = run_program(QUESTION, "print('many')", extract="last_number")
    assert (missing.status, missing.answer) == ("no_answer", None)


def test_pal_batch_through_a_server_asks_each_question_without_the_prefill():
    llm = ScriptedLLM(["```python\nprint(6 * 7)\n```", "print(1 +)", "x = 2", ConnectionError("gone")])
    results = pal_batch(llm, ["q1", "q2", "q3", "q4"], max_new_tokens=50)
    assert [m for m, _ in llm.calls] == [pal_messages(q) for q in ["q1", "q2", "q3", "q4"]]
    assert all("stop" not in kw and kw["max_new_tokens"] == 50 for _, kw in llm.calls)  # a fence opens the reply
    assert [(r.question, r.status, r.answer) for r in results] == [
        ("q1", "answered", "42"), ("q2", "syntax_error", None), ("q3", "no_output", None), ("q4", "model_error", None)]
    assert results[0].text == "```python\nprint(6 * 7)\n```"
    assert results[3].error == "the model failed: ConnectionError: gone"


def test_pal_batch_on_a_local_model_prefills_the_fence_in_the_engine(tiny_dir):
    """One batching path: the engine decodes every question with the assistant turn prefilled by the
    fence; each reply is what generating from (chat prompt + fence tokens) alone gives at temperature 0."""
    import llmkit

    llm = llmkit.load(tiny_dir)
    recorder = Recorder()
    questions = ["q one", "q two"]
    results = pal_batch(llm, questions, max_new_tokens=6, timeout=5, callbacks=[recorder], batch_size=2)
    fence = llm.tokenize(FENCE, add_special_tokens=False)
    models = recorder.of("model")
    assert [e.data["prefill"] for e in models] == [FENCE] * 2
    for q, r, e in zip(questions, results, models):
        ids = llm.chat_prompt(pal_messages(q)) + fence
        alone = llm.complete([ids], max_new_tokens=6, temperature=0, stop=["```"])[0].text
        assert r.text == FENCE + alone.rstrip() + "\n```" and e.data["prompt_tokens"] == len(ids)
        assert r.status in STATUSES


def test_a_server_that_is_down_is_a_model_error_for_every_question():
    from llmkit.infer.remote import RemoteLLM

    down = RemoteLLM(f"http://127.0.0.1:{closed_port()}/v1", timeout=5)
    results = pal_batch(down, ["q1", "q2"])
    assert [r.status for r in results] == ["model_error"] * 2
    assert results[0].error.startswith("the model failed: EndpointError: cannot reach")


@pytest.fixture
def one_thread():
    """One intra-op thread (see tests/apps/test_agents.py)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_smollm2_pal_pipeline_runs(smollm2, one_thread):
    """Only that the pipeline runs end to end: a 135M model need not get it right."""
    result = pal(smol_llm(str(smollm2.path)), "A pen costs 3 dollars. How much do 7 pens cost?", max_new_tokens=48,
                 timeout=5)
    assert result.status in STATUSES and result.program.strip(), result
    assert result.text.startswith(FENCE) and (result.answer is not None) == (result.status == "answered")
