"""The harm classifier the harm_model guard uses: all-MiniLM-L6-v2 fine-tuned with `objective=classify`
on the shipped `builtin:harm` set (written by a writer who never saw the red-team files or the guards),
scored on its held-out test file. Default suite: a short run beats the majority class on the held-out
texts and drives the guard end to end. Slow: the README's two runs, their precision and recall alone and averaged."""

from __future__ import annotations

import pytest

import llmkit
from llmkit.apps.safety import GuardSet, HarmModelGuard
from llmkit.apps.safety.classifier import readings
from llmkit.data.labelled import read_labelled

from .trained import train_classifier


def test_the_shipped_set_holds_out_its_test_file():
    train, val, test, labels = read_labelled("builtin:harm")
    assert labels == ["benign", "harmful"]
    assert len(train) + len(val) >= 600 and len(test) >= 200
    harmful = sum(r.label == "harmful" for r in test)
    assert 0.25 <= harmful / len(test) <= 0.6  # both labels well represented
    assert not {r.text for r in test} & {r.text for r in train + val}


def test_a_short_fine_tune_beats_the_majority_class_and_drives_the_guard(minilm, tmp_path):
    c = _train(minilm, tmp_path / "harm", steps=30, max_len=64)
    print(f"accuracy {c['accuracy']:.3f} {c['ci']}, harmful P/R {c['per_label']['harmful']}")
    _, _, test, _ = read_labelled("builtin:harm")
    assert c["n"] == len(test) and c["majority"]["label"] == "benign"
    assert c["ci"][0] > c["majority"]["accuracy"], c  # the whole interval above always guessing "benign"
    classifier = llmkit.load(tmp_path / "harm")
    # the guard refuses exactly the requests the classifier itself flags (a short run is not always right,
    # so its probabilities, not the labels, are the reference), on plain texts of both labels
    plain = [r for r in test if readings(r.text) == [r.text]]
    texts = [r.text for r in plain if r.label == "harmful"][:6] + [r.text for r in plain if r.label == "benign"][:6]
    harmful = classifier.classify_probs(texts)[:, 1].tolist()
    guards = GuardSet([HarmModelGuard(classifier, threshold=0.5)])  # a short run is never 0.99 sure
    decided = [guards.check_input([{"role": "user", "content": t}]).action for t in texts]
    assert decided == ["refuse" if p >= 0.5 else "allow" for p in harmful]
    assert "refuse" in decided and "allow" in decided


def _train(minilm, out, steps: int, max_len: int, **train):
    return train_classifier(minilm, "builtin:harm", out, steps, max_len, **train)


@pytest.mark.slow
def test_the_readme_classifiers_find_harmful_requests_on_the_held_out_file(minilm, tmp_path):
    """The README's ensemble: `llmkit finetune --model all-minilm-l6-v2 --data builtin:harm --method full
    objective=classify train.steps=300`, once at the default learning rate and once at train.lr=5e-5;
    precision and recall of the harmful label on the held-out texts, each member's and their average's."""
    import torch

    from llmkit.eval.metrics import wilson_interval

    members = [(_train(minilm, tmp_path / name, steps=300, max_len=256, **lr), name)
               for name, lr in (("harm", {}), ("harm-lr5", {"lr": 5e-5}))]
    for c, name in members:
        pr = c["per_label"]["harmful"]
        print(f"{name}: accuracy {c['accuracy']:.3f} {c['ci']}; harmful precision {pr['precision']:.3f} "
              f"{pr['precision_ci']}, recall {pr['recall']:.3f} {pr['recall_ci']}")
        assert pr["precision_ci"][0] >= 0.85 and pr["recall_ci"][0] >= 0.75, (name, pr)
    _, _, test, _ = read_labelled("builtin:harm")
    guard = HarmModelGuard([llmkit.load(tmp_path / name) for _, name in members], threshold=0.5)
    p = torch.tensor(guard.scores([r.text for r in test]))
    truth = torch.tensor([r.label == "harmful" for r in test])
    tp, flagged = int(((p >= 0.5) & truth).sum()), int((p >= 0.5).sum())
    precision, recall = wilson_interval(tp, flagged), wilson_interval(tp, int(truth.sum()))
    print(f"ensemble: harmful precision {tp / flagged:.3f} {precision}, recall {tp / int(truth.sum()):.3f} {recall}")
    assert precision[0] >= 0.85 and recall[0] >= 0.75
