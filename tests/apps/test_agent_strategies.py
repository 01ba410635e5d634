"""ReAct and PAL as prompt-eval strategies: each question's answer comes from the agent's final
answer (or the program's output) through the task's extractor, the tokens count every step, and
the samples keep how each run ended, so the questions an agent did not complete are counted.
A scripted model for the control flow; the tiny model for `llmkit prompt-eval --strategies`."""

from __future__ import annotations

import json
import re

import pytest

from llmkit.apps.agent_strategies import PALStrategy, ReActStrategy
from llmkit.apps.callbacks import Recorder
from llmkit.apps.pal import PAL_SYSTEM
from llmkit.apps.prompt_eval import make_strategy, prompt_eval, strategy_rows
from llmkit.apps.prompting import STRATEGIES
from llmkit.data.tasks import load_task
from tests.apps.test_prompting import Echo


def agentic_echo():
    """PAL: a program for + and x, one that does not compile for -. ReAct: the calculator for + and
    x, then the observation as the final answer; for - a reply that never follows the format."""
    def answer(messages, seed):
        system, last = messages[0]["content"], messages[-1]["content"]
        asked = next(m["content"] for m in messages[::-1] if m["role"] == "user" and "What is" in m["content"])
        a, op, b = re.search(r"(\d+) ([+x-]) (\d+)", asked).groups()
        expression = f"{a} {op.replace('x', '*')} {b}"
        if system == PAL_SYSTEM:
            return "```python\n" + ("print(1 +)" if op == "-" else f"print({expression})") + "\n```"
        if last.startswith("Observation: ") and not last.startswith("Observation: error"):
            return f"Thought: I now know the final answer\nFinal Answer: the result is {last.split(': ')[1]}"
        if op == "-":  # a different unformatted reply each step: no loop, the step limit ends it
            return f"I think it is small ({len(messages)})."
        return f'Thought: compute it\nAction: calculator\nAction Input: {{"expression": "{expression}"}}'
    return Echo(answer)


def test_react_and_pal_are_strategies_whose_samples_keep_how_each_run_ended(tmp_path):
    gold = load_task("arith-small", "dev")[:8]
    minus = [" - " in ex.prompt for ex in gold]
    recorder = Recorder()
    run = prompt_eval(agentic_echo(), ["arith-small"], ["zero-shot", "react", "pal"], split="dev", limit=8,
                      callbacks=[recorder])
    react, pal = run.tasks["arith-small/react"], run.tasks["arith-small/pal"]
    for record, failed in ((react, "step_limit"), (pal, "syntax_error")):
        assert record.value == pytest.approx(1 - sum(minus) / 8)
        assert record.metrics["completed"] == pytest.approx(1 - sum(minus) / 8)
        assert [s["status"] for s in record.samples] == [failed if m else "answered" for m in minus]
        assert [s["prediction"] for s in record.samples] == [None if m else ex.answer for ex, m in zip(gold, minus)]
        assert record.metrics["tokens_per_question"] > record.metrics["completion_tokens_per_question"] > 0
    assert "completed" not in run.tasks["arith-small/zero-shot"].metrics
    first = react.samples[0]
    assert first["output"] == "the result is 12" and first["steps"] == [
        'calculator({"expression": "12 + 0"}) -> 12', "answer: the result is 12"]
    assert react.samples[1]["steps"][-1].startswith("step_limit: no final answer after 5 steps")
    assert pal.samples[0]["steps"] == ["program: print(12 + 0)", "output: 12"]
    # every step of every question was asked: react's tokens are its steps' (5 for each failing question)
    steps = [e for e in recorder.of("step") if e.name == "react-text"]
    assert len(steps) == 2 * (8 - sum(minus)) + 5 * sum(minus)
    assert {r["strategy"]: r["n"] for r in strategy_rows(run)} == {"zero-shot": 8, "react": 8, "pal": 8}


def test_make_strategy_builds_the_agents_with_their_tools():
    assert {"react", "pal"} <= set(STRATEGIES)
    react = make_strategy("react", tools="calculator,datetime", extract="first_line", max_new_tokens=64)
    assert isinstance(react, ReActStrategy) and react.name == "react" and react.max_new_tokens == 64
    assert [t.name for t in react.tools] == ["calculator", "now", "days_between"] and react.extract == "first_line"
    assert [t.name for t in make_strategy("react").tools] == ["calculator"]
    assert "calculator" in react.messages("q")[0]["content"]
    pal = make_strategy("pal")
    assert isinstance(pal, PALStrategy) and pal.max_new_tokens == 192 and pal.messages("q")[0]["content"] == PAL_SYSTEM
    with pytest.raises(ValueError, match="unknown tool 'abacus'"):
        make_strategy("react", tools="abacus")


def test_llmkit_prompt_eval_runs_the_agents(tiny_dir, tmp_path, capsys):
    """The tiny model follows neither format (and the ReAct prompt with the calculator is longer than
    its 512-token window): the run still completes, and results.json says how each question ended."""
    from llmkit.cli.main import main

    out = tmp_path / "pe"
    code = main(["prompt-eval", "--model", str(tiny_dir), "--tasks", "arith-small", "--strategies", "cot,react,pal",
                 "--split", "dev", "--limit", "2", "--max-new-tokens", "4", "--out", str(out)])
    assert code in (0, None)
    assert "arith-small/react" in capsys.readouterr().out
    tasks = json.loads((out / "results.json").read_text())["tasks"]
    for name in ("react", "pal"):
        samples = tasks[f"arith-small/{name}"]["samples"]
        assert len(samples) == 2 and all(s["status"] for s in samples)
        assert tasks[f"arith-small/{name}"]["metrics"]["completed"] == 0  # the tiny model follows neither format
    # ReAct's first prompt is over the window: each question is a model error of its own, the run goes on
    react = tasks["arith-small/react"]["samples"]
    assert [s["status"] for s in react] == ["model_error"] * 2 and all("ContextLengthError" in s["steps"][-1]
                                                                       for s in react)
    # PAL's prompt fits: the program is written (4 new tokens each, as --max-new-tokens says) and does not run
    assert tasks["arith-small/pal"]["metrics"]["completion_tokens_per_question"] == 4
    assert all(s["status"] in ("no_program", "syntax_error", "error", "no_output") for s in tasks["arith-small/pal"]["samples"])
    assert main(["prompt-eval", "--model", str(tiny_dir), "--tasks", "arith-small", "--strategies", "react",
                 "--tools", "abacus"]) == 2
    assert "unknown tool 'abacus'" in capsys.readouterr().err
