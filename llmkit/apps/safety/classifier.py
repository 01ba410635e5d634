"""Learned guards: a sequence classifier (`llmkit finetune ... objective=classify` on a shipped labelled
set, or any classifier with the guard's label) reads the texts a guard is about, in windows.

- `InjectionModelGuard` (``builtin:injection``) reads each retrieved document and each tool result —
  the data an application hands the model — and, with ``user=True``, the user's turn too. A flagged
  document or tool result is withheld (replaced by a note that a passage was removed) and the rest
  goes on (the safe-complete tier); a flagged user turn is refused. The user's turn is left to the
  rules by default: on the red-team dev split the classifier refused 22 of 120 benign look-alikes
  there (games, decoding requests, questions about chat tokens), whose framing resembles the
  injections it was trained on; on documents alone it caught 22 of the 24 planted instructions and
  withheld the passages of 2 of the 24 benign look-alikes.
- `HarmModelGuard` (``builtin:harm``) reads every user turn and the readings an obfuscation would
  hide behind (decoded base64, leetspeak, joined quoted strings) and refuses a request it flags as
  harmful with at least 0.97 probability: it complements the hand-written harm rules of `llmkit.apps.safety.topics`, which miss
  wordings they were not written for.

    llmkit finetune --model all-minilm-l6-v2 --data builtin:injection --method full objective=classify --out runs/inj
    llmkit finetune --model all-minilm-l6-v2 --data builtin:harm --method full objective=classify --out runs/harm
    guards = GuardSet([InjectionModelGuard(llmkit.load("runs/inj")), HarmModelGuard(llmkit.load("runs/harm"))])
    # on the command line: guards=default,injection_model,harm_model --injection-model runs/inj --harm-model runs/harm
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from .guard import Decision, Messages, last_user, refuse, text_of
from .variants import base64_decoded, joined_quotes, unleet

WITHHELD = "[a passage was withheld here: it held instructions addressed to the assistant]"


def windows(text: str, size: int) -> list[str]:
    """`text` in windows of `size` words overlapping by a quarter (one window when it is short; none
    when it is blank)."""
    words = text.split()
    if not words:
        return []
    if len(words) <= size:
        return [text]
    step = max(1, size - size // 4)
    return [" ".join(words[i:i + size]) for i in range(0, len(words) - size + step, step)]


@dataclass
class ClassifierGuard:
    """Flags texts whose probability of `label` is at least `threshold`; subclasses say which texts
    they read and what a flag does. `classifier` may be a list: their probabilities are averaged (a
    small ensemble of classifiers trained differently is less sure of itself on texts unlike its
    training data than either member)."""

    classifier: Any
    threshold: float = 0.5
    label: str = ""
    window: int = 120  # words per window of a long text (windows overlap by a quarter)
    name: str = ""
    set_name: ClassVar[str] = ""  # the shipped labelled set that trains it, for the error message

    def __post_init__(self) -> None:
        members = list(self.classifier) if isinstance(self.classifier, (list, tuple)) else [self.classifier]
        self._members: list[tuple[Any, int]] = []
        for c in members or [None]:
            labels = list(getattr(getattr(c, "classifier", None), "labels", None) or [])
            if not callable(getattr(c, "classify_probs", None)) or self.label not in labels:
                flag = self.name.replace("_model", "")
                raise ValueError(f"the {self.name} guard needs a classifier with a {self.label!r} label (got labels "
                                 f"{labels or 'none'}): train one with `llmkit finetune --model all-minilm-l6-v2 --data "
                                 f"builtin:{self.set_name} --method full objective=classify --out runs/{flag}` and "
                                 f"pass --{flag}-model runs/{flag}")
            self._members.append((c, labels.index(self.label)))
        if self.window < 8:
            raise ValueError(f"window={self.window}: give at least 8 words")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold={self.threshold}: give a probability between 0 and 1")

    def scores(self, texts: Sequence[str]) -> list[float]:
        """The probability of `label` for each text (empty texts score 0), averaged over the classifiers.
        A long text is read in overlapping windows of `window` words and scores its most suspicious one,
        so an instruction past the classifier's context window is still read."""
        owner, pieces = [], []
        for i, t in enumerate(texts):
            for piece in windows(t, self.window):
                owner.append(i)
                pieces.append(piece)
        out = [0.0] * len(texts)
        if pieces:
            probs = sum(c.classify_probs(pieces)[:, column] for c, column in self._members) / len(self._members)
            for i, p in zip(owner, probs.tolist()):
                out[i] = max(out[i], float(p))
        return out

    def check_output(self, messages: Messages, reply: str, documents: Sequence[str] = ()) -> Decision:
        return Decision()


