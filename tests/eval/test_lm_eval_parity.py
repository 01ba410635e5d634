"""Parity with lm-eval: the same local tasks through lm-eval with its `hf` backend (transformers)
and with the `llmkit` backend, on the same tiny random weights: equal multiple-choice accuracy
and log-likelihoods, equal rolling log-likelihoods over several windows, identical greedy
generations; and `llmkit lm-eval` runs lm-eval's own command line end to end."""

import json

import pytest

from tests.peers import peer

peer("lm_eval")

from llmkit.cli.main import main  # noqa: E402

QUESTIONS = [
    ("The capital of France is", ["Paris", "London", "a river", "blue"], 0),
    ("def add(a, b): return", ["a + b", "a - b", "None"], 0),
    ("The opposite of hot is", ["cold", "warm", "hot"], 0),
    ("import os\nprint(os.path.", ["join('a', 'b'))", "exists('x'))", "nothing"], 1),
    ("One, two, three,", ["four", "five", "ten", "eleven"], 0),
    ("class Foo(", ["object):", "int):", "Bar):"], 2),
    ("A cat says", ["meow", "woof"], 0),
    ("for i in range(", ["10):", "len(x)):", "3)"], 1),
]
TEXTS = [
    "A compiler reads a program written for people and turns it into instructions for a machine. " * 4,
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n" * 3,
    "Short text.",
]
PROMPTS = [("def main():\n   ", "x"), ("import sys\n", "y"), ("The history of the bicycle", "z"),
           ("for key, value in", "w"), ("class Config:\n    def __init__(self", "v")]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def write_tasks(root):
    rows = {
        "mc": [{"question": q, "choices": c, "label": label} for q, c, label in QUESTIONS],
        "roll": [{"text": t} for t in TEXTS],
        "gen": [{"question": q, "answer": a} for q, a in PROMPTS],
    }
    for name, data in rows.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    common = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {path}\ntest_split: test\n"
    (root / "par_mc.yaml").write_text("task: par_mc\n" + common.format(path=root / "mc.jsonl") + (
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n"))
    (root / "par_roll.yaml").write_text("task: par_roll\n" + common.format(path=root / "roll.jsonl") + (
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n"))
    (root / "par_gen.yaml").write_text("task: par_gen\n" + common.format(path=root / "gen.jsonl") + (
        "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['\\n\\n']\n  max_gen_toks: 16\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n"))
    return root


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("lm_eval_tasks"))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def evaluate(lm, tasks):
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=["par_mc", "par_roll", "par_gen"], task_manager=manager,
                                  log_samples=True, verbosity="ERROR")
    samples = {name: sorted(out["samples"][name], key=lambda s: s["doc_id"]) for name in out["samples"]}
    return out["results"], samples


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
def test_llmkit_backend_matches_hf_backend(tiny_dirs, tasks, preset):
    from lm_eval.models.huggingface import HFLM

    from llmkit.eval.lm_eval_backend import LLMKitLM

    path = str(tiny_dirs[preset])
    # max_length 48: the long texts take several rolling windows
    hf_results, hf = evaluate(HFLM(pretrained=path, device="cpu", dtype="float32", batch_size=4, max_length=48), tasks)
    our_results, ours = evaluate(LLMKitLM(pretrained=path, device="cpu", batch_size=3, max_length=48), tasks)

    for a, b in zip(hf["par_mc"], ours["par_mc"]):
        assert [r[0] for r in b["filtered_resps"]] == pytest.approx([r[0] for r in a["filtered_resps"]], abs=1e-4)
        assert [r[1] for r in b["filtered_resps"]] == [r[1] for r in a["filtered_resps"]]  # is-greedy flags
    for metric in ("acc,none", "acc_norm,none"):
        assert our_results["par_mc"][metric] == hf_results["par_mc"][metric]

    rolling_hf = [s["filtered_resps"][0] for s in hf["par_roll"]]
    rolling_ours = [s["filtered_resps"][0] for s in ours["par_roll"]]
    assert rolling_ours == pytest.approx(rolling_hf, abs=1e-4)
    assert our_results["par_roll"]["bits_per_byte,none"] == pytest.approx(hf_results["par_roll"]["bits_per_byte,none"],
                                                                          rel=1e-6)

    gen_hf = [s["filtered_resps"][0] for s in hf["par_gen"]]
    gen_ours = [s["filtered_resps"][0] for s in ours["par_gen"]]
    assert gen_ours == gen_hf
    assert sum(len(set(g)) >= 4 for g in gen_ours) >= 3, "degenerate generations would hide differences"


def test_rolling_windows_really_roll(tiny_dirs):
    from llmkit.eval.lm_eval_backend import LLMKitLM

    lm = LLMKitLM(pretrained=str(tiny_dirs["tiny-gpt2"]), device="cpu", max_length=48)
    assert len(lm.tok_encode(TEXTS[0])) > 3 * 48  # so the parity test covers several windows


def test_lm_eval_command(tiny_dirs, tasks, tmp_path, capsys):
    assert main(["lm-eval", "--help"]) == 0
    assert "--model_args pretrained=" in capsys.readouterr().out
    out = tmp_path / "out"
    code = main(["lm-eval", "--model_args", f"pretrained={tiny_dirs['tiny-gpt2']},max_length=48", "--tasks", "par_mc",
                 "--include_path", str(tasks), "--limit", "4", "--output_path", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "par_mc" in printed and "acc" in printed
    written = list(out.rglob("results_*.json"))
    assert written and json.loads(written[0].read_text())["config"]["model"] == "llmkit"
