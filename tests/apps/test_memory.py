"""Conversation memory: a buffer sends what fits, a window the newest turns within its tokens, a
summary memory asks the model for a summary of what fell out of the window (callbacks see the
call) and sends it in the system message, never over the budget; memories save as JSON."""

from __future__ import annotations

import json

import pytest

import llmkit
from llmkit.apps.callbacks import Recorder
from llmkit.apps.context import ContextOverflow, count_tokens
from llmkit.apps.memory import SUMMARY_PREFIX, BufferMemory, Memory, SummaryMemory, WindowMemory


class Scripted:
    """A stand-in LLM: counts with the byte estimate (no chat_tokens), answers from a script."""

    name = "scripted"
    context_window = 4096

    def __init__(self, replies=None):
        self.replies, self.calls = list(replies or []), []

    def chat(self, messages, **kwargs):
        self.calls.append((messages, kwargs))
        return self.replies.pop(0) if self.replies else f"summary {len(self.calls)}"


def fill(memory, n, words=6):
    for i in range(n):
        memory.add({"role": "user", "content": f"question {i} " * words})
        memory.add({"role": "assistant", "content": f"answer {i} " * words})
    memory.add({"role": "user", "content": "and now?"})


def test_buffer_sends_everything_that_fits():
    llm, memory = Scripted(), BufferMemory()
    fill(memory, 5)
    sent = memory.context(llm, system="Be brief.")
    assert sent == [{"role": "system", "content": "Be brief."}] + memory.messages
    with pytest.raises(ValueError, match="system prompt to context"):
        memory.add({"role": "system", "content": "x"})


def test_window_keeps_the_newest_turns_within_its_tokens():
    llm, memory = Scripted(), WindowMemory(max_tokens=400)
    fill(memory, 20)
    sent = memory.context(llm, system="Be brief.", max_new_tokens=64)
    kept = sent[1:]
    assert 2 < len(kept) < len(memory.messages) and kept == memory.messages[-len(kept):]
    assert kept[0]["role"] == "user"  # whole exchanges
    assert count_tokens(llm, sent) <= 400 < count_tokens(llm, sent[:1] + memory.messages[-len(kept) - 2:])
    assert memory.last.dropped_turns == memory.messages[:-len(kept)]
    # the window slides: the next exchange pushes the oldest kept one out
    memory.add({"role": "assistant", "content": "fine"})
    memory.add({"role": "user", "content": "again?"})
    assert memory.context(llm, system="Be brief.")[-1]["content"] == "again?"
    assert memory.pop() == {"role": "user", "content": "again?"}


def test_summary_memory_summarises_what_falls_out_into_the_system_message():
    llm, trace = Scripted(["Ada likes tea."]), Recorder()
    memory = SummaryMemory(llm, max_tokens=1000, callbacks=[trace])
    fill(memory, 3)
    assert len(memory.context(llm, system="Be brief.")) == 8 and not llm.calls  # fits: no summary
    fill(memory, 12)
    sent = memory.context(llm, system="Be brief.")
    assert len(llm.calls) == 1 and memory.summarized_now == memory.summarized > 0
    asked, options = llm.calls[0]
    assert "question 0" in asked[-1]["content"] and options["temperature"] == 0.0  # the oldest turns were read
    assert sent[0] == {"role": "system", "content": f"Be brief.\n\n{SUMMARY_PREFIX}Ada likes tea."}
    assert sent[1:] == memory.messages[memory.summarized:] and count_tokens(llm, sent) <= 1000
    model_events = trace.of("model")
    assert len(model_events) == 1 and model_events[0].data["text"] == "Ada likes tea."
    # the next turn that fits asks nothing; a long summary is cut to summary_tokens
    memory.add({"role": "assistant", "content": "ok"})
    memory.add({"role": "user", "content": "next"})
    memory.context(llm, system="Be brief.")
    assert len(llm.calls) == 1 and memory.summarized_now == 0
    llm.replies = ["word " * 500]
    fill(memory, 12)
    memory.context(llm, system="Be brief.")
    assert len(llm.calls) == 2 and "summary so far" in llm.calls[1][0][-1]["content"]
    prefix = count_tokens(llm, [{"role": "system", "content": SUMMARY_PREFIX}])
    assert count_tokens(llm, [{"role": "system", "content": SUMMARY_PREFIX + memory.summary}]) - prefix \
        <= memory.summary_tokens
    assert memory.summary.startswith("word word")


def test_memories_save_and_load_as_json():
    llm = Scripted(["the gist"])
    for memory in (BufferMemory(), WindowMemory(300), SummaryMemory(llm, max_tokens=300)):
        fill(memory, 8)
        memory.context(llm, system="s")
        data = json.loads(json.dumps(memory.to_json()))
        back = Memory.from_json(data, llm=llm)
        assert type(back) is type(memory) and back.messages == memory.messages
        assert back.to_json() == memory.to_json()
    with pytest.raises(ValueError, match="llm="):
        Memory.from_json({"kind": "summary", "max_tokens": 300})
    with pytest.raises(ValueError, match="not one of"):
        Memory.from_json({"kind": "nope"})
    memory.clear()
    assert memory.messages == [] and memory.summary == ""


def test_summary_memory_with_a_real_model_counts_exactly(tiny_dir):
    llm = llmkit.load(tiny_dir)
    memory = SummaryMemory(llm, max_tokens=120, summary_tokens=16)
    fill(memory, 6)
    sent = memory.context(llm, system="Be brief.", max_new_tokens=32)
    assert memory.summarized > 0 and SUMMARY_PREFIX in sent[0]["content"]
    assert llm.chat_tokens(sent) <= 120
    prefix = llm.chat_tokens([{"role": "system", "content": SUMMARY_PREFIX}])
    assert llm.chat_tokens([{"role": "system", "content": SUMMARY_PREFIX + memory.summary}]) - prefix <= 16
    memory.add({"role": "user", "content": "x " * 400})  # a turn that no window can hold
    with pytest.raises(ContextOverflow, match="latest turn takes"):
        memory.context(llm, system="Be brief.", max_new_tokens=32)
