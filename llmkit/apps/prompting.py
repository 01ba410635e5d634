"""Prompting strategies over any `LLM`: zero-shot, few-shot (fixed, seeded random, or nearest by
embedding), chain-of-thought, self-consistency and least-to-most — each asks the model through
its chat template and extracts the answer with the evaluation harness's extractor.

    cot = chain_of_thought()
    cot.answer(llm, "What is 17 + 8?").answer                 # "25" (if the model gets it)
    sc = self_consistency(k=5, temperature=0.7)
    a = sc.answer(llm, "What is 17 + 8?"); a.votes, a.margin  # {"25": 4, "24": 1}, 0.6

`answer_all(llm, questions)` asks many questions at once: a local model runs them through the
inference engine's continuous batching (`llmkit.apps.batching`). Few-shot examples, the
chain-of-thought suffix and the answer extraction are the harness's own (`llmkit.eval.harness`),
so a strategy scores as `llmkit eval` would.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..eval.harness import COT_SUFFIX, extract_answer, fewshot_examples
from .batching import Reply, complete_chats
from .callbacks import Callbacks
from .prompts import Prompt

Messages = list[dict[str, Any]]
SELECTIONS = ("fixed", "random", "nearest")


@dataclass
class Answer:
    """A strategy's answer to one question: the extracted `answer` (None when the extractor
    found nothing), the model's last `output`, and for self-consistency the `votes` and the
    `margin` (top votes minus runner-up votes, over k). Tokens count every call made for it. An
    agent's answer (ReAct, PAL: `llmkit.apps.agent_strategies`) has the `status` its run ended with
    ("answered", "step_limit", "syntax_error", ...) and a short trace in `steps`."""

    answer: str | None
    output: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    votes: dict[str, int] = field(default_factory=dict)
    margin: float | None = None
    steps: list[str] = field(default_factory=list)  # least-to-most's sub-questions, an agent's trace
    status: str | None = None  # how an agent's run ended; None for a plain prompting strategy

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Shot:
    """A solved example for few-shot prompting."""
    question: str
    answer: str
    id: str = ""


class Strategy:
    """How to ask: `messages(question)` builds the conversation, `answer_all` asks many questions
    in batches and extracts each answer."""

    name = "strategy"

    def __init__(self, prompt: Prompt | str | None = None, extract: str = "last_number", max_new_tokens: int = 32,
                 system: str | None = None):
        if isinstance(prompt, str):
            prompt = Prompt(prompt, system=system)
        self.prompt = prompt or Prompt("{{ question }}", system=system)
        if "question" not in self.prompt.variables:
            raise ValueError(f"a strategy's prompt must read the variable 'question'; it reads "
                             f"{', '.join(self.prompt.variables) or 'none'}")
        extract_answer("", extract)  # a bad extractor fails here, before any generation
        self.extract, self.max_new_tokens = extract, max_new_tokens

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def user_text(self, question: str) -> str:
        return self.prompt.render(question=question)

    def messages(self, question: str, qid: str = "") -> Messages:
        return self.prompt.messages(question=question)

    def answer(self, llm: Any, question: str, **kwargs: Any) -> Answer:
        return self.answer_all(llm, [question], **kwargs)[0]

    def answer_all(self, llm: Any, questions: Sequence[str], ids: Sequence[str] | None = None, batch_size: int = 16,
                   callbacks: Callbacks | None = None, progress: bool = False) -> list[Answer]:
        ids = list(ids) if ids is not None else [str(i) for i in range(len(questions))]
        conversations = [self.messages(q, i) for q, i in zip(questions, ids)]
        replies = complete_chats(llm, conversations, batch_size=batch_size, callbacks=callbacks, progress=progress,
                                 desc=self.name, max_new_tokens=self.max_new_tokens, temperature=0)
        return [self._scored(r) for r in replies]

    def _scored(self, reply: Reply) -> Answer:
        return Answer(extract_answer(reply.text, self.extract), reply.text, reply.prompt_tokens or 0,
                      reply.completion_tokens or 0, reply.seconds)


class ZeroShot(Strategy):
    name = "zero-shot"


class FewShot(Strategy):
    """`k` solved examples as earlier user/assistant turns. `select`: "fixed" (the first k of
    `examples`), "random" (the harness's seeded draw, different for each question), or "nearest"
    (the k most similar by `embedder.embed` cosine similarity)."""

    name = "few-shot"

    def __init__(self, examples: Sequence[Shot | Any], k: int = 3, select: str = "random", seed: int = 0,
                 embedder: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        if select not in SELECTIONS:
            raise ValueError(f"select={select!r}: use one of {', '.join(SELECTIONS)}")
        if select == "nearest" and embedder is None:
            raise ValueError("select='nearest' needs an embedder= (an LLM with embed, e.g. all-MiniLM-L6-v2)")
        if k < 1:
            raise ValueError(f"k={k}: few-shot needs at least one example")
        self.pool = [_shot(ex) for ex in examples]
        if len(self.pool) < k:
            raise ValueError(f"few-shot with k={k} needs at least {k} examples, got {len(self.pool)}")
        self.k, self.select, self.seed, self.embedder = k, select, seed, embedder
        self._vectors = None

    def shots(self, question: str, qid: str = "") -> list[Shot]:
        if self.select == "fixed":
            return [s for s in self.pool if s.id != qid or not qid][:self.k]
        if self.select == "random":
            return fewshot_examples(self.pool, self.k, self.seed, qid or question)
        import numpy as np

        if self._vectors is None:
            self._vectors = _unit(np.asarray(self.embedder.embed([s.question for s in self.pool]), dtype=np.float32))
        q = _unit(np.asarray(self.embedder.embed([question]), dtype=np.float32))[0]
        order = np.argsort(-(self._vectors @ q), kind="stable")
        return [self.pool[i] for i in order if self.pool[i].question != question][:self.k]

    def messages(self, question: str, qid: str = "") -> Messages:
        history = []
        for shot in self.shots(question, qid):
            history += [{"role": "user", "content": self.user_text(shot.question)},
                        {"role": "assistant", "content": shot.answer}]
        return self.prompt.messages(history, question=question)


class ChainOfThought(Strategy):
    """The question with the harness's "Let's think step by step." suffix and room to reason; the
    answer is extracted from the end of the reasoning."""

    name = "cot"

    def __init__(self, max_new_tokens: int = 192, **kwargs: Any):
        super().__init__(max_new_tokens=max_new_tokens, **kwargs)

    def user_text(self, question: str) -> str:
        return super().user_text(question) + COT_SUFFIX

    def messages(self, question: str, qid: str = "") -> Messages:
        msgs = super().messages(question, qid)
        msgs[-1]["content"] += COT_SUFFIX
        return msgs


class SelfConsistency(Strategy):
    """`k` samples of a base strategy (chain-of-thought by default) at `temperature`, each with its
    own seed; the answer is the majority vote (ties: the answer reached first), and the margin is
    (top votes - runner-up votes) / k: 1 when all agree, near 0 when the vote is split."""

    name = "self-consistency"

    def __init__(self, k: int = 5, temperature: float = 0.7, base: Strategy | None = None, seed: int = 0):
        if k < 1:
            raise ValueError(f"k={k}: self-consistency needs at least one sample")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}: self-consistency samples, so it needs a temperature > 0")
        self.base = base or ChainOfThought()
        self.k, self.temperature, self.seed = k, temperature, seed
        self.extract, self.max_new_tokens, self.prompt = self.base.extract, self.base.max_new_tokens, self.base.prompt

    def messages(self, question: str, qid: str = "") -> Messages:
        return self.base.messages(question, qid)

    def answer_all(self, llm: Any, questions: Sequence[str], ids: Sequence[str] | None = None, batch_size: int = 16,
                   callbacks: Callbacks | None = None, progress: bool = False) -> list[Answer]:
        ids = list(ids) if ids is not None else [str(i) for i in range(len(questions))]
        conversations, gens = [], []
        for n, (q, i) in enumerate(zip(questions, ids)):
            msgs = self.messages(q, i)
            for j in range(self.k):
                conversations.append(msgs)
                gens.append({"seed": self.seed * 1_000_003 + n * self.k + j})
        replies = complete_chats(llm, conversations, gens, batch_size=batch_size, callbacks=callbacks,
                                 progress=progress, desc=self.name, max_new_tokens=self.max_new_tokens,
                                 temperature=self.temperature)
        return [vote(replies[n * self.k:(n + 1) * self.k], self.extract) for n in range(len(questions))]


def vote(replies: Sequence[Reply], extract: str) -> Answer:
    """The majority answer of sampled replies (ties go to the answer reached first; replies where
    the extractor finds nothing do not vote), with the vote counts and the margin over all k."""
    answers = [extract_answer(r.text, extract) for r in replies]
    votes = Counter(a for a in answers if a is not None)
    ranked = sorted(votes.items(), key=lambda kv: (-kv[1], answers.index(kv[0])))
    top = ranked[0][0] if ranked else None
    margin = ((ranked[0][1] - (ranked[1][1] if len(ranked) > 1 else 0)) / len(replies)) if ranked else 0.0
    shown = next((r.text for r, a in zip(replies, answers) if a == top), replies[0].text if replies else "")
    return Answer(top, shown, sum(r.prompt_tokens or 0 for r in replies),
                  sum(r.completion_tokens or 0 for r in replies), sum(r.seconds for r in replies),
                  dict(ranked), margin)


DECOMPOSE = ("Break the problem below into at most {max_steps} simpler sub-questions that lead to its answer, "
             "one per line, the last being the problem itself. Write only the sub-questions.\n\nProblem: {question}")


class LeastToMost(Strategy):
    """Least-to-most prompting (Zhou et al., 2022): first the model splits the problem into simpler
    sub-questions, then answers them in order in one conversation, each answer in view of the
    earlier ones; the last answer is the answer."""

    name = "least-to-most"

    def __init__(self, max_steps: int = 3, max_new_tokens: int = 96, **kwargs: Any):
        super().__init__(max_new_tokens=max_new_tokens, **kwargs)
        self.max_steps = max_steps

    def answer_all(self, llm: Any, questions: Sequence[str], ids: Sequence[str] | None = None, batch_size: int = 16,
                   callbacks: Callbacks | None = None, progress: bool = False) -> list[Answer]:
        system = self.prompt.render_system(question="")
        head = [{"role": "system", "content": system}] if system else []
        plans = complete_chats(
            llm, [head + [{"role": "user", "content": DECOMPOSE.format(max_steps=self.max_steps, question=q)}]
                  for q in questions],
            batch_size=batch_size, callbacks=callbacks, progress=progress, desc=f"{self.name} plan",
            max_new_tokens=24 * self.max_steps, temperature=0)
        steps = [sub_questions(p.text, q, self.max_steps) for p, q in zip(plans, questions)]
        used = [[p.prompt_tokens or 0, p.completion_tokens or 0, p.seconds] for p in plans]
        talks: list[Messages] = [list(head) for _ in questions]
        last: list[Reply | None] = [None] * len(questions)
        for r in range(max((len(s) for s in steps), default=0)):  # no questions: no rounds
            active = [n for n, s in enumerate(steps) if r < len(s)]
            for n in active:
                talks[n].append({"role": "user", "content": steps[n][r]})
            replies = complete_chats(llm, [talks[n] for n in active], batch_size=batch_size, callbacks=callbacks,
                                     progress=progress, desc=f"{self.name} step {r + 1}",
                                     max_new_tokens=self.max_new_tokens, temperature=0)
            for n, reply in zip(active, replies):
                talks[n].append({"role": "assistant", "content": reply.text})
                last[n] = reply
                used[n][0] += reply.prompt_tokens or 0
                used[n][1] += reply.completion_tokens or 0
                used[n][2] += reply.seconds
        return [Answer(extract_answer(rep.text, self.extract) if rep else None, rep.text if rep else "",
                       u[0], u[1], u[2], steps=s) for rep, u, s in zip(last, used, steps)]


def sub_questions(plan: str, question: str, max_steps: int) -> list[str]:
    """The sub-questions of a decomposition (list markers stripped), at most `max_steps`, the last
    always the original question."""
    lines = [re.sub(r"^\s*(?:[-*•]|\d+[.):]|(?:sub-?question|step)\s*\d*\s*[:.)-])\s*", "", ln, flags=re.I).strip()
             for ln in plan.splitlines()]
    subs = [ln for ln in lines if ln and ln != question][:max_steps - 1]
    return subs + [question]


def _shot(ex: Shot | Any) -> Shot:
    if isinstance(ex, Shot):
        return ex
    if isinstance(ex, (tuple, list)) and len(ex) == 2:
        return Shot(str(ex[0]), str(ex[1]))
    if isinstance(ex, dict):
        return Shot(str(ex["question"]), str(ex["answer"]), str(ex.get("id", "")))
    return Shot(question_text(ex), str(ex.answer), str(getattr(ex, "id", "")))  # a TaskExample


def question_text(ex: Any) -> str:
    """The bare question of a task example: its meta's "question", else its prompt without the
    harness's "Question: ... Answer:" frame."""
    meta = getattr(ex, "meta", None) or {}
    if meta.get("question"):
        return str(meta["question"])
    text = ex.prompt
    m = re.fullmatch(r"\s*Question:\s*(.*?)\s*(?:\n\s*)?Answer:\s*", text, flags=re.S)
    return m.group(1) if m else text.strip()


def _unit(x: Any) -> Any:
    import numpy as np

    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------- the public constructors
def zero_shot(prompt: Prompt | str | None = None, **kwargs: Any) -> ZeroShot:
    """Ask the question as it is."""
    return ZeroShot(prompt, **kwargs)


def few_shot(examples: Sequence[Any], k: int = 3, select: str = "random", seed: int = 0, embedder: Any = None,
             **kwargs: Any) -> FewShot:
    """Ask after `k` solved examples (`Shot`s, (question, answer) pairs, dicts or task examples)."""
    return FewShot(examples, k, select, seed, embedder, **kwargs)


def chain_of_thought(**kwargs: Any) -> ChainOfThought:
    """Ask the model to think step by step; the answer is extracted from its reasoning."""
    return ChainOfThought(**kwargs)


def self_consistency(k: int = 5, temperature: float = 0.7, base: Strategy | None = None, seed: int = 0) -> SelfConsistency:
    """Sample `k` chains of thought and take the majority answer (with its vote margin)."""
    return SelfConsistency(k, temperature, base, seed)


def least_to_most(max_steps: int = 3, **kwargs: Any) -> LeastToMost:
    """Decompose into sub-questions, then answer them in order."""
    return LeastToMost(max_steps, **kwargs)


# "react" and "pal" are agents: llmkit.apps.agent_strategies (prompt_eval's make_strategy builds them)
STRATEGIES = ("zero-shot", "few-shot", "cot", "self-consistency", "least-to-most", "react", "pal")
