"""Built-in tasks (fixed, disjoint splits; answers that are right) and the loaders of the standard
formats on small files in their real layouts, with errors that name the file, line and field."""

import importlib
import inspect
import json
import re
from collections import Counter

import pytest

from llmkit.data import DataError, get_task, list_tasks, load_task
from llmkit.eval.sandbox import run_code

BUILTIN = ["arith", "sorting", "stdlib-qa", "sentiment", "perplexity", "code"]


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_splits_are_fixed_disjoint_and_well_formed(name):
    splits = {s: load_task(name, s) for s in ("train", "dev", "test")}
    assert all(splits.values())
    ids = [ex.id for exs in splits.values() for ex in exs]
    assert len(ids) == len(set(ids))
    prompts = [set(ex.prompt for ex in exs) for exs in splits.values()]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    spec = get_task(name)
    for ex in splits["test"]:
        assert ex.prompt == ex.prompt.rstrip(" ")
        if spec.kind == "multiple_choice":
            assert ex.answer in ex.choices and len(set(ex.choices)) == len(ex.choices) >= 3
    assert load_task(name, "test") == splits["test"]  # same examples every time


def test_fixed_sizes():
    sizes = {n: [len(load_task(n, s)) for s in ("train", "dev", "test")] for n in BUILTIN}
    assert sizes["arith"] == [2000, 200, 200] and sizes["sorting"] == [1000, 100, 100]
    assert sizes["sentiment"] == [84, 12, 24] and sum(sizes["code"]) == 24 and sum(sizes["perplexity"]) == 24
    assert sum(sizes["stdlib-qa"]) > 200


