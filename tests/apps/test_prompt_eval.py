"""`prompt_eval` and `llmkit prompt-eval`: strategies answer the same questions, are scored as the
harness scores the task, compared pairwise with paired intervals, and written as an eval run
that `llmkit compare` reads."""

from __future__ import annotations

import json
import re

import pytest

from llmkit.apps.prompt_eval import prompt_eval, strategy_rows, write_prompt_eval
from llmkit.data.tasks import load_task
from llmkit.eval.runner import compare, load_run
from tests.apps.test_prompting import Echo

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def _solve(question: str) -> int:
    a, op, b = re.search(r"(\d+) ([+x-]) (\d+)", question).groups()
    return {"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b)}[op]


def arithmetic_echo():
    """Right on every question when asked to think step by step, right on + only otherwise."""
    def answer(messages, seed):
        q = messages[-1]["content"]
        value = _solve(q)
        if "step by step" in q or " + " in q:
            return f"The answer is {value}."
        return f"The answer is {value + 1}."
    return Echo(answer)


def test_strategies_are_scored_and_compared_paired(tmp_path):
    gold = load_task("arith-small", "dev")[:40]
    run = prompt_eval(arithmetic_echo(), ["arith-small"], ["zero-shot", "cot"], split="dev", limit=40)
    zero, cot = run.tasks["arith-small/zero-shot"], run.tasks["arith-small/cot"]
    plus = sum(" + " in ex.prompt for ex in gold) / len(gold)
    assert zero.value == pytest.approx(plus) and cot.value == 1.0
    assert [s["id"] for s in zero.samples] == [ex.id for ex in gold]
    assert zero.metrics["tokens_per_question"] > 0 and zero.metrics["n"] == 40
    rows = {r["strategy"]: r for r in strategy_rows(run)}
    assert rows["cot"]["verdict"] == "better" and rows["cot"]["paired"]
    assert rows["cot"]["delta"] == pytest.approx(1.0 - plus) and rows["cot"]["delta_ci"][0] > 0

    out = write_prompt_eval(run, tmp_path / "pe")
    report = (out / "report.md").read_text()
    assert "## Strategies side by side" in report and "| arith-small | cot | 40 | 1.000" in report
    assert (out / "charts" / "accuracy_vs_tokens.png").stat().st_size > 1000
    again = load_run(out)
    assert again.settings.strategies == ["zero-shot", "cot"]
    assert json.loads((out / "results.json").read_text())["tasks"]["arith-small/cot"]["metrics"]["exact_match"] == 1.0
    # two prompt-eval runs compare record by record, as two eval runs do
    worse = prompt_eval(Echo(lambda m, s: "0"), ["arith-small"], ["zero-shot", "cot"], split="dev", limit=40)
    deltas = {d.task: d for d in compare(again, worse)}
    assert deltas["arith-small/cot"].verdict == "regression" and deltas["arith-small/cot"].paired


def test_a_difference_inside_the_noise_is_no_difference():
    """Two strategies that disagree on a few questions only: the paired interval holds 0."""
    flips = {ex.id for ex in load_task("arith-small", "dev")[:60:20]}  # 3 of 60 questions

    llm = Echo(lambda messages, seed: str(_solve(messages[-1]["content"])))
    run = prompt_eval(llm, ["arith-small"], ["zero-shot", "cot"], split="dev", limit=60)
    # make cot lose the flipped questions, then recompute the rows from the samples
    for s in run.tasks["arith-small/cot"].samples:
        if s["id"] in flips:
            s["score"] = 0.0
    run.tasks["arith-small/cot"].metrics["exact_match"] = 57 / 60
    row = {r["strategy"]: r for r in strategy_rows(run)}["cot"]
    assert row["delta"] == pytest.approx(-3 / 60) and row["delta_ci"][0] < 0 <= row["delta_ci"][1]
    assert row["verdict"] == "no difference"


def test_bad_names_fail_before_any_work():
    llm = Echo(lambda m, s: "1")
    with pytest.raises(ValueError, match="unknown strategy 'tree-of-thought'"):
        prompt_eval(llm, ["arith-small"], ["zero-shot", "tree-of-thought"])
    with pytest.raises(ValueError, match="sentiment.*multiple_choice"):
        prompt_eval(llm, ["sentiment"], ["zero-shot"])
    with pytest.raises(ValueError, match="twice"):
        prompt_eval(llm, ["arith-small"], ["cot", "cot"])
    assert llm.calls == []


def test_llmkit_prompt_eval_writes_a_run(tiny_dir, tmp_path, capsys):
    from llmkit.cli.main import main

    out = tmp_path / "pe"
    code = main(["prompt-eval", "--model", str(tiny_dir), "--tasks", "arith-small", "--strategies",
                 "zero-shot,few-shot,self-consistency", "--split", "dev", "--limit", "4", "--k", "2",
                 "--max-new-tokens", "4", "--out", str(out)])
    assert code in (0, None)
    text = capsys.readouterr().out
    assert "Strategies side by side" in text and "arith-small/self-consistency" in text
    run = load_run(out)
    assert list(run.tasks) == ["arith-small/zero-shot", "arith-small/few-shot", "arith-small/self-consistency"]
    assert all(len(r.samples) == 4 for r in run.tasks.values())
    margins = [s["margin"] for s in run.tasks["arith-small/self-consistency"].samples]
    assert all(0 <= m <= 1 for m in margins)
    assert main(["prompt-eval", "--model", str(tiny_dir), "--tasks", "arith-small", "--strategies", "zero-shot",
                 "--temperature", "0"]) != 0
    assert "--temperature 0" in capsys.readouterr().err
