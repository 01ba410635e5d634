"""Eval charts and chance levels: scores where higher is better and metrics where lower is better
are drawn on separate charts (recorded in results.json), a chart with nothing to draw is not
written nor linked, and every task's chance level (1 / number of choices for multiple choice,
computed here from the task data) is stored in results.json and shown in report.md."""

import json
import math
import re
from fractions import Fraction

import pytest

import llmkit
from llmkit.cli.main import main
from llmkit.data.tasks import load_task
from llmkit.eval.runner import EvalRun, EvalSettings, TaskRecord, evaluate, load_run

PNG = b"\x89PNG\r\n\x1a\n"
LIMIT = 4

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


@pytest.fixture(scope="module")
def llm(tiny_dirs):
    return llmkit.load(tiny_dirs["tiny-llama"])


@pytest.fixture(scope="module")
def mixed(llm):
    """Two multiple-choice tasks, a perplexity task and a generation task, scored once."""
    return evaluate(llm, ["sentiment", "stdlib-qa", "perplexity", "arith"], limit=LIMIT, batch_size=4,
                    max_new_tokens=4)


def summary_rows(report: str) -> dict[str, dict[str, str]]:
    """report.md's summary table as {task: {column: cell}}."""
    lines = [line for line in report.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]
    return {row["task"]: row for row in rows}


def linked_images(report: str) -> set[str]:
    return set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report))


def chance_from_data(task: str) -> float:
    """1 / number of choices, averaged over the scored questions, from the task's own data."""
    examples = load_task(task, "test")[:LIMIT]
    return float(sum(Fraction(1, len(ex.choices)) for ex in examples) / len(examples))


def test_accuracy_and_perplexity_go_on_separate_charts(mixed, llm, tmp_path):
    out = mixed.write(tmp_path / "eval")
    data = json.loads((out / "results.json").read_text())
    charts = data["charts"]
    assert set(charts) == {"higher_is_better", "lower_is_better"}
    for kind, chart in charts.items():
        assert chart["file"] == f"charts/{kind}.png" and (out / chart["file"]).read_bytes()[:8] == PNG
    higher, lower = charts["higher_is_better"]["metrics"], charts["lower_is_better"]["metrics"]
    assert set(higher) == {"sentiment", "stdlib-qa", "arith"} and lower == {"perplexity": ["bits_per_byte"]}
    # nothing where lower is better sits on the score bars, and every score bar is in [0, 1]
    for task, metrics in higher.items():
        assert data["tasks"][task]["higher_is_better"] and metrics[0] == data["tasks"][task]["primary"]
        assert not {"calibration_error", "perplexity", "bits_per_byte", "n", "no_answer"} & set(metrics)
        assert all(0 <= data["tasks"][task]["metrics"][m] <= 1 for m in metrics)
    assert data["tasks"]["perplexity"]["higher_is_better"] is False
    report = (out / "report.md").read_text()
    assert linked_images(report) == {"charts/higher_is_better.png", "charts/lower_is_better.png"}
    assert sorted(p.name for p in (out / "charts").iterdir()) == ["higher_is_better.png", "lower_is_better.png"]


def test_chance_levels_in_results_and_report(mixed, llm, tmp_path):
    out = mixed.write(tmp_path / "eval")
    tasks = json.loads((out / "results.json").read_text())["tasks"]
    expected = {"sentiment": chance_from_data("sentiment"), "stdlib-qa": chance_from_data("stdlib-qa")}
    assert expected["sentiment"] == pytest.approx(1 / 3) and expected["stdlib-qa"] == pytest.approx(1 / 4)
    for task, chance in expected.items():
        assert tasks[task]["chance"] == pytest.approx(chance, abs=1e-12)
    # bits per byte of a uniform guess over V tokens: the model's own bits per byte scaled by
    # ln V / ln perplexity (both measure the same tokens and bytes)
    ppl = tasks["perplexity"]["metrics"]
    uniform = ppl["bits_per_byte"] * math.log(llm.config.vocab_size) / math.log(ppl["perplexity"])
    assert tasks["perplexity"]["chance"] == pytest.approx(uniform, rel=1e-9)
    assert tasks["arith"]["chance"] is None  # an open answer has no chance level
    rows = summary_rows((out / "report.md").read_text())
    assert rows["sentiment"]["chance"] == f"{expected['sentiment']:.4f}"
    assert rows["stdlib-qa"]["chance"] == f"{expected['stdlib-qa']:.4f}"
    assert rows["perplexity"]["chance"] == f"{uniform:.4f}"
    assert rows["arith"]["chance"] == "—"