def test_arith_and_sorting_answers_are_right():
    for ex in load_task("arith", "test") + load_task("arith", "dev"):
        a, op, b = re.fullmatch(r"Question: What is (\d+) ([-+x]) (\d+)\?\nAnswer:", ex.prompt).groups()
        assert int(ex.answer) == {"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b)}[op]
    for ex in load_task("sorting", "test"):
        nums = [int(x) for x in ex.prompt.split(":")[1].split("\n")[0].split()]
        assert ex.answer == " ".join(map(str, sorted(nums)))


def test_stdlib_answers_come_from_their_docstrings():
    checked = 0
    for ex in load_task("stdlib-qa", "test"):
        module = importlib.import_module(ex.meta["module"])
        fn = getattr(module, ex.answer, None)
        if fn is None:  # removed in this Python: the shipped split stays fixed anyway
            continue
        doc = (inspect.getdoc(fn) or "").split("\n")[0].strip()
        if doc == ex.meta["doc"]:
            checked += 1
            assert f'"{doc}"' in ex.prompt
            assert all(getattr(module, c, None) is not None for c in ex.choices)
    assert checked >= 30


def test_sentiment_is_balanced():
    for split in ("train", "dev", "test"):
        counts = Counter(ex.answer for ex in load_task("sentiment", split))
        assert set(counts) == {"positive", "negative", "neutral"} and len(set(counts.values())) == 1


def test_code_reference_solutions_pass_and_wrong_ones_fail():
    examples = [ex for s in ("train", "dev", "test") for ex in load_task("code", s)]
    for ex in examples:
        assert ex.meta["entry_point"] in ex.prompt
        assert run_code(ex.prompt + ex.answer + "\n" + ex.meta["tests"] + "\n").passed, ex.id
    for ex in examples[:3]:
        assert run_code(ex.prompt + "    return None\n\n" + ex.meta["tests"] + "\n").status == "failed", ex.id


def test_unknown_task_and_split():
    with pytest.raises(DataError, match="unknown task 'sentimnet': known tasks are arith, sorting"):
        get_task("sentimnet")
    with pytest.raises(DataError, match="split 'validation'.*train, dev, test"):
        load_task("arith", "validation")
    with pytest.raises(DataError, match="reads local files.*MMLU CSV"):
        load_task("mmlu")
    assert {"mmlu", "hellaswag", "arc-easy", "arc-challenge", "gsm8k"} <= set(list_tasks())


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_mmlu_csv(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "dev").mkdir()
    (tmp_path / "test" / "high_school_physics_test.csv").write_text(
        '"What is 1, plus 1?",1,2,3,4,B\nWhich is a vector?,speed,mass,velocity,time,C\n')
    (tmp_path / "dev" / "high_school_physics_dev.csv").write_text("Q,a,b,c,d,A\n")
    test = load_task("mmlu", "test", tmp_path)
    assert [ex.answer for ex in test] == ["B", "C"] and test[0].choices == ("A", "B", "C", "D")
    assert test[0].prompt == ("The following are multiple choice questions (with answers) about high school physics."
                              "\n\nWhat is 1, plus 1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:")
    assert len(load_task("mmlu", "train", tmp_path)) == 1
    (tmp_path / "test" / "bad_test.csv").write_text("Q,a,b,c,d,A\nQ2,a,b,c,d,E\n")
    with pytest.raises(DataError, match="bad_test.csv line 2: field 'answer' must be A, B, C or D, got 'E'"):
        load_task("mmlu", "test", tmp_path)
    with pytest.raises(DataError, match="no .*val/\\*_val.csv"):
        load_task("mmlu", "dev", tmp_path)


def test_hellaswag_jsonl(tmp_path):
    write_jsonl(tmp_path / "hellaswag_val.jsonl", [
        {"ind": 4, "activity_label": "Baking cookies", "ctx": "A woman pours flour [title] into a bowl.",
         "endings": ["she stirs it.", "the car drives off.", "a dog sings.", "it rains."], "label": 0},
        {"ind": 5, "activity_label": "Rope", "ctx_a": "A man climbs.", "ctx_b": "he", "endings": ["a", "b", "c", "d"],
         "label": "2"}])
    dev = load_task("hellaswag", "dev", tmp_path)
    assert dev[0].prompt == "Baking cookies: A woman pours flour. into a bowl." and dev[0].answer == "she stirs it."
    assert dev[1].prompt == "Rope: A man climbs. He" and dev[1].answer == "c" and dev[1].id == "hellaswag-dev-5"
    write_jsonl(tmp_path / "hellaswag_val.jsonl", [{"ctx": "x", "endings": 3, "label": 0}])
    with pytest.raises(DataError, match="hellaswag_val.jsonl line 1: field 'endings' must be list, got int"):
        load_task("hellaswag", "dev", tmp_path)
    write_jsonl(tmp_path / "hellaswag_val.jsonl", ["{not json"])
    with pytest.raises(DataError, match="line 1: not JSON"):
        load_task("hellaswag", "dev", tmp_path)


def test_arc_both_forms(tmp_path):
    write_jsonl(tmp_path / "ARC-Easy" / "ARC-Easy-Test.jsonl", [
        {"id": "Q1", "question": {"stem": "What melts ice?", "choices": [
            {"text": "heat", "label": "A"}, {"text": "cold", "label": "B"}, {"text": "dark", "label": "C"}]},
         "answerKey": "A"}])
    write_jsonl(tmp_path / "ARC-Challenge-Test.jsonl", [
        {"id": "Q2", "question": "Which is a planet?", "choices": {"text": ["Sun", "Mars", "Moon", "Comet"],
                                                                   "label": ["1", "2", "3", "4"]}, "answerKey": "2"}])
    (easy,) = load_task("arc-easy", "test", tmp_path)
    assert (easy.id, easy.prompt, easy.answer) == ("Q1", "Question: What melts ice?\nAnswer:", "heat")
    (hard,) = load_task("arc-challenge", "test", tmp_path)
    assert hard.answer == "Mars" and hard.choices == ("Sun", "Mars", "Moon", "Comet")
    write_jsonl(tmp_path / "ARC-Challenge-Test.jsonl", [{"question": "q", "choices": {"text": ["a"], "label": ["A"]},
                                                         "answerKey": "E"}])
    with pytest.raises(DataError, match="line 1: field 'answerKey' is 'E'"):
        load_task("arc-challenge", "test", tmp_path)
    with pytest.raises(DataError, match="no file ARC-Easy-Dev.jsonl"):
        load_task("arc-easy", "dev", tmp_path)


def test_gsm8k(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", [{"question": "Tom has 3 apples and buys 1,200 more. How many?",
                                           "answer": "3 + 1200 = <<3+1200=1203>>1203\n#### 1,203"}])
    write_jsonl(tmp_path / "train.jsonl", [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(250)])
    (ex,) = load_task("gsm8k", "test", tmp_path)
    assert ex.answer == "1203" and ex.meta["solution"].startswith("3 + 1200")
    assert len(load_task("gsm8k", "dev", tmp_path)) == 200 and len(load_task("gsm8k", "train", tmp_path)) == 50
    write_jsonl(tmp_path / "test.jsonl", [{"question": "q", "answer": "no marker"}])
    with pytest.raises(DataError, match="test.jsonl line 1: field 'answer' must end with '#### <number>'"):
        load_task("gsm8k", "test", tmp_path)
    write_jsonl(tmp_path / "test.jsonl", [{"answer": "#### 1"}])
    with pytest.raises(DataError, match="line 1: field 'question' is missing"):
        load_task("gsm8k", "test", tmp_path)
