"""The injection classifier the guard uses: all-MiniLM-L6-v2 fine-tuned with `objective=classify` on
the shipped `builtin:injection` set, scored on its held-out test file (pieces disjoint from the
training file's). Default suite: a short run must beat the majority class on the held-out texts and
drive the guard end to end. Slow: the README's run, its precision and recall."""

from __future__ import annotations

import pytest

import llmkit
from llmkit.apps.safety import GuardSet, InjectionModelGuard
from llmkit.apps.safety.classifier import WITHHELD
from llmkit.data.labelled import labelled_set_file, read_labelled

from .trained import train_classifier


def _train(minilm, out, steps: int, max_len: int):
    return train_classifier(minilm, "builtin:injection", out, steps, max_len)


def test_the_shipped_set_is_balanced_and_its_test_file_held_out():
    train, val, test, labels = read_labelled("builtin:injection")
    assert labels == ["benign", "injection"] and len(train) + len(val) == 360 and len(test) == 160
    assert sum(r.label == "injection" for r in test) == 80
    assert not {r.text for r in test} & {r.text for r in train + val}
    assert labelled_set_file("injection", "test").is_file()


def test_a_short_fine_tune_beats_the_majority_class_and_drives_the_guard(minilm, tmp_path):
    c = _train(minilm, tmp_path / "inj", steps=10, max_len=64)
    print(f"accuracy {c['accuracy']:.3f} {c['ci']}, injection P/R {c['per_label']['injection']}")
    assert c["n"] == 160 and c["majority"]["accuracy"] == pytest.approx(0.5)
    assert c["ci"][0] > c["majority"]["accuracy"], c  # the whole interval above always guessing one label
    guard = InjectionModelGuard(llmkit.load(tmp_path / "inj"))
    # the guard acts on what the classifier says about each document (the classifier's own verdicts, not
    # a hand label: a short run is not always right)
    _, _, test, _ = read_labelled("builtin:injection")
    docs = [r.text for r in test[:12]]
    flagged = [p >= 0.5 for p in guard.scores(docs)]
    assert any(flagged) and not all(flagged)
    d = GuardSet([guard]).check_input([{"role": "user", "content": "Summarise these documents."}], docs)
    assert [x == WITHHELD for x in d.documents] == flagged


@pytest.mark.slow
def test_the_readme_classifier_finds_injections_on_the_held_out_file(minilm, tmp_path):
    """`llmkit finetune --model all-minilm-l6-v2 --data builtin:injection --method full objective=classify
    train.steps=120`: precision and recall of the injection label on the 160 held-out texts."""
    c = _train(minilm, tmp_path / "inj", steps=120, max_len=256)
    pr = c["per_label"]["injection"]
    print(f"accuracy {c['accuracy']:.3f} {c['ci']}; injection precision {pr['precision']:.3f} {pr['precision_ci']}, "
          f"recall {pr['recall']:.3f} {pr['recall_ci']}")
    assert pr["precision_ci"][0] >= 0.8 and pr["recall_ci"][0] >= 0.8, pr
