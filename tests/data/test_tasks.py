"""Built-in tasks (fixed, disjoint splits; answers that are right) and the loaders of the standard
formats on small files in their real layouts, with errors that name the file, line and field."""

import hashlib
import importlib
import json
import re
from collections import Counter, defaultdict

import pytest

from llmkit.data import DataError, TaskExample, get_task, list_tasks, load_task, task_splits
from llmkit.data import build_tasks
from llmkit.eval.sandbox import run_code

BUILTIN = ["arith", "arith-small", "sorting", "stdlib-qa", "sentiment", "perplexity", "code"]
LOADERS = ["mmlu", "hellaswag", "arc-easy", "arc-challenge", "gsm8k", "corpus"]
SPLITS = ("train", "dev", "test")
SIZES = {"arith": [2000, 200, 200], "arith-small": [250, 150, 350], "sorting": [1000, 100, 100], "stdlib-qa": [518, 90, 152],
         "sentiment": [210, 30, 60], "perplexity": [24, 8, 16], "code": [10, 5, 15]}


def all_examples(name):
    return [ex for split in SPLITS for ex in load_task(name, split)]


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_splits_are_fixed_disjoint_and_well_formed(name):
    splits = {s: load_task(name, s) for s in SPLITS}
    assert [len(splits[s]) for s in SPLITS] == SIZES[name]
    ids = [ex.id for exs in splits.values() for ex in exs]
    assert len(ids) == len(set(ids))
    prompts = [{ex.prompt for ex in exs} for exs in splits.values()]
    assert sum(map(len, prompts)) == len(ids)  # no prompt twice, inside a split or across splits
    spec = get_task(name)
    for ex in splits["train"] + splits["test"]:
        assert isinstance(ex, TaskExample) and ex.prompt == ex.prompt.rstrip(" ") and ex.prompt
        if spec.kind == "multiple_choice":
            assert ex.answer in ex.choices and len(set(ex.choices)) == len(ex.choices) >= 3
            assert all(c == c.strip() and c for c in ex.choices)  # scored as " " + choice
        elif spec.kind == "perplexity":
            assert ex.answer == "" and 60 <= len(ex.prompt.split()) <= 200
        else:
            assert ex.answer and not ex.choices
    assert load_task(name, "test") == splits["test"]  # the same examples every time
    if name == "arith":  # 1600 more held-out questions, disjoint from the other splits
        heldout = {ex.prompt for ex in load_task(name, "heldout")}
        assert len(heldout) == 1600 and not heldout & set().union(*prompts)
    else:
        assert task_splits(name) == SPLITS
        with pytest.raises(DataError, match="heldout"):
            load_task(name, "heldout")


def fingerprint(name):
    text = "".join(json.dumps([s, ex.id, ex.prompt, ex.answer, ex.choices, ex.meta], sort_keys=True) + "\n"
                   for s in SPLITS for ex in load_task(name, s))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_generated_tasks_regenerate_identically():
    """arith and sorting come from seeded generators: the shipped files are exactly what they make."""
    for name, build in (("arith", build_tasks.arith), ("sorting", build_tasks.sorting),
                        ("arith-small", build_tasks.arith_small)):
        made = build()
        assert sorted(made) == sorted(task_splits(name))  # arith also ships heldout
        for split in task_splits(name):
            shipped = [(ex.id, ex.prompt, ex.answer) for ex in load_task(name, split)]
            assert shipped == [(r["id"], r["prompt"], r["answer"]) for r in made[split]], (name, split)