@dataclass
class InjectionModelGuard(ClassifierGuard):
    """Withholds documents and tool results the injection classifier flags; refuses a flagged user
    turn when `user` is set."""

    label: str = "injection"
    user: bool = False  # also read (and refuse) the user's turn
    name: str = "injection_model"
    set_name: ClassVar[str] = "injection"

    def check_input(self, messages: Messages, documents: Sequence[str] = ()) -> Decision:
        tools = [i for i, m in enumerate(messages) if m.get("role") == "tool"]
        texts = [last_user(messages) if self.user else "", *documents,
                 *(text_of(messages[i].get("content")) for i in tools)]
        p = self.scores(texts)
        if p[0] >= self.threshold:
            return refuse("prompt_injection", f"the injection classifier flags the user's turn (p={p[0]:.2f})",
                          self.name)
        flagged_docs = [i for i in range(len(documents)) if p[1 + i] >= self.threshold]
        flagged_tools = [t for k, t in enumerate(tools) if p[1 + len(documents) + k] >= self.threshold]
        if not flagged_docs and not flagged_tools:
            return Decision()
        docs = tuple(WITHHELD if i in flagged_docs else d for i, d in enumerate(documents))
        msgs = [dict(m, content=WITHHELD) if i in flagged_tools else dict(m) for i, m in enumerate(messages)]
        where = [f"document {i + 1}" for i in flagged_docs] + [f"tool result in message {i + 1}" for i in flagged_tools]
        return Decision("rewrite", messages=msgs, documents=docs, category="prompt_injection", guard=self.name,
                        reason=f"the injection classifier withheld {', '.join(where)}")


@dataclass
class HarmModelGuard(ClassifierGuard):
    """Refuses a request whose user turns (or the obfuscated readings of one: decoded base64,
    leetspeak, joined quoted strings) the harm classifier flags as harmful. System and developer
    messages are the application's, not the user's, and are not read (behind `llmkit serve`, whoever
    holds an API key writes them too)."""

    label: str = "harmful"
    # The fine-tuned classifier is confident far outside its training data: on the tuning splits benign
    # look-alikes of attacks (a role-played recipe, a palindrome question) scored up to 0.99, so only its
    # most confident verdicts refuse (0.97 refused no more benign cases there than 0.99, and caught more).
    threshold: float = 0.97
    name: str = "harm_model"
    set_name: ClassVar[str] = "harm"

    def check_input(self, messages: Messages, documents: Sequence[str] = ()) -> Decision:
        turns = [text_of(m.get("content")) for m in messages if m.get("role") == "user"]
        texts = [v for t in turns for v in readings(t)]
        p = self.scores(texts)
        if p and max(p) >= self.threshold:
            return refuse("harmful", f"the harm classifier flags the request (p={max(p):.2f})", self.name)
        return Decision()


def readings(text: str) -> list[str]:
    """`text` and the plain-text readings an obfuscation would hide behind (decoded base64, leetspeak
    read back, quoted pieces joined), each once. ROT13 and reversal are left to the rules: a
    classifier's score on the gibberish they make of plain text means nothing."""
    out: list[str] = []
    for v in [text, unleet(text), joined_quotes(text), *base64_decoded(text)]:
        if v.strip() and v not in out:
            out.append(v)
    return out


__all__ = ["ClassifierGuard", "HarmModelGuard", "InjectionModelGuard", "WITHHELD", "readings", "windows"]
