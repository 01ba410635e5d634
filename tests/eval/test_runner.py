"""The eval runner end to end: built-in tasks on a tiny model, results.json / report.md / charts,
scores that follow the answers (a scripted model that knows arithmetic gets them all), batch-size
independence, compare with bootstrap regression flags, and the `llmkit eval` / `compare` verbs."""

import json
import re

import pytest

import llmkit
from llmkit.cli.main import main
from llmkit.data.config import DataError
from llmkit.eval.runner import EvalRun, EvalSettings, TaskRecord, compare, evaluate, format_comparison, load_run

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


@pytest.fixture(scope="module")
def llm(tiny_dirs):
    return llmkit.load(tiny_dirs["tiny-llama"])


class Calculator:
    """Answers 'What is a op b?' right (or off by one, or with words only), for scoring checks."""

    def __init__(self, mode="right"):
        self.mode, self.name = mode, f"calc-{mode}"

    def generate(self, prompts, **kwargs):
        outs = []
        for p in prompts:
            a, op, b = re.findall(r"What is (-?\d+) ([-+x*×]) (-?\d+)\?", p)[-1]  # the last question: after the shots
            value = {"+": int(a) + int(b), "-": int(a) - int(b)}.get(op, int(a) * int(b))
            outs.append({"right": f" {value}", "wrong": f" {value + 1}", "words": " no idea"}[self.mode])
        return outs


def test_scores_follow_the_answers():
    examples = None
    for mode, em in (("right", 1.0), ("wrong", 0.0), ("words", 0.0)):
        run = evaluate(Calculator(mode), ["arith"], shots=2, limit=20)
        rec = run.tasks["arith"]
        assert rec.metrics["exact_match"] == em and rec.metrics["n"] == 20
        assert rec.metrics["no_answer"] == (20 if mode == "words" else 0)  # counted, not crashed
        examples = examples or [s["prompt"] for s in rec.samples]
        assert [s["prompt"] for s in rec.samples] == examples  # same seed, same shots


def test_evaluate_writes_results_report_and_charts(llm, tmp_path):
    run = evaluate(llm, ["arith", "sentiment", "perplexity", "code"], shots=1, limit=4, batch_size=4,
                   max_new_tokens=8)
    out = run.write(tmp_path / "eval")
    data = json.loads((out / "results.json").read_text())
    assert set(data["tasks"]) == {"arith", "sentiment", "perplexity", "code"}
    for name, rec in data["tasks"].items():
        assert len(rec["samples"]) == 4 and all("score" in s for s in rec["samples"])
        assert rec["ci"][0] <= rec["metrics"][rec["primary"]] + 1e-9 or rec["kind"] == "perplexity"
    for kind in ("higher_is_better", "lower_is_better"):
        assert (out / "charts" / f"{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all("prompt" in s and "output" in s for s in data["tasks"]["arith"]["samples"])
    assert data["tasks"]["sentiment"]["samples"][0]["choices"] == ["positive", "negative", "neutral"]
    report = (out / "report.md").read_text()
    assert "| sentiment | multiple_choice | acc" in report and "](charts/lower_is_better.png)" in report
    again = load_run(out)
    assert again.tasks["arith"].metrics == run.tasks["arith"].metrics and again.settings.shots == 1


def test_results_do_not_depend_on_batch_size(llm):
    kw = dict(shots=1, limit=6, max_new_tokens=6)
    one, many = evaluate(llm, ["arith", "sentiment"], batch_size=1, **kw), evaluate(llm, ["arith", "sentiment"], batch_size=8, **kw)
    for task in ("arith", "sentiment"):
        # counts and accuracies exactly; calibration error to float noise (log-likelihoods move ~1e-7)
        assert one.tasks[task].metrics == pytest.approx(many.tasks[task].metrics, abs=1e-6)
        assert {k: v for k, v in one.tasks[task].metrics.items() if k != "calibration_error"} == \
            {k: v for k, v in many.tasks[task].metrics.items() if k != "calibration_error"}
        assert [s.get("output", s.get("prediction")) for s in one.tasks[task].samples] == \
            [s.get("output", s.get("prediction")) for s in many.tasks[task].samples]


def test_bad_task_names_and_missing_data_dir(llm):
    with pytest.raises(DataError, match="unknown task 'aritm'.*arith"):
        evaluate(llm, ["arith", "aritm"])
    with pytest.raises(ValueError, match="mmlu.*data_dir"):
        evaluate(llm, ["mmlu"])


def run_of(scores, task="t", higher=True, ids=None):
    samples = [{"id": ids[i] if ids else f"s{i}", "score": s} for i, s in enumerate(scores)]
    value = sum(scores) / len(scores)
    rec = TaskRecord(task, "multiple_choice" if higher else "perplexity", {"acc" if higher else "bits_per_byte": value,
                     "n": len(scores)}, "acc" if higher else "bits_per_byte", higher, (value, value), 0.0, samples)
    return EvalRun("m", EvalSettings([task]), {task: rec})


def test_compare_flags_only_changes_beyond_the_noise():
    base = [1.0] * 60 + [0.0] * 40
    worse = [1.0] * 35 + [0.0] * 65  # 25 answers lost
    noisy = base[:]
    noisy[0], noisy[99] = 0.0, 1.0  # one flipped each way
    (reg,) = compare(run_of(base), run_of(worse))
    assert reg.verdict == "regression" and reg.paired and reg.delta == pytest.approx(-0.25) and reg.ci[1] < 0
    (same,) = compare(run_of(base), run_of(noisy))
    assert same.verdict == "within noise" and same.ci[0] < 0 < same.ci[1]
    (imp,) = compare(run_of(worse), run_of(base))
    assert imp.verdict == "improvement"
    # lower is better for bits per byte: a rise is the regression
    (ppl,) = compare(run_of([1.0] * 50, higher=False), run_of([1.2] * 50, higher=False))
    assert ppl.verdict == "regression"
    (unpaired,) = compare(run_of(base), run_of(worse, ids=[f"x{i}" for i in range(100)]))
    assert not unpaired.paired and unpaired.verdict == "regression"
    assert "**REGRESSION**" in format_comparison([reg])


def test_eval_and_compare_commands(tiny_dirs, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for model, out in ((tiny_dirs["tiny-llama"], a), (tiny_dirs["tiny-gpt2"], b)):
        assert main(["eval", "--model", str(model), "--tasks", "arith,stdlib-qa", "--limit", "5", "--shots", "1",
                     "--max-new-tokens", "6", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| arith | generation | exact_match" in printed and "stdlib-qa" in printed
    assert (a / "results.json").is_file() and (b / "report.md").is_file()
    assert main(["compare", str(a), str(b)]) == 0
    table = capsys.readouterr().out
    assert "| arith | exact_match |" in table and "| stdlib-qa | acc |" in table
    assert main(["eval", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "sentiment" in listing and "mmlu" in listing and "needs --data-dir" in listing
    assert main(["eval", "--model", str(tiny_dirs["tiny-llama"]), "--tasks", "nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_compare_command_fails_on_regression_when_asked(tmp_path, capsys):
    base, worse = run_of([1.0] * 60 + [0.0] * 40), run_of([0.0] * 100)
    for run, name in ((base, "base"), (worse, "worse")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(run.to_json()))
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "worse")]) == 0
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "worse"), "--fail-on-regression"]) == 1
    assert "regressions beyond the noise" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "nothing")]) == 2
