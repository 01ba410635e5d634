"""`llmkit chat --memory`: the conversation goes through the memory classes (the replies are those
of the same memory driven from Python), the window and summary notices appear, /save still writes
the whole conversation, and --help explains the options."""

from __future__ import annotations

import io
import json

import pytest

import llmkit
from llmkit.apps.memory import WindowMemory
from llmkit.cli.main import main

LINES = [f"tell me about item number {i} and its long history" for i in range(4)]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def chat(monkeypatch, capsys, tiny_dir, *options, lines=LINES):
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    code = main(["chat", "-m", str(tiny_dir), "--temperature", "0", "--max-new-tokens", "4", *options])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def test_window_memory_sends_what_the_memory_assembles(tiny_dir, monkeypatch, capsys):
    out, err = chat(monkeypatch, capsys, tiny_dir, "--memory", "window", "--memory-tokens", "100",
                    "--system", "Be brief.")
    llm, memory, replies = llmkit.load(tiny_dir), WindowMemory(100), []
    for line in LINES:
        memory.add({"role": "user", "content": line})
        reply = llm.chat(memory.context(llm, "Be brief.", max_new_tokens=4), max_new_tokens=4, temperature=0)
        if reply:
            memory.add({"role": "assistant", "content": reply})
            replies.append(reply)
        else:
            memory.pop()
    assert memory.last.dropped_turns  # the window slid
    assert out == "".join(r + "\n" for r in replies)
    assert "memory: the oldest" in err and "outgrew" not in err


def test_summary_memory_notice_and_save(tiny_dir, tmp_path, monkeypatch, capsys):
    saved = tmp_path / "chat.jsonl"
    _, err = chat(monkeypatch, capsys, tiny_dir, "--memory", "summary", "--memory-tokens", "120",
                    lines=LINES + [f"/save {saved}"])
    assert "summarised into the system message" in err and "error" not in err
    messages = json.loads(saved.read_text())["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == LINES  # the whole conversation is saved


def test_memory_options_are_explained_and_checked(tiny_dir, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        main(["chat", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--memory {buffer,window,summary}" in out and "--memory-tokens N" in out and "running summary" in out
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    assert main(["chat", "-m", str(tiny_dir), "--memory-tokens", "100"]) == 2
    assert "add --memory" in capsys.readouterr().err
