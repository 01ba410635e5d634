"""One context assembler: the system prompt, retrieved text and the conversation, fitted into a
token budget before a model call.

    a = assemble(llm, system="Answer from the passages.", history=turns,
                 retrieved=[(text, score), ...], question="What changed in 3.12?", max_new_tokens=256)
    reply = llm.chat(a.messages, max_new_tokens=256)

The rule: the system prompt and the latest turn always stay; the lowest-scoring retrieved chunks
go first, then the oldest turns (whole user/assistant exchanges, as `fit_history` drops them);
never a silent overflow - when the system prompt and the latest turn alone are over the budget,
`ContextOverflow` is raised, and whatever was dropped is reported (`Assembled`) and logged.

Retrieved chunks go into the system message, numbered [1], [2], ... in their original order among
those kept, so an answer can cite them.

Counting (`count_tokens`) is exact for a `LocalLLM` and for llmkit serve or vLLM (their
``/tokenize`` renders the chat template); anything else is counted with `estimate_chat_tokens`,
an upper bound. The search over what to drop needs about log2(candidates) counts, not one per
candidate: a remote count is an HTTP request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..tokenizer.chat import estimate_chat_tokens, exchange_starts, first_fit

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]
Counter = Callable[[Messages], int]

RETRIEVED_HEADER = "Retrieved passages (cite them by number, e.g. [1]):"


class ContextOverflow(ValueError):
    """The parts that always stay (the system prompt and the latest turn) do not fit the budget."""


@dataclass(frozen=True)
class Chunk:
    """A retrieved passage: its text, its retrieval score (higher is better) and its position in
    the order it was given (the order it is shown in)."""

    text: str
    score: float
    index: int


@dataclass
class Assembled:
    """What `assemble` sends: `messages`, their `tokens` (as counted) within `budget`; the
    retrieved chunks kept and dropped (lowest score first), and the turns dropped (oldest first)."""

    messages: Messages
    tokens: int
    budget: int
    kept_chunks: list[Chunk] = field(default_factory=list)
    dropped_chunks: list[Chunk] = field(default_factory=list)
    dropped_turns: Messages = field(default_factory=list)

    @property
    def dropped(self) -> bool:
        """Whether anything given did not fit."""
        return bool(self.dropped_chunks or self.dropped_turns)


def count_tokens(llm: Any, messages: Messages) -> int:
    """The tokens `messages` take in `llm`'s context, ready for the assistant's turn: the model's
    own count where it has one (`chat_tokens`: exact for a `LocalLLM`, and for a `RemoteLLM` whose
    server renders chat templates in /tokenize, an upper bound otherwise); for any other object
    `estimate_chat_tokens` (one token per UTF-8 byte, plus the template's markers), which never
    under-counts a byte-level BPE."""
    counter = getattr(llm, "chat_tokens", None)
    if callable(counter):
        return int(counter(messages))
    return estimate_chat_tokens(messages)


def default_budget(llm: Any, max_new_tokens: int) -> int:
    """The model's context window less room for `max_new_tokens` (an encoder-decoder's prompt is
    its source, which has the whole window)."""
    try:
        window = int(llm.context_window)
    except (AttributeError, NotImplementedError) as e:
        raise ValueError(f"{getattr(llm, 'name', type(llm).__name__)} does not say its context window: "
                         "pass budget= (the most tokens the prompt may take)") from e
    return window if getattr(llm, "seq2seq", False) else window - max_new_tokens


def as_chunks(retrieved: Iterable[Any]) -> list[Chunk]:
    """Retrieved items as `Chunk`s: ``(text, score)`` pairs, objects with ``.text`` and ``.score``
    (a search `Hit`), dicts with "text" and "score", or plain strings (best first: their order is
    their score)."""
    out = []
    for i, item in enumerate(retrieved):
        if isinstance(item, str):
            text, score = item, -float(i)
        elif isinstance(item, Mapping):
            text, score = item.get("text"), item.get("score", -float(i))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            text, score = item
        elif hasattr(item, "text"):
            text, score = item.text, getattr(item, "score", -float(i))
        else:
            raise TypeError(f"retrieved[{i}] is a {type(item).__name__}: give (text, score) pairs, objects with "
                            ".text and .score, or strings")
        if not isinstance(text, str):
            raise TypeError(f"retrieved[{i}]'s text is a {type(text).__name__}, not a string")
        out.append(Chunk(text, float(score), i))
    return out


def system_text(system: str | None, chunks: Sequence[Chunk], header: str = RETRIEVED_HEADER) -> str | None:
    """The system message: the system prompt, then the kept chunks numbered in their original order."""
    if not chunks:
        return system
    listed = "\n\n".join(f"[{n}] {c.text}" for n, c in enumerate(sorted(chunks, key=lambda c: c.index), 1))
    return f"{system}\n\n{header}\n{listed}" if system else f"{header}\n{listed}"


def _turn(message: Any, what: str) -> dict[str, Any]:
    if isinstance(message, str):
        return {"role": "user", "content": message}
    if not isinstance(message, Mapping) or "role" not in message:
        raise TypeError(f"{what} must be a {{'role': ..., 'content': ...}} dict or a string, got {message!r:.80}")
    return dict(message)


def assemble(llm: Any, system: str | None = None, history: Sequence[Mapping[str, Any]] = (),
             retrieved: Iterable[Any] = (), question: str | Mapping[str, Any] | None = None,
             budget: int | None = None, max_new_tokens: int = 256, count: Counter | None = None,
             header: str = RETRIEVED_HEADER) -> Assembled:
    """Fit `system`, `retrieved` chunks and the conversation into `budget` tokens (default: the
    model's context window less `max_new_tokens`).

    `history` is the conversation so far; `question` the latest turn (a string is a user message;
    None: the last message of `history` is the latest turn). A leading system message in
    `history` is taken as `system`. `count(messages)` overrides how tokens are counted (default
    `count_tokens(llm, ...)`). Raises `ContextOverflow` when the system prompt and the latest
    turn alone do not fit."""
    turns = [_turn(m, f"history[{i}]") for i, m in enumerate(history)]
    if turns and turns[0].get("role") == "system":
        if system is not None:
            raise ValueError("history starts with a system message and system= is given too: give the system "
                             "prompt once")
        system, turns = str(turns[0].get("content") or ""), turns[1:]
    if question is not None:
        turns.append(_turn(question, "question"))
    if not turns:
        raise ValueError("nothing to answer: give question= (the latest turn) or a non-empty history")
    why = "" if budget is not None else f" (the context window less max_new_tokens={max_new_tokens})"
    if budget is None:
        budget = default_budget(llm, max_new_tokens)
    count = count or (lambda messages: count_tokens(llm, messages))
    chunks = as_chunks(retrieved)
    # drop order: lowest score first; of equal scores, the one shown later
    drop_order = sorted(chunks, key=lambda c: (c.score, -c.index))
    cuts = exchange_starts(turns)
    # candidate k: the first k chunks of drop_order dropped and every turn kept, for k = 0..len(chunks);
    # then every chunk dropped and the conversation cut at cuts[j], j = 1..: each holds less than the last
    candidates = [(k, 0) for k in range(len(chunks) + 1)] + [(len(chunks), j) for j in range(1, len(cuts))]
    counted: dict[int, int] = {}

    def build(i: int) -> Messages:
        k, j = candidates[i]
        text = system_text(system, drop_order[k:], header)
        head = [{"role": "system", "content": text}] if text is not None else []
        return head + turns[cuts[j]:]

    def fits(i: int) -> bool:
        counted[i] = count(build(i))
        return counted[i] <= budget

    at = first_fit(len(candidates), fits)
    if at is None:
        raise _overflow(system, turns[-1], counted[len(candidates) - 1], budget, why, count)
    k, j = candidates[at]
    result = Assembled(build(at), counted[at], budget, kept_chunks=sorted(drop_order[k:], key=lambda c: c.index),
                       dropped_chunks=drop_order[:k], dropped_turns=turns[:cuts[j]])
    if result.dropped:
        log.info("context: %d tokens of a %d-token budget; dropped %d retrieved chunk(s) and %d oldest message(s)",
                 result.tokens, budget, len(result.dropped_chunks), len(result.dropped_turns))
    return result


def _overflow(system: str | None, latest: dict, total: int, budget: int, why: str, count: Counter) -> ContextOverflow:
    """The error that names what does not fit (counted apart only now: the error path)."""
    parts = f"the latest turn takes {count([latest])} tokens"
    if system is not None:
        parts = f"the system prompt takes {count([{'role': 'system', 'content': system}])} tokens and {parts}"
    return ContextOverflow(f"{parts}: {total} tokens with the chat template, over the budget of {budget} tokens{why}; "
                           "shorten them, or give a larger budget (or fewer max_new_tokens)")
