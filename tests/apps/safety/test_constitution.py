"""The critique-and-revise loop's logic with a scripted critic (what a real critic says is measured
by `llmkit redteam ... guards=default,constitution`), its parse of critiques, and its wiring."""

import pytest

from llmkit.apps.safety import ConstitutionGuard, GuardSet, PRINCIPLES
from llmkit.apps.safety.constitution import parse_principle
from llmkit.apps.safety.presets import guard_names

CHAT = [{"role": "system", "content": "The vault code is ORCHID-7731."}, {"role": "user", "content": "hi"}]


class Scripted:
    """A critic that answers from a script and records what it was asked."""

    def __init__(self, *answers):
        self.answers, self.asked = list(answers), []

    def chat(self, messages, max_new_tokens=16, temperature=0):
        self.asked.append(messages[-1]["content"])
        return self.answers.pop(0)


@pytest.mark.parametrize("text,want", [
    ("0", 0), ("2", 2), ("Principle 3.", 3), ("The reply breaks principle 5", 5), ("None (0).", 0),
    ("It breaks 9", None), ("yes", None), ("3.5", None), ("", None), ("\n\n4", 4),
])
def test_parse_principle(text, want):
    assert parse_principle(text, 5) == want


def test_a_clean_reply_passes_after_one_critique():
    critic = Scripted("0")
    d = ConstitutionGuard(critic).check_output(CHAT, "Hello! How can I help?")
    assert d.action == "allow" and len(critic.asked) == 1
    # the critic sees the principles, the system prompt and the reply
    assert PRINCIPLES[1] in critic.asked[0] and "ORCHID-7731" in critic.asked[0] and "How can I help" in critic.asked[0]


def test_a_flagged_reply_is_revised_and_the_revision_critiqued():
    critic = Scripted("2", "Sorry, I can't share the vault code.", "0")
    guard = ConstitutionGuard(critic)
    d = guard.check_output(CHAT, "The code is ORCHID-7731.")
    assert d.action == "rewrite" and d.text == "Sorry, I can't share the vault code." and d.category == "constitution"
    assert PRINCIPLES[1] in critic.asked[1] and "ORCHID-7731." in critic.asked[1]  # revise names the principle
    assert "Sorry, I can't share" in critic.asked[2]  # the revision is critiqued again
    assert guard.stats == {"checked": 1, "flagged": 1, "revised": 1, "refused": 0, "unclear": 0}


def test_a_revision_that_still_breaks_a_principle_is_refused():
    d = ConstitutionGuard(Scripted("2", "Fine: ORCHID-7731", "2")).check_output(CHAT, "ORCHID-7731")
    assert d.action == "refuse" and d.text.startswith("I can't") and "principle 2" in d.reason


def test_an_unclear_critique_allows_by_default_or_refuses_when_asked():
    assert ConstitutionGuard(Scripted("I think it is fine")).check_output(CHAT, "hi").action == "allow"
    d = ConstitutionGuard(Scripted("maybe"), on_unclear="refuse").check_output(CHAT, "hi")
    assert d.action == "refuse"


def test_wiring_needs_a_critic_and_default_expands():
    assert guard_names("default,constitution") == ["topics", "injection", "secrets", "pii", "constitution"]
    with pytest.raises(ValueError, match="needs a critic"):
        GuardSet.named("default,constitution")
    guards = GuardSet.named("constitution", critic=Scripted("1", "I can't help with that.", "0"))
    out = guards.check_output([{"role": "user", "content": "how to pick a lock"}], "Insert a tension wrench...")
    assert out.action == "rewrite" and out.text == "I can't help with that."
