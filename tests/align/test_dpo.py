"""Preference data and `llmkit align dpo` end to end on a tiny model: the formats, the embedded
set, bad input, and a run whose implicit reward learns to rank held-out pairs."""

from __future__ import annotations

import json

import pytest

import llmkit
from llmkit.align.prefs import Pair, builtin_preferences, pairs_from_ranked, read_preferences, row_to_pairs
from llmkit.cli.main import main
from llmkit.data.dataset import DataError
from llmkit.data.tasks import load_task

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def test_every_row_format():
    assert row_to_pairs({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}) == [
        Pair((("user", "Hi"),), "Hello!", "Go away.")]
    chat = row_to_pairs({"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
                         "chosen": [{"role": "assistant", "content": "Hello!"}],
                         "rejected": [{"role": "assistant", "content": "No."}]})
    assert chat[0].prompt == (("system", "Be kind."), ("user", "Hi")) and chat[0].rejected == "No."
    shared = row_to_pairs({"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                           "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Bye"}]})
    assert shared == [Pair((("user", "Hi"),), "Hello", "Bye")]
    ranked = row_to_pairs({"prompt": "Rate", "ranked": ["a", "b", "c", "d"]})
    assert [(p.chosen, p.rejected) for p in ranked] == [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"),
                                                         ("c", "d")]
    assert len(pairs_from_ranked("q", list("abcde"))) == 10
    for bad, needle in (({"prompt": "x", "chosen": "a"}, "'rejected'"),
                        ({"prompt": "x", "chosen": "", "rejected": "b"}, "empty"),
                        ({"prompt": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
                          "chosen": "a", "rejected": "b"}, "end with a user"),
                        ({"chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}],
                          "rejected": [{"role": "user", "content": "z"}, {"role": "assistant", "content": "b"}]},
                         "share every turn"),
                        ({"prompt": "x", "ranked": ["only"]}, "at least two")):
        with pytest.raises(ValueError, match=needle):
            row_to_pairs(bad)


def test_bad_rows_and_identical_pairs(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a", "chosen": "x", "rejected": "y"}\n'
                 '{"prompt": "b", "chosen": "same", "rejected": "same"}\n'
                 'not json\n'
                 '{"prompt": "c", "chosen": "x"}\n')
    with pytest.raises(DataError, match=r"2 bad row\(s\): line 3: not JSON .*line 4: .*'rejected'"):
        read_preferences(f)
    pairs, stats = read_preferences(f, skip_bad_rows=True)
    assert len(pairs) == 1 and stats.identical == 1 and [b.line for b in stats.bad] == [3, 4]
    f.write_text('{"prompt": "b", "chosen": "same", "rejected": "same"}\n')
    with pytest.raises(DataError, match="1 had identical answers"):
        read_preferences(f)


def test_the_embedded_set_prefers_right_and_concise_answers():
    pairs = builtin_preferences("test", ["arith", "sorting", "sentiment"])
    gold = {ex.prompt: ex for t in ("arith", "sorting", "sentiment") for ex in load_task(t, "test")}
    assert len(pairs) == 2 * len(gold)
    for p in pairs:
        ex = gold[p.prompt[0][1]]
        assert p.chosen == ex.answer and p.rejected != ex.answer
        if ex.choices:
            assert p.rejected in ex.choices or ex.answer in p.rejected
        elif "Sort" in ex.prompt and ex.answer not in p.rejected:
            assert sorted(p.rejected.split()) == sorted(ex.answer.split())  # same numbers, wrong order
        if ex.answer in p.rejected:  # the rambling variant: right but long
            assert len(p.rejected) > 3 * len(p.chosen)
    assert pairs == builtin_preferences("test", ["arith", "sorting", "sentiment"])  # deterministic


def write_pairs(path, pairs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": p.prompt[0][1], "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                            for p in pairs))
    return path


def run_dpo(tmp_path, model, *extra, n_train=320, n_val=100):
    """A short run on embedded arith pairs (train split), validated on pairs of the dev split."""
    train = write_pairs(tmp_path / "train.jsonl", builtin_preferences("train", ["arith"])[:n_train])
    val = write_pairs(tmp_path / "val.jsonl", builtin_preferences("dev", ["arith"])[:n_val])
    out = tmp_path / "dpo"
    code = main(["align", "dpo", "--model", str(model), "--data", str(train), f"data.val_path={val}",
                 "--out", str(out), "train.steps=40", "train.eval_every=20", "train.micro_batch=8",
                 "eval.perplexity=false", *extra])
    assert code == 0
    return out, json.loads((out / "summary.json").read_text())


def test_dpo_learns_to_rank_held_out_pairs(tiny_dirs, tmp_path, capsys):
    out, s = run_dpo(tmp_path, tiny_dirs["tiny-llama"], "train.lr=1e-3", "train.micro_batch=4", n_val=60)
    printed = capsys.readouterr().out
    assert "held-out pairs: chosen ranked first" in printed
    # the dev pairs were never trained on; at the start every margin is 0 (accuracy 0, loss log 2).
    # A random model learns the concise-vs-rambling half at once; right-vs-wrong numbers barely
    # (chance is 0.5)
    assert s["preferences"]["accuracy"] > 0.68 and s["preferences"]["loss"] < 0.5, s["preferences"]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    margins = [r["rewards/margin"] for r in steps if "rewards/margin" in r]
    assert abs(margins[0]) < 0.05 and sum(margins[-5:]) / 5 > 1.0
    vals = [r["val_loss"] for r in steps if "val_loss" in r]
    assert max(vals) < 0.5  # from log 2 = 0.693 at the start (held-out pairs)
    assert "Held-out preference pairs" in (out / "report.md").read_text()
    back = llmkit.load(out / "model")  # the result is a plain model
    assert back.generate("What", max_new_tokens=3, temperature=0) is not None


def test_reference_on_the_fly_equals_precomputed(tiny_dirs, tmp_path):
    # fp32: under bf16 autocast the two pad their batches differently, which moves the log-probs
    small = {"n_train": 48, "n_val": 16}
    a, _ = run_dpo(tmp_path / "a", tiny_dirs["tiny-llama"], "train.steps=6", "train.eval_every=0",
                   "train.precision=fp32", **small)
    b, _ = run_dpo(tmp_path / "b", tiny_dirs["tiny-llama"], "train.steps=6", "train.eval_every=0",
                   "train.precision=fp32", "precompute_ref=false", **small)
    la = [json.loads(x)["loss"] for x in (a / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    lb = [json.loads(x)["loss"] for x in (b / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(la) == 6 and la[0] == pytest.approx(0.693147, abs=1e-6) and la == pytest.approx(lb, abs=2e-6)


def test_dpo_with_lora_and_ipo(tiny_dirs, tmp_path):
    out, s = run_dpo(tmp_path, tiny_dirs["tiny-llama"], "--method", "lora", "loss=ipo", "train.steps=10",
                     "train.eval_every=0", n_train=80, n_val=16)
    assert s["loss"] == "ipo" and s["trainable"]["percent"] < 60
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "model" / "config.json").is_file()


def test_bad_recipe_values_are_named(tiny_dirs, tmp_path, capsys):
    for override, needle in (("loss=hinge", "loss='hinge'"), ("beta=0", "beta=0"),
                             ("label_smoothing=0.7", "label_smoothing")):
        assert main(["align", "dpo", "--model", str(tiny_dirs["tiny-llama"]), "--out", str(tmp_path / "x"),
                     override]) == 2
        assert needle in capsys.readouterr().err
    assert main(["align", "dpo", "--model", str(tiny_dirs["tiny-llama"]), "--data", str(tmp_path / "none.jsonl"),
                 "--out", str(tmp_path / "y")]) == 2
    assert "none.jsonl" in capsys.readouterr().err and not (tmp_path / "y").exists()
