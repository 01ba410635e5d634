"""`llmkit agent`: steps printed as they happen, the answer on stdout, exit status 0 only when the
model answered, the reason otherwise; --pal; a server that is down. The verb is put into `main`'s
table here (as main.py registers it), and the model is a scripted stand-in except for the down server."""

from __future__ import annotations

import json

import pytest

from llmkit.cli import agent_commands
from llmkit.cli.agent_commands import add_agent_args, run_agent
from llmkit.cli.main import VERBS, main
from tests.apps.scripted import ScriptedLLM, closed_port

HELP = "answer a question with a ReAct agent and the built-in tools, or with a program (--pal)"


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setitem(VERBS, "agent", (add_agent_args, run_agent, HELP))


@pytest.fixture
def scripted(monkeypatch):
    def use(*replies):
        llm = ScriptedLLM(list(replies))
        monkeypatch.setattr(agent_commands, "load_llm", lambda args: llm)
        return llm
    return use


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["agent", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_steps_go_to_stderr_as_they_happen_and_the_answer_to_stdout(capsys, scripted, tmp_path):
    scripted('Thought: count the days\nAction: days_between\n'
             'Action Input: {"start": "2024-02-03", "end": "2024-11-23"}',
             "Thought: I now know the final answer\nFinal Answer: 294 days")
    trace = tmp_path / "trace.jsonl"
    code, out, err = run(capsys, "-m", "stand-in", "--tools", "datetime", "--trace", trace,
                         "How many days are there between 2024-02-03 and 2024-11-23?")
    assert (code, out) == (0, "294 days\n")
    assert err.splitlines() == ["Thought: count the days",
                                'Action: days_between {"start": "2024-02-03", "end": "2024-11-23"}',
                                "Observation: 294", "Thought: I now know the final answer"]
    kinds = [json.loads(line)["kind"] for line in trace.read_text().splitlines()]
    assert kinds == ["model", "tool", "step", "model", "step"]


def test_no_answer_exits_1_with_the_reason(capsys, scripted):
    scripted(*[f"Action: calculator\nAction Input: {i} + 1" for i in range(3)])
    code, out, err = run(capsys, "-m", "stand-in", "--tools", "calculator", "--max-steps", "2", "count")
    assert code == 1 and out == ""
    assert err.splitlines()[-1] == ("llmkit agent: no answer (step_limit): no final answer after 2 steps "
                                    "(max_steps=2): raise max_steps, or ask a simpler question")
    assert err.count("Observation: ") == 2


def test_pal_prints_the_program_and_its_output(capsys, scripted):
    scripted("```python\nprint('six sevens')\nprint(6 * 7)\n```")
    code, out, err = run(capsys, "-m", "stand-in", "--pal", "What is 6 * 7?")
    assert (code, out) == (0, "42\n")
    assert "Program: \nprint('six sevens')\nprint(6 * 7)\n" in err and "Output: six sevens\n42\n" in err
    scripted("```python\nx = 1\n```")
    code, out, err = run(capsys, "-m", "stand-in", "--pal", "What is 6 * 7?")
    assert code == 1 and "no answer (no_output): the program printed nothing" in err


def test_a_server_that_is_down_is_explained_not_a_traceback(capsys):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    code, out, err = run(capsys, "-m", url, "--mode", "native", "--tools", "calculator", "1 + 1?")
    assert code == 1 and out == ""
    assert "no answer (model_error): the model failed at step 1: EndpointError: cannot reach" in err


def test_bad_input_fails_before_the_model_loads(capsys, monkeypatch):
    monkeypatch.setattr(agent_commands, "load_llm", lambda args: pytest.fail("the model was loaded"))
    code, _, err = run(capsys, "-m", "stand-in", "--tools", "calculater", "1 + 1?")
    assert code == 2 and "unknown tool 'calculater': did you mean 'calculator'?" in err
    code, _, err = run(capsys, "-m", "stand-in", "  ")
    assert code == 2 and "the question is empty" in err


def test_help_explains_the_verb(capsys):
    with pytest.raises(SystemExit):
        main(["agent", "--help"])
    out = capsys.readouterr().out
    for flag in ("--tools", "--mode", "--max-steps", "--trace", "--pal", "--api-key", "--tool-choice"):
        assert flag in out
    assert "exit status is 0 when the model answered" in " ".join(out.split())