def test_fresh_training_examples_never_touch_the_held_out_splits():
    """data.builtin_train_size draws many more training examples from the same generators:
    distinct, right, deterministic, and none of them a dev, test or (arith) heldout question."""
    for name, pattern in (("arith", r"Question: What is (\d+) ([-+x]) (\d+)\?\nAnswer:"),
                          ("sorting", r"Sort these numbers in ascending order: ([\d ]+)\nAnswer:")):
        fresh = build_tasks.fresh_train(name, 5000)
        held = {ex.prompt for split in ("dev", "test", "heldout")[:3 if name == "arith" else 2]
                for ex in load_task(name, split)}
        prompts = [r["prompt"] for r in fresh]
        assert len(set(prompts)) == 5000 and not held & set(prompts)
        assert fresh == build_tasks.fresh_train(name, 5000)
        for r in fresh[:500]:
            assert re.fullmatch(pattern, r["prompt"])
        if name == "arith":  # same distribution as the shipped train split: 5000 of 20100 hit ~500 of its 2000
            assert len({ex.prompt for ex in load_task(name, "train")} & set(prompts)) > 200
    with pytest.raises(ValueError, match="only 20100 distinct questions outside its dev, test, heldout"):
        build_tasks.fresh_train("arith", 30000)
    with pytest.raises(ValueError, match="not generated"):
        build_tasks.fresh_train("sentiment", 10)
    from llmkit.data.instruct import builtin_instructions

    chats = builtin_instructions("train", ["sorting", "sentiment"], train_size=3000)
    assert len(chats) == 3000 + len(load_task("sentiment", "train"))  # sentiment keeps its shipped split
    ex = next(r for r in build_tasks.fresh_train("sorting", 1))
    assert chats[0] == [{"role": "user", "content": ex["prompt"]}, {"role": "assistant", "content": ex["answer"]}]


def test_shipped_splits_do_not_drift():
    """A change to any built-in task (a regenerated stdlib-qa, an edited review) must be deliberate:
    update these fingerprints in the same commit."""
    assert {name: fingerprint(name) for name in BUILTIN} == {
        "arith": "4233b768c570caf1", "arith-small": "dab2739983fe6cef", "sorting": "6e6c78be23c683d4", "stdlib-qa": "2fd7f3f05f67014f",
        "sentiment": "82c6016f433c1dfc", "perplexity": "5f25471d0dc50f04", "code": "46283cd4de035267"}


