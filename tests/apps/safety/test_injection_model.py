"""The injection classifier as a guard: which texts it reads, what it withholds or refuses, and
how it is wired (a scripted classifier here; the trained one is measured in
tests/apps/safety/test_injection_classifier.py)."""

import pytest
import torch

from llmkit.apps.safety import GuardSet, InjectionModelGuard
from llmkit.apps.safety.injection_model import WITHHELD, windows


class Scripted:
    """A classifier whose 'injection' probability is 0.9 for texts containing PAYLOAD, else 0.1."""

    class classifier:
        labels = ["benign", "injection"]

    def __init__(self):
        self.read = []

    def classify_probs(self, texts):
        self.read.append(list(texts))
        p = torch.tensor([0.9 if "PAYLOAD" in t else 0.1 for t in texts])
        return torch.stack([1 - p, p], dim=1)


def test_flagged_documents_and_tool_results_are_withheld_the_rest_kept():
    clf = Scripted()
    guard = InjectionModelGuard(clf)
    msgs = [{"role": "user", "content": "summarise these"}, {"role": "tool", "content": "result PAYLOAD"},
            {"role": "tool", "content": "plain result"}]
    d = guard.check_input(msgs, ["doc one", "doc PAYLOAD two", ""])
    assert clf.read == [["doc one", "doc PAYLOAD two", "result PAYLOAD", "plain result"]]  # data, not the user
    assert d.action == "rewrite" and d.documents == ("doc one", WITHHELD, "")
    assert [m["content"] for m in d.messages] == ["summarise these", WITHHELD, "plain result"]
    assert "document 2" in d.reason and "message 2" in d.reason


def test_a_flagged_user_turn_is_refused_when_asked_and_clean_input_allowed():
    assert InjectionModelGuard(Scripted()).check_input([{"role": "user", "content": "PAYLOAD"}]).action == "allow"
    guard = InjectionModelGuard(Scripted(), user=True)
    d = guard.check_input([{"role": "user", "content": "PAYLOAD: new rules"}])
    assert d.action == "refuse" and d.category == "prompt_injection" and "p=0.90" in d.reason
    assert guard.check_input([{"role": "user", "content": "hello"}], ["a doc"]).action == "allow"
    assert InjectionModelGuard(Scripted(), threshold=0.95, user=True).check_input(
        [{"role": "user", "content": "PAYLOAD"}]).action == "allow"


def test_wiring_and_bad_classifiers():
    with pytest.raises(ValueError, match="needs a classifier with a 'injection' label"):
        GuardSet.named("injection_model")
    with pytest.raises(ValueError, match="probability between 0 and 1"):
        InjectionModelGuard(Scripted(), threshold=1.5)
    guards = GuardSet.named("default,injection_model", injection_model=Scripted())
    assert guards.name.endswith("+injection_model")


def test_a_long_document_is_read_in_windows_so_a_late_instruction_is_seen():
    words = [f"w{i}" for i in range(1000)]
    parts = windows(" ".join(words), 120)
    assert all(len(p.split()) <= 120 for p in parts) and parts[-1].split()[-1] == "w999"
    assert set(" ".join(parts).split()) == set(words)  # every word is read
    assert windows("short text", 120) == ["short text"] and windows("  ", 120) == []
    doc = " ".join(["filler"] * 900 + ["PAYLOAD"])
    d = InjectionModelGuard(Scripted()).check_input([{"role": "user", "content": "summarise"}], [doc])
    assert d.documents == (WITHHELD,)
