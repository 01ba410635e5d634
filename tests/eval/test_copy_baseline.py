"""The copy-the-input baseline of generation tasks: what it answers (sorting: the given numbers in
the given order; other tasks: the prompt read by the task's extractor), its exact match with a
Wilson interval beside the model's in `evaluate` and its report; ROUGE-L where answers are word
sequences; and `num_beams` reaching the model's generation."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest

from llmkit.eval.baselines import copy_input, task_baselines
from llmkit.eval.runner import evaluate, format_summary
from tests.peers import peer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


@dataclass
class Ex:
    id: str
    prompt: str
    answer: str
    choices: tuple = ()
    meta: dict = field(default_factory=dict)


SORTING = [Ex("a", "Sort these numbers in ascending order: 1 20 30\nAnswer:", "1 20 30"),
           Ex("b", "Sort these numbers in ascending order: 30 1 20\nAnswer:", "1 20 30")]


def test_copying_a_sorting_question_gives_its_numbers_in_their_order():
    copied = copy_input("sorting", SORTING, "first_line")
    assert copied["answers"] == ["1 20 30", "30 1 20"]
    assert copied["exact_match"] == 0.5 and copied["n"] == 2
    assert copied["ci"] == pytest.approx([0.0945, 0.9055], abs=1e-4)  # Wilson's 95% interval of 1 in 2, by hand


def test_copying_an_arith_question_answers_its_last_number():
    examples = [Ex("a", "Question: What is 0 + 7?\nAnswer:", "7"), Ex("b", "Question: What is 5 + 7?\nAnswer:", "12"),
                Ex("c", "Question: What is 1 x 9?\nAnswer:", "9")]
    copied = copy_input("arith", examples, "last_number")
    assert copied["answers"] == ["7", "7", "9"] and copied["exact_match"] == pytest.approx(2 / 3)
    assert "rougeL" not in copied  # one-number answers: ROUGE-L would only repeat exact match


def test_the_copy_baseline_of_the_builtin_tasks_counts_what_copying_gets_right():
    from llmkit.data.tasks import load_task

    test = load_task("sorting", "test")
    ascending = sum(re.findall(r"\d+", ex.prompt.split("\n")[0]) == ex.answer.split() for ex in test)
    base = task_baselines("sorting")
    assert base["copy"] == ascending / len(test) and base["copy_ci"][0] < base["copy"] < base["copy_ci"][1]
    assert "copy" not in task_baselines("sentiment")  # multiple choice: nothing to copy


def test_rouge_l_credits_a_partly_right_order():
    peer("rouge_score")
    # "30 1 20" against "1 20 30": the longest common subsequence "1 20" is 2 of 3 words each way
    assert copy_input("sorting", SORTING, "first_line")["rougeL"] == pytest.approx((1 + 2 / 3) / 2)


class Sorter:
    """Sorts the numbers of the prompt's first line, and records the generation options."""

    name = "sorter"

    def __init__(self):
        self.options = []

    def generate(self, prompts, **kwargs):
        self.options.append(kwargs)
        return [" ".join(sorted(re.findall(r"\d+", p.split("\n")[0]), key=int)) for p in prompts]


def test_evaluate_reports_the_copy_baseline_beside_the_model_and_passes_num_beams():
    llm = Sorter()
    run = evaluate(llm, ["sorting"], limit=40, batch_size=64)
    rec = run.tasks["sorting"]
    assert rec.value == 1.0 and "num_beams" not in llm.options[0]  # greedy unless asked
    copy = rec.baselines["copy"]
    assert copy["exact_match"] == task_baselines("sorting", limit=40)["copy"] and copy["n"] == 40
    row = next(line for line in format_summary(run).splitlines() if line.startswith("| sorting |"))
    assert f"{copy['exact_match']:.4f} [{copy['ci'][0]:.4f}, {copy['ci'][1]:.4f}]" in row

    beams = evaluate(llm, ["sorting"], limit=4, num_beams=4)
    assert llm.options[-1]["num_beams"] == 4 and beams.settings.num_beams == 4
    with pytest.raises(ValueError, match="num_beams"):
        evaluate(llm, ["sorting"], num_beams=0)