def test_arith_and_sorting_answers_are_right():
    ops = Counter()
    for ex in all_examples("arith"):
        a, op, b = re.fullmatch(r"Question: What is (\d+) ([-+x]) (\d+)\?\nAnswer:", ex.prompt).groups()
        assert int(ex.answer) == {"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b)}[op], ex.id
        ops[op] += 1
    assert min(ops.values()) > 500  # all three operations are well represented
    small = {ex.prompt: ex.answer for ex in all_examples("arith-small")}
    assert len(small) == 31 * 10 * 2 + 13 * 10  # every question of its kind, each once
    for prompt, answer in small.items():
        a, op, b = re.fullmatch(r"Question: What is (\d+) ([-+x]) (\d+)\?\nAnswer:", prompt).groups()
        assert int(answer) == {"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b)}[op], prompt
        assert int(b) <= 9 and int(a) <= (12 if op == "x" else 30)
    for ex in all_examples("sorting"):
        nums = re.fullmatch(r"Sort these numbers in ascending order: ([\d ]+)\nAnswer:", ex.prompt).group(1).split()
        assert 3 <= len(nums) <= 7
        assert ex.answer == " ".join(map(str, sorted(map(int, nums)))), ex.id


def test_stdlib_answers_come_from_their_docstrings():
    """The quoted docstring is the answer's own (where this Python has not reworded it), never a
    distractor's, and it does not give the name away."""
    checked, examples = 0, all_examples("stdlib-qa")
    for ex in examples:
        module_name = ex.meta["module"]
        assert ex.id == f"stdlib-qa-{module_name}.{ex.answer}"
        doc = re.fullmatch(r"Question: Which (?:function|class) of the `[\w.]+` module does this describe: "
                           r"\"(.+)\"\nAnswer:", ex.prompt).group(1)
        assert ex.answer.lower() not in doc.lower()
        module = importlib.import_module(module_name)
        live = {}  # the first sentence of each choice's docstring in this Python, where it still exists
        for name in ex.choices:
            obj = getattr(module, name, None)
            if obj is not None:
                live[name] = build_tasks.first_sentence(vars(obj).get("__doc__") if isinstance(obj, type)
                                                        else obj.__doc__)
                assert name == ex.answer or obj is not getattr(module, ex.answer, None), (ex.id, name)
        assert not [name for name, text in live.items() if text == doc and name != ex.answer], ex.id
        if live.get(ex.answer) == doc:
            checked += 1
            kind = "class" if isinstance(getattr(module, ex.answer), type) else "function"
            assert ex.meta["kind"] == kind and f"Which {kind} of the `{module_name}`" in ex.prompt
    assert checked >= len(examples) // 2
    per_module = Counter(ex.meta["module"] for ex in examples)
    assert len(per_module) >= 40 and max(per_module.values()) <= build_tasks.PER_MODULE


def test_first_sentence():
    assert build_tasks.first_sentence("Return the\n    final part.  More here.\n\nDetails.") == "Return the final part."
    assert build_tasks.first_sentence("No full stop") == "No full stop"
    assert build_tasks.first_sentence(None) == ""


def test_sentiment_is_balanced_and_topics_stay_in_one_split():
    topics = defaultdict(set)
    for split in SPLITS:
        examples = load_task("sentiment", split)
        counts = Counter(ex.answer for ex in examples)
        assert set(counts) == {"positive", "negative", "neutral"} and len(set(counts.values())) == 1, split
        for ex in examples:
            assert ex.choices == ("positive", "negative", "neutral")
            assert ex.prompt.startswith("Review: ") and ex.prompt.endswith("\nSentiment:")
            topics[ex.id.rsplit("-", 1)[1]].add(split)
    # the three reviews of one product or place never straddle splits (no near-duplicate leaks)
    assert all(len(s) == 1 for s in topics.values()) and len(topics) == 100


def test_code_reference_solutions_pass_and_wrong_ones_fail():
    examples = all_examples("code")
    for ex in examples:
        entry = ex.meta["entry_point"]
        assert ex.prompt.startswith(f"def {entry}(") and ex.prompt.endswith('"""\n'), ex.id
        assert ex.answer.startswith("    ") and f"{entry}(" in ex.meta["tests"]
        result = run_code(ex.prompt + ex.answer + "\n" + ex.meta["tests"] + "\n")
        assert result.passed, (ex.id, result.stderr)
    for ex in examples:  # every task's tests reject a body that does nothing
        assert not run_code(ex.prompt + "    return None\n\n" + ex.meta["tests"] + "\n").passed, ex.id
    by_name = {ex.meta["entry_point"]: ex for ex in examples}
    plausible_but_wrong = {"fizzbuzz": "    return 'Fizz' if n % 3 == 0 else 'Buzz' if n % 5 == 0 else str(n)\n",
                           "reverse_string": "    return s\n", "clamp": "    return min(lo, max(x, hi))\n"}
    for name, body in plausible_but_wrong.items():
        ex = by_name[name]
        assert run_code(ex.prompt + body + "\n" + ex.meta["tests"] + "\n").status == "failed", name


def test_registry_and_errors():
    assert list_tasks() == BUILTIN + LOADERS
    assert [get_task(n).needs_data_dir for n in list_tasks()] == [False] * 7 + [True] * 6
    assert get_task("code").kind == "code" and get_task("code").max_new_tokens == 128
    assert get_task("sorting").extract == "first_line" and get_task("gsm8k").max_new_tokens == 256
    assert get_task("mmlu").fewshot_split == "train"
    with pytest.raises(DataError, match="unknown task 'sentimnet': known tasks are arith, arith-small, sorting, .*, gsm8k, corpus$"):
        get_task("sentimnet")
    with pytest.raises(DataError, match="unknown task 'nope'"):
        load_task("nope")
    with pytest.raises(DataError, match="split 'validation' of task 'arith' does not exist: use one of train, dev, "
                                        "test, heldout \\(validation data is the split 'dev'\\)"):
        load_task("arith", "validation")
    with pytest.raises(DataError, match="split 'eval'.*train, dev, test$"):
        load_task("mmlu", "eval", "/nowhere")
    with pytest.raises(DataError, match="reads local files: give data_dir.*MMLU CSV release"):
        load_task("mmlu")
    with pytest.raises(DataError, match="data_dir /no/such/dir is not a directory. Expected train.jsonl"):
        load_task("gsm8k", "test", "/no/such/dir")


# ------------------------------------------------------------------------------- loaders
def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


def test_mmlu_csv(tmp_path):
    for folder in ("dev", "val", "test"):
        (tmp_path / folder).mkdir()
    (tmp_path / "test" / "high_school_physics_test.csv").write_text(
        '"What is 1, plus 1?",1,2,3,"4, or more",B\n'
        'Which is a vector?,speed,mass,velocity,time,C\n'
        '"A question\nover two lines",a,b,c,d,D\n', encoding="utf-8")
    (tmp_path / "test" / "astronomy_test.csv").write_text("Which is a planet?,Mars,Sun,Moon,Comet,A\n")
    (tmp_path / "dev" / "high_school_physics_dev.csv").write_text("Q,a,b,c,d,A\n")
    (tmp_path / "val" / "astronomy_val.csv").write_text("Q1,a,b,c,d,A\nQ2,a,b,c,d,C\n")
    test = load_task("mmlu", "test", tmp_path)
    assert [ex.answer for ex in test] == ["A", "B", "C", "D"]  # files in name order, rows in file order
    assert [ex.meta["subject"] for ex in test] == ["astronomy"] + ["high_school_physics"] * 3
    physics = test[1]
    assert physics.choices == ("A", "B", "C", "D") and physics.id == "mmlu-high_school_physics-test-1"
    assert physics.prompt == ("The following are multiple choice questions (with answers) about high school physics."
                              "\n\nWhat is 1, plus 1?\nA. 1\nB. 2\nC. 3\nD. 4, or more\nAnswer:")
    assert test[3].prompt.split("\n\n", 1)[1].startswith("A question\nover two lines\nA. a")
    assert len({ex.id for ex in test}) == 4
    assert [len(load_task("mmlu", s, tmp_path)) for s in ("train", "dev")] == [1, 2]
    (tmp_path / "test" / "bad_test.csv").write_text('Q,a,b,c,d,A\n"multi\nline",a,b,c,d,E\n')
    with pytest.raises(DataError, match="bad_test.csv line 2: field 'answer' \\(column 6\\) must be A, B, C or D, "
                                        "got 'E'"):
        load_task("mmlu", "test", tmp_path)
    (tmp_path / "test" / "bad_test.csv").write_text('Q,a,b,c,d,A\n"multi\nline",a,b,c,d,A\nQ3,a,b,A\n')
    with pytest.raises(DataError, match="bad_test.csv line 4: expected 6 columns .* got 4"):
        load_task("mmlu", "test", tmp_path)
    (tmp_path / "val" / "astronomy_val.csv").unlink()
    with pytest.raises(DataError, match="mmlu: no .*val/\\*_val.csv files for split 'dev'. Expected the MMLU CSV"):
        load_task("mmlu", "dev", tmp_path)


HELLASWAG_ROWS = [  # the original release's fields (label an int) ...
    {"ind": 4, "activity_label": "Baking cookies", "ctx_a": "A woman pours flour into a bowl.", "ctx_b": "she",
     "ctx": "A woman pours flour into a bowl. she", "split": "val", "split_type": "indomain", "source_id": "x",
     "endings": ["stirs it with a spoon.", "drives off.", "sings.", "leaves."], "label": 0},
    # ... and the HF datasets' (label a string), with WikiHow's bracketed markers
    {"ind": 5, "activity_label": "Home and Garden", "ctx_a": "[header] How to clean a rug [title] Vacuum it.",
     "ctx_b": "", "endings": ["[step] Beat it outside.", "b", "c", "d"], "label": "0"},
    {"ind": 6, "activity_label": "Rope", "ctx": "A man climbs a rope.", "endings": ["a", "b", "c", "d"],
     "label": "2"},
]


def test_hellaswag_jsonl(tmp_path):
    write_jsonl(tmp_path / "data" / "hellaswag_val.jsonl", HELLASWAG_ROWS)
    dev = load_task("hellaswag", "dev", tmp_path)  # found in the release's data/ folder
    assert dev[0].prompt == "Baking cookies: A woman pours flour into a bowl. She"  # lm-eval: ctx_b capitalised
    assert dev[0].answer == "stirs it with a spoon." and len(dev[0].choices) == 4 and dev[0].id == "hellaswag-dev-4"
    assert dev[1].prompt == "Home and Garden: How to clean a rug. Vacuum it."
    assert dev[1].answer == " Beat it outside."  # exactly lm-eval's preprocess: the marker goes, its space stays
    assert (dev[2].prompt, dev[2].answer) == ("Rope: A man climbs a rope.", "c")
    assert [ex.answer for ex in load_task("hellaswag", "test", tmp_path)] == [ex.answer for ex in dev]
    with pytest.raises(DataError, match="hellaswag: no file hellaswag_train.jsonl in .* or below it. Expected"):
        load_task("hellaswag", "train", tmp_path)
    bad = tmp_path / "data" / "hellaswag_val.jsonl"
    cases = [
        ([HELLASWAG_ROWS[0], {**HELLASWAG_ROWS[2], "endings": 3}],
         "hellaswag_val.jsonl line 2: field 'endings' must be a list of strings, got int"),
        ([{**HELLASWAG_ROWS[2], "endings": ["a", 1]}],
         "line 1: field 'endings' must be a list of strings, got a list holding int, string"),
        ([{**HELLASWAG_ROWS[2], "label": 4}], "line 1: field 'label' must index 'endings' \\(0-3\\), got 4"),
        ([{**HELLASWAG_ROWS[2], "label": ""}], "line 1: field 'label' .* got '' \\(the released test file has no "
                                               "labels: use split dev\\)"),
        ([{**HELLASWAG_ROWS[2], "label": None}], "line 1: field 'label' must be an integer or a string, got null"),
        ([{"endings": ["a"], "label": 0}], "line 1: field 'ctx' is missing \\(fields: endings, label\\)"),
        (["", "{not json"], "hellaswag_val.jsonl line 2: not JSON"),
        (["[1, 2]"], "line 1: expected a JSON object, got list"),
    ]
    for rows, message in cases:
        write_jsonl(bad, rows)
        with pytest.raises(DataError, match=message):
            load_task("hellaswag", "dev", tmp_path)
    bad.write_bytes(json.dumps(HELLASWAG_ROWS[2]).encode() + b"\n\xff\xfe\n")
    with pytest.raises(DataError, match="line 2: not UTF-8"):
        load_task("hellaswag", "dev", tmp_path)


def test_arc_both_forms(tmp_path):
    # AI2's release, in its own subfolder as in ARC-V1-Feb2018
    write_jsonl(tmp_path / "ARC-V1-Feb2018-2" / "ARC-Easy" / "ARC-Easy-Test.jsonl", [
        {"id": "Mercury_7029645", "question": {"stem": "What melts ice?", "choices": [
            {"text": "heat", "label": "A"}, {"text": "cold", "label": "B"}, {"text": "dark", "label": "C"}]},
         "answerKey": "A"},
        {"id": "NYSEDREGENTS_2015_4_5", "question": {"stem": "Which is a liquid at room temperature?", "choices": [
            {"text": "iron", "label": "1"}, {"text": "water", "label": "2"}, {"text": "salt", "label": "3"},
            {"text": "sand", "label": "4"}]}, "answerKey": "2"}])
    # the HF datasets' form
    write_jsonl(tmp_path / "ARC-Challenge-Test.jsonl", [
        {"id": "Q2", "question": "Which is a planet?", "choices": {"text": ["Sun", "Mars", "Moon", "Comet", "Vega"],
                                                                   "label": ["A", "B", "C", "D", "E"]},
         "answerKey": "B"}])
    easy = load_task("arc-easy", "test", tmp_path)
    assert [(ex.id, ex.prompt, ex.answer) for ex in easy] == [
        ("Mercury_7029645", "Question: What melts ice?\nAnswer:", "heat"),
        ("NYSEDREGENTS_2015_4_5", "Question: Which is a liquid at room temperature?\nAnswer:", "water")]
    assert easy[0].choices == ("heat", "cold", "dark")
    (hard,) = load_task("arc-challenge", "test", tmp_path)
    assert hard.answer == "Mars" and hard.choices == ("Sun", "Mars", "Moon", "Comet", "Vega")
    path = tmp_path / "ARC-Challenge-Test.jsonl"
    cases = [
        ({"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "E"},
         "ARC-Challenge-Test.jsonl line 1: field 'answerKey' is 'E', not one of the labels A, B"),
        ({"question": "q", "choices": {"text": "a", "label": ["A"]}, "answerKey": "A"},
         "line 1: field 'choices.text' must be a list of strings, got string"),
        ({"question": "q", "choices": {"text": ["a", "b"], "label": ["A"]}, "answerKey": "A"},
         "line 1: fields 'choices.text' and 'choices.label' must have the same length, got 2 and 1"),
        ({"question": {"choices": []}, "answerKey": "A"}, "line 1: field 'question.stem' is missing"),
        ({"question": {"stem": "q", "choices": [{"text": "a"}]}, "answerKey": "A"},
         "line 1: field 'question.choices' must be a list of"),
        ({"question": 3, "answerKey": "A"}, "line 1: field 'question' must be a string or an object, got int"),
    ]
    for row, message in cases:
        write_jsonl(path, [row])
        with pytest.raises(DataError, match=message):
            load_task("arc-challenge", "test", tmp_path)
    with pytest.raises(DataError, match="arc-easy: no file ARC-Easy-Dev.jsonl .* Expected ARC-Easy-Train.jsonl"):
        load_task("arc-easy", "dev", tmp_path)
    write_jsonl(tmp_path / "copy" / "ARC-Easy-Test.jsonl", [])
    with pytest.raises(DataError, match="2 files named ARC-Easy-Test.jsonl below"):
        load_task("arc-easy", "test", tmp_path)


def test_gsm8k(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", [
        {"question": "Tom has 3 apples and buys 1,200 more. How many?",
         "answer": "He has 3 + 1200 = <<3+1200=1203>>1203 apples.\n#### 1,203"},
        {"question": "A debt of 5 dollars is halved. What is the balance?", "answer": "-5 / 2 = -2.5\n#### -2.5"}])
    write_jsonl(tmp_path / "train.jsonl", [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(250)])
    test = load_task("gsm8k", "test", tmp_path)
    assert [ex.answer for ex in test] == ["1203", "-2.5"]
    assert test[0].prompt == "Question: Tom has 3 apples and buys 1,200 more. How many?\nAnswer:"
    assert test[0].meta["solution"].startswith("He has 3 + 1200") and test[0].choices == ()
    dev, train = load_task("gsm8k", "dev", tmp_path), load_task("gsm8k", "train", tmp_path)
    assert [ex.answer for ex in dev] == [str(i) for i in range(200)]
    assert [ex.answer for ex in train] == [str(i) for i in range(200, 250)]
    assert not {ex.id for ex in dev} & {ex.id for ex in train}
    cases = [
        ({"question": "q", "answer": "no marker"}, "test.jsonl line 1: field 'answer' must end with '#### <number>'"),
        ({"question": "q", "answer": "#### twelve"}, "line 1: field 'answer' must end with .* got '#### twelve'"),
        ({"answer": "#### 1"}, "line 1: field 'question' is missing \\(fields: answer\\)"),
        ({"question": ["q"], "answer": "#### 1"}, "line 1: field 'question' must be a string, got list"),
    ]
    for row, message in cases:
        write_jsonl(tmp_path / "test.jsonl", [row])
        with pytest.raises(DataError, match=message):
            load_task("gsm8k", "test", tmp_path)


def test_corpus_task_is_the_held_out_documents_of_a_prepared_folder(tmp_path, small_tokenizer):
    from llmkit.data import PackedDataset, prepare_data
    from tests.data.helpers import NO_CLEAN, config, make_docs, stream, write_docs

    docs = make_docs(20, length=40, seed=3)
    out = tmp_path / "run" / "data"
    prepare_data(config(write_docs(tmp_path / "docs", docs), val_fraction=0.25, clean=NO_CLEAN), out,
                 small_tokenizer)
    val = load_task("corpus", "test", out)
    assert load_task("corpus", "dev", tmp_path / "run") == val  # a run folder finds its data/ folder
    assert [ex.id for ex in val] == [f"corpus-val-{i}" for i in range(len(val))]
    # every held-out text is a document (the last one may be cut where packing dropped the tail)
    assert len(val) >= 4 and all(ex.prompt in docs for ex in val[:-1]) and any(d.startswith(val[-1].prompt)
                                                                               for d in docs)
    ds = PackedDataset(out, "val")
    assert ds.stream().tolist() == stream(ds).tolist()
    train = load_task("corpus", "train", out)
    assert not {ex.prompt for ex in train[:-1]} & {ex.prompt for ex in val}
    assert len(train) + len(val) >= len(docs) - 1
    with pytest.raises(DataError, match=r"corpus: .* has no index.json. Expected a data folder written by "
                                        r"`llmkit prepare`"):
        load_task("corpus", "test", tmp_path / "docs")
