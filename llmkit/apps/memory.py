"""Conversation memory: what a chat remembers, and what of it is sent with the next turn.

    memory = WindowMemory(max_tokens=1024)
    memory.add({"role": "user", "content": "Hi, I am Ada."})
    reply = llm.chat(memory.context(llm, system="Be brief.", max_new_tokens=256), max_new_tokens=256)
    memory.add({"role": "assistant", "content": reply})

`BufferMemory` sends everything that fits the model's context; `WindowMemory` the newest turns
that fit `max_tokens`; `SummaryMemory` folds the turns that fall out of its window into a running
summary written by a model, sent in the system message. Every `context` is built by the one
assembler (`llmkit.apps.context.assemble`): the system prompt and the latest turn always stay,
and a prompt that cannot fit raises `ContextOverflow` rather than overflowing. A memory saves as
JSON (`to_json` / `Memory.from_json`), so a chat can be saved and resumed.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from .callbacks import Callbacks, chat_call
from .context import Assembled, ContextOverflow, assemble, count_tokens, default_budget

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]

SUMMARY_PREFIX = "Summary of the earlier conversation: "
SUMMARY_INSTRUCTION = ("Summarise the conversation below for the assistant who continues it: keep names, facts, "
                       "decisions and open questions; write at most {words} words, no preamble.")
_ROLES = ("user", "assistant", "tool")
UNLIMITED = 2**62  # the budget of a memory for a model whose context window is unknown


class Memory:
    """A conversation's turns (user, assistant and tool messages; the system prompt is given to
    `context`, so that changing it does not rewrite the memory). This base class sends everything
    that fits the model's context (as `BufferMemory`)."""

    kind = "buffer"

    def __init__(self) -> None:
        self._messages: Messages = []
        self.last: Assembled | None = None  # what the last `context` assembled (tokens, what was dropped)

    def add(self, message: Mapping[str, Any]) -> None:
        """Remember one message ({"role": "user" | "assistant" | "tool", "content": str, ...})."""
        if not isinstance(message, Mapping) or message.get("role") not in _ROLES:
            raise ValueError(f"a memory holds user, assistant and tool messages, got {message!r:.80}; give the "
                             "system prompt to context(system=...)")
        if not isinstance(message.get("content"), str) and not message.get("tool_calls"):
            raise TypeError(f"message content must be a string, got {type(message.get('content')).__name__}")
        self._messages.append({k: message[k] for k in ("role", "content", "tool_calls", "tool_call_id", "name")
                               if message.get(k) is not None})

    def pop(self) -> dict[str, Any]:
        """Forget the newest message (a turn whose reply failed) and return it."""
        if not self._messages:
            raise IndexError("the memory is empty")
        return self._messages.pop()

    @property
    def messages(self) -> Messages:
        """Every message remembered, oldest first (a copy)."""
        return [dict(m) for m in self._messages]

    def clear(self) -> None:
        """Forget the conversation."""
        self._messages = []
        self.last = None

    def budget(self, llm: Any, max_new_tokens: int) -> int:
        """The most tokens the prompt may take: the model's context less `max_new_tokens`; for a
        model that does not say its window, no limit (everything is sent and the server refuses
        what it cannot hold, as `RemoteLLM.fit_history` does)."""
        try:
            return default_budget(llm, max_new_tokens)
        except ValueError:
            return UNLIMITED

    def context(self, llm: Any, system: str | None = None, max_new_tokens: int = 256,
                retrieved: Any = ()) -> Messages:
        """The messages to send to `llm` for the next reply (the latest turn must be added first),
        fitted by the assembler: the system prompt and the latest turn stay; retrieved chunks, then
        the oldest turns, go first. Raises `ContextOverflow` when even those two do not fit."""
        if not self._messages:
            raise ValueError("the memory is empty: add the user's message before asking for the context")
        self.last = assemble(llm, system=system, history=self._messages, retrieved=retrieved,
                             budget=self.budget(llm, max_new_tokens), max_new_tokens=max_new_tokens)
        return self.last.messages

    def to_json(self) -> dict[str, Any]:
        """The memory as a JSON-ready dict (`Memory.from_json` reads it back)."""
        return {"kind": self.kind, "messages": self.messages}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], llm: Any = None) -> Memory:
        """A memory saved with `to_json`; `llm` writes a `SummaryMemory`'s summaries."""
        kinds = {"buffer": BufferMemory, "window": WindowMemory, "summary": SummaryMemory}
        kind = data.get("kind")
        if kind not in kinds:
            raise ValueError(f"memory kind {kind!r} is not one of {', '.join(kinds)}")
        memory = kinds[kind]._restore(data, llm)
        for m in data.get("messages") or []:
            memory.add(m)
        return memory

    @classmethod
    def _restore(cls, data: Mapping[str, Any], llm: Any) -> Memory:
        return cls()


