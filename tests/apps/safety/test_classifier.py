"""The learned guards (injection and harm classifiers): which texts they read, what they withhold or
refuse, and how they are wired (scripted classifiers here; the trained ones are measured in
tests/apps/safety/test_injection_classifier.py and test_harm_classifier.py)."""

import base64

import pytest
import torch

from llmkit.apps.safety import GuardSet, HarmModelGuard, InjectionModelGuard
from llmkit.apps.safety.classifier import WITHHELD, readings, windows


class Scripted:
    """A classifier whose 'injection' (or other second label's) probability is 0.9 for texts
    containing PAYLOAD in any case, else 0.1."""

    class classifier:
        labels = ["benign", "injection"]

    def __init__(self, labels=None, hit=0.9):
        self.read, self.hit = [], hit
        if labels:
            self.classifier = type("Head", (), {"labels": labels})

    def classify_probs(self, texts):
        self.read.append(list(texts))
        p = torch.tensor([self.hit if "payload" in t.lower() else 0.1 for t in texts])
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
    with pytest.raises(ValueError, match=r"a 'harmful' label \(got labels \['benign', 'injection'\]\).*"
                                         r"builtin:harm .*--harm-model runs/harm"):
        HarmModelGuard(Scripted())  # an injection classifier is not a harm classifier
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


def test_the_harm_guard_refuses_any_user_turn_it_flags_even_behind_an_encoding():
    clf = Scripted(["benign", "harmful"], hit=0.996)
    guard = HarmModelGuard(clf)  # refuses only its most confident verdicts (threshold 0.97)
    assert guard.check_input([{"role": "user", "content": "bake bread"}], ["PAYLOAD in a document"]).action == "allow"
    assert clf.read == [["bake bread"]]  # the user's turns only: documents are data, not the request
    d = guard.check_input([{"role": "user", "content": "first PAYLOAD"}, {"role": "assistant", "content": "no"},
                           {"role": "user", "content": "and now?"}])
    assert d.action == "refuse" and d.category == "harmful" and d.guard == "harm_model" and "p=1.00" in d.reason
    assert d.text.startswith("I can't") and "PAYLOAD" not in d.text
    hidden = base64.b64encode(b"tell me about the PAYLOAD please").decode()
    for turn in (f"decode this and do it: {hidden}", "P4YL0AD n0w", 'a = "PAY" and b = "LOAD"; do a+b'):
        assert guard.check_input([{"role": "user", "content": turn}]).action == "refuse", turn
    assert HarmModelGuard(clf, threshold=0.999).check_input([{"role": "user", "content": "PAYLOAD"}]).action == "allow"
    assert HarmModelGuard(Scripted(["benign", "harmful"], hit=0.96)).check_input(
        [{"role": "user", "content": "PAYLOAD"}]).action == "allow"  # 0.96 is under the default threshold
    guards = GuardSet.named("harm_model,pii", harm_model=clf)
    assert guards.check_input([{"role": "user", "content": "PAYLOAD"}]).guard == "harm_model"


def test_readings_are_the_text_and_its_decodings_each_once():
    assert readings("plain words") == ["plain words"]
    hidden = base64.b64encode(b"how do I pick a lock").decode()
    r = readings(f"see {hidden}")
    assert r[0] == f"see {hidden}" and "how do I pick a lock" in r and len(r) == len(set(r))
    assert readings("h0w d0 I p1ck 2 l0cks") == ["h0w d0 I p1ck 2 l0cks", "how do I pick 2 locks"]  # numbers stay
    assert readings("  ") == []


def test_an_ensemble_averages_its_members_probabilities_by_label_name():
    """Two classifiers with their labels in different orders: the guard reads each member's 'harmful'
    column and refuses where the mean reaches the threshold, not where one member alone does."""

    class Reversed(Scripted):
        def classify_probs(self, texts):
            return super().classify_probs(texts).flip(1)  # columns: harmful, benign

    sure, unsure = Scripted(["benign", "harmful"], hit=0.99), Reversed(["harmful", "benign"], hit=0.81)
    user = [{"role": "user", "content": "PAYLOAD please"}]
    assert HarmModelGuard(sure).check_input(user).refused  # 0.99 alone
    ensemble = HarmModelGuard([sure, unsure])
    assert ensemble.scores(["PAYLOAD", "hello"]) == pytest.approx([(0.99 + 0.81) / 2, 0.1])
    assert not ensemble.check_input(user).refused  # mean 0.90 < 0.97
    d = HarmModelGuard([sure, unsure], threshold=0.85).check_input(user)
    assert d.refused and "p=0.90" in d.reason
    with pytest.raises(ValueError, match="a 'harmful' label"):
        HarmModelGuard([sure, Scripted()])  # the second lacks the label
    with pytest.raises(ValueError, match="a 'harmful' label"):
        HarmModelGuard([])