def test_chance_averages_a_varying_number_of_choices(llm, tmp_path):
    rows = [{"id": "q3", "question": "Which is a colour?", "choices": {"text": ["red", "two", "run"],
             "label": ["A", "B", "C"]}, "answerKey": "A"},
            {"id": "q5", "question": "Which is a number?", "choices": {"text": ["cat", "five", "blue", "sky", "up"],
             "label": ["A", "B", "C", "D", "E"]}, "answerKey": "B"}]
    (tmp_path / "ARC-Easy-Test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = evaluate(llm, ["arc-easy"], data_dir=tmp_path)
    assert run.tasks["arc-easy"].chance == pytest.approx((1 / 3 + 1 / 5) / 2)


def test_only_accuracy_tasks_write_no_lower_is_better_chart(mixed, llm, tmp_path):
    only_mc = evaluate(llm, ["sentiment"], limit=3, batch_size=4)
    for out in (tmp_path / "fresh", tmp_path / "reused"):
        if out.name == "reused":
            mixed.write(out)  # an earlier run's lower-is-better chart must not outlive this run
            assert (out / "charts" / "lower_is_better.png").is_file()
        only_mc.write(out)
        assert not (out / "charts" / "lower_is_better.png").exists()
        assert (out / "charts" / "higher_is_better.png").read_bytes()[:8] == PNG
        assert set(json.loads((out / "results.json").read_text())["charts"]) == {"higher_is_better"}
        assert linked_images((out / "report.md").read_text()) == {"charts/higher_is_better.png"}


def test_a_run_with_nothing_to_chart_writes_no_chart(tmp_path):
    # a perplexity task whose texts were all empty: no finite value to draw
    rec = TaskRecord("perplexity", "perplexity", {"bits_per_byte": math.nan, "n": 0}, "bits_per_byte", False,
                     (math.nan, math.nan), 0.0, [])
    EvalRun("m", EvalSettings(["perplexity"]), {"perplexity": rec}).write(tmp_path)
    assert not (tmp_path / "charts").exists()
    assert json.loads((tmp_path / "results.json").read_text())["charts"] == {}
    assert linked_images((tmp_path / "report.md").read_text()) == set()


def test_results_from_before_chance_still_load_and_compare(tmp_path, capsys):
    """results.json files written before chance and charts were recorded: no `chance` per task and
    no top-level `charts`."""
    for name, correct in (("old", 6), ("new", 2)):
        samples = [{"id": f"s{i}", "score": float(i < correct)} for i in range(10)]
        old = {"model": "m", "created": "", "settings": {"tasks": ["sentiment"], "shots": 0, "seed": 0,
               "split": "test", "limit": None, "data_dir": None, "batch_size": 16, "chain_of_thought": False,
               "code_samples": 1, "max_new_tokens": None, "chat": False},
               "tasks": {"sentiment": {"task": "sentiment", "kind": "multiple_choice",
                                       "metrics": {"acc": correct / 10, "n": 10}, "primary": "acc",
                                       "higher_is_better": True, "ci": [0.0, 1.0], "seconds": 0.1,
                                       "samples": samples}}}
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(old))
    run = load_run(tmp_path / "old")
    assert run.tasks["sentiment"].chance is None
    assert main(["compare", str(tmp_path / "old"), str(tmp_path / "new")]) == 0
    table = capsys.readouterr().out
    assert "| sentiment | acc | 0.6000 | 0.2000 | -0.4000 |" in table
    run.write(tmp_path / "rewritten")  # an old run's report says chance is unknown, not 0
    assert summary_rows((tmp_path / "rewritten" / "report.md").read_text())["sentiment"]["chance"] == "—"