class BufferMemory(Memory):
    """Everything: the whole conversation is sent while it fits the model's context; past that the
    oldest exchanges are left out (and logged), never overflowing."""


class WindowMemory(Memory):
    """A sliding window by tokens: the newest turns whose prompt (system message included) fits
    `max_tokens` (and the model's context)."""

    kind = "window"

    def __init__(self, max_tokens: int) -> None:
        super().__init__()
        if not isinstance(max_tokens, int) or max_tokens <= 0:
            raise ValueError(f"max_tokens must be a positive number of tokens, got {max_tokens!r}")
        self.max_tokens = max_tokens

    def budget(self, llm: Any, max_new_tokens: int) -> int:
        """`max_tokens`, or less where the model's context (less `max_new_tokens`) is smaller; a
        model that does not say its window (a server without max_model_len) gets `max_tokens`."""
        try:
            return min(self.max_tokens, default_budget(llm, max_new_tokens))
        except ValueError:  # the window is unknown: the memory's own budget is the only one there is
            return self.max_tokens

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "max_tokens": self.max_tokens}

    @classmethod
    def _restore(cls, data: Mapping[str, Any], llm: Any) -> Memory:
        return cls(int(data["max_tokens"]))


class SummaryMemory(WindowMemory):
    """A window of the newest turns (`max_tokens`, system message and summary included), and a
    running summary of the turns that fell out of it, written by `llm` (a ``model`` event that
    `callbacks` see) and sent in the system message as "Summary of the earlier conversation: ...".
    The summary adds at most `summary_tokens` to the system message (default a quarter of
    `max_tokens`): the model is asked for no more, and what is still over is cut, so it never
    crowds out the latest turn."""

    kind = "summary"

    def __init__(self, llm: Any, max_tokens: int, summary_tokens: int | None = None, callbacks: Any = None,
                 instruction: str = SUMMARY_INSTRUCTION) -> None:
        super().__init__(max_tokens)
        self.llm = llm
        self.summary_tokens = summary_tokens or max(16, max_tokens // 4)
        if self.summary_tokens >= max_tokens:
            raise ValueError(f"summary_tokens ({self.summary_tokens}) must be under max_tokens ({max_tokens}): the "
                             "window holds the summary and the newest turns")
        self.callbacks = Callbacks(callbacks)
        self.instruction = instruction
        self.summary = ""
        self.summarized = 0  # how many of the oldest messages the summary stands for
        self.summarized_now = 0  # how many the last `context` call folded in (0: no summary was made)

    def clear(self) -> None:
        super().clear()
        self.summary, self.summarized, self.summarized_now = "", 0, 0

    def pop(self) -> dict[str, Any]:
        if len(self._messages) <= self.summarized:
            raise IndexError("the newest message is already in the summary")
        return super().pop()

    def system_with_summary(self, system: str | None) -> str | None:
        """The system message: the system prompt, then the summary (when there is one)."""
        if not self.summary:
            return system
        summary = SUMMARY_PREFIX + self.summary
        return f"{system}\n\n{summary}" if system else summary

    def context(self, llm: Any, system: str | None = None, max_new_tokens: int = 256,
                retrieved: Any = ()) -> Messages:
        """As `Memory.context`; the turns that do not fit the window are summarised first (one model
        call each time turns fall out; `summarized_now` says how many were folded in)."""
        if len(self._messages) <= self.summarized:
            raise ValueError("the memory holds no new turn: add the user's message before asking for the context")
        self.summarized_now = 0
        budget = self.budget(llm, max_new_tokens)
        while True:
            a = assemble(llm, system=self.system_with_summary(system), history=self._messages[self.summarized:],
                         retrieved=retrieved, budget=budget, max_new_tokens=max_new_tokens)
            if not a.dropped_turns:
                self.last = a
                return a.messages
            try:  # leave room for a summary of full length before choosing what falls out: one model call
                dropped = assemble(llm, system=self.system_with_summary(system),
                                   history=self._messages[self.summarized:], retrieved=retrieved,
                                   budget=budget - self.summary_tokens).dropped_turns
            except ContextOverflow:  # no such room: what does not fit now, and assemble again after
                dropped = a.dropped_turns
            self._summarize(llm, dropped)  # each round folds in at least one turn

    def _summarize(self, llm: Any, turns: Messages) -> None:
        """Fold `turns` (the oldest not yet summarised) into the running summary."""
        words = max(8, self.summary_tokens // 2)
        transcript = "\n".join(f"{m['role']}: {m.get('content') or ''}" for m in turns)
        if self.summary:
            transcript = f"(summary so far) {self.summary}\n{transcript}"
        # the request itself must fit the summarising model: the oldest part of the transcript goes first
        try:
            room = default_budget(self.llm, self.summary_tokens)
        except ValueError:  # a summariser that does not say its window: it refuses an over-long request itself
            room = None
        if room is not None:
            transcript = cut_to_fit(self.llm, lambda t: self._request(t, words), transcript, room, keep="end")
        reply = chat_call(self.llm, self._request(transcript, words), self.callbacks,
                          max_new_tokens=self.summary_tokens, temperature=0.0)
        summary = (reply if isinstance(reply, str) else getattr(reply, "content", None) or "").strip()
        # never adding more than summary_tokens to the system message, counted as the chat model counts
        def wrap(text: str) -> Messages:
            return [{"role": "system", "content": SUMMARY_PREFIX + text}]

        room = self.summary_tokens + count_tokens(llm, wrap(""))
        self.summary = cut_to_fit(llm, wrap, summary, room, keep="start")
        self.summarized += len(turns)
        self.summarized_now += len(turns)
        log.info("memory: %d earlier message(s) summarised into %d characters", len(turns), len(self.summary))

    def _request(self, transcript: str, words: int) -> Messages:
        return [{"role": "system", "content": self.instruction.format(words=words)},
                {"role": "user", "content": transcript}]

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "summary": self.summary, "summarized": self.summarized,
                "summary_tokens": self.summary_tokens}

    @classmethod
    def _restore(cls, data: Mapping[str, Any], llm: Any) -> Memory:
        if llm is None:
            raise ValueError("a summary memory needs the model that writes its summaries: from_json(data, llm=...)")
        memory = cls(llm, int(data["max_tokens"]), summary_tokens=data.get("summary_tokens"))
        memory.summary, memory.summarized = str(data.get("summary") or ""), int(data.get("summarized") or 0)
        return memory


def cut_to_fit(llm: Any, wrap: Any, text: str, budget: int, keep: str = "start") -> str:
    """The longest part of `text` (its start, or with ``keep="end"`` its end, cut at a space where
    there is one) whose messages, ``wrap(part)``, count at most `budget` tokens for `llm`: a
    bisection over lengths, about log2(len(text)) counts. Raises `ContextOverflow` when even
    nothing fits."""
    def part(n: int) -> str:
        if n >= len(text):
            return text
        piece = text[:n] if keep == "start" else text[len(text) - n:]
        space = piece.rfind(" ") if keep == "start" else piece.find(" ")
        if space > 0 and keep == "start":
            piece = piece[:space]
        elif 0 <= space < len(piece) - 1 and keep == "end":
            piece = piece[space + 1:]
        return piece

    def fits(n: int) -> bool:
        return count_tokens(llm, wrap(part(n))) <= budget

    if fits(len(text)):
        return text
    lo, hi = 0, len(text)  # fits(lo) is checked below; fits(hi) is false
    if not fits(0):
        raise ContextOverflow(f"even an empty text does not fit {budget} tokens with its messages")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return part(lo)
