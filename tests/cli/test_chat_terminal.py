"""`llmkit chat` driven through a pseudo-terminal, as a person types into it: Ctrl-C mid-reply
keeps the session and the conversation, slash commands never reach the model, the overflow
notice appears, the history file is written, and colour marks the reply only on a terminal."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest

from tests.peers import peer

pexpect = peer("pexpect")

TIMEOUT = 60


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, tiny_tokenizer):
    """A tiny Llama with the usual small init (a tied random model of that kind repeats its last
    token and never ends a reply on its own: a reply runs until Ctrl-C or max_new_tokens), wide
    and deep enough that 400 new tokens take a good part of a second even on a fast CPU."""
    from llmkit.pipelines.init import init_model

    path = tmp_path_factory.mktemp("chat") / "model"
    init_model("tiny-llama", path, tokenizer=tiny_tokenizer, seed=0, max_seq_len=512, dim=384, n_layers=8,
               n_heads=6, n_kv_heads=2, hidden_dim=1024)
    return path


def spawn(model, home, *extra, env=None):
    env = {**{k: v for k, v in os.environ.items() if k != "NO_COLOR"}, "LLMKIT_HOME": str(home), "TERM": "xterm",
           **(env or {})}
    # Ctrl-C must reach chat even where the test runner was started in the background (nohup, `&`),
    # which leaves SIGINT ignored in every child unless it is restored
    child = pexpect.spawn(sys.executable, ["-m", "llmkit", "chat", "-m", str(model), "--device", "cpu", *extra],
                          env=env, encoding="utf-8", timeout=TIMEOUT, dimensions=(40, 200),
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    child.expect("chatting with")
    child.expect(">>> ")
    return child


def test_ctrl_c_stops_the_reply_and_keeps_the_conversation(chat_model, tmp_path):
    home = tmp_path / "home"
    child = spawn(chat_model, home, "--temperature", "0", "--max-new-tokens", "400", "--stats")
    try:
        child.sendline("/help")  # answered by chat itself: the model never sees it
        child.expect("/save FILE")
        child.expect(">>> ")
        child.sendline("/nonsense")
        child.expect("unknown command /nonsense")
        child.expect(">>> ")

        child.sendline("def answer():")
        child.expect(r"\x1b\[36m")  # the reply starts (in its colour): the model is decoding now
        time.sleep(0.3)  # some tokens out, far from the 400 asked for
        child.sendintr()  # Ctrl-C
        child.expect("reply stopped")
        child.expect(">>> ")  # the session goes on
        assert child.isalive()

        child.sendintr()  # Ctrl-C at an empty prompt only says how to leave
        child.expect(r"Ctrl-D or /exit leaves")
        child.expect(">>> ")

        saved = tmp_path / "conversation.jsonl"
        child.sendline(f"/save {saved}")
        child.expect("saved 2 messages")
        child.expect(">>> ")
        child.sendeof()  # Ctrl-D leaves
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before
    rows = [json.loads(line) for line in saved.read_text().splitlines()]
    assert len(rows) == 1
    messages = rows[0]["messages"]
    # only the real message reached the conversation, and the partial reply is kept, marked as cut
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == "def answer():"
    assert messages[1].get("cut") is True
    # the history survives the session, in the llmkit home
    history = (home / "chat_history").read_text()
    assert "def answer():" in history and "/help" in history


def test_overflow_notice_and_slash_commands_over_a_small_context(chat_model, tmp_path):
    conversation = tmp_path / "in.jsonl"
    conversation.write_text(json.dumps({"messages": [
        {"role": "user", "content": "first question about the old days " * 40},
        {"role": "assistant", "content": "an answer about the old days " * 40}]}) + "\n")
    child = spawn(chat_model, tmp_path / "home", "--temperature", "0", "--max-new-tokens", "4",
                  env={"NO_COLOR": "1"})
    try:
        child.sendline(f"/load {conversation}")
        child.expect("loaded 2 messages")
        child.expect(">>> ")
        child.sendline("/set max_new_tokens 6")
        child.expect(r"max_new_tokens = 6")
        child.expect(">>> ")
        child.sendline("and now?")
        child.expect("outgrew the 512-token context")
        child.expect(">>> ")
        child.sendline("/stats")
        child.expect(r"generated (\d+) tokens")
        assert int(child.match.group(1)) == 6  # the /set value was used
        child.expect(r"context (\d+) of 512 tokens")
        assert int(child.match.group(1)) <= 512
        child.expect(">>> ")
        before = child.before
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert "\x1b[" not in before  # NO_COLOR: plain text
    assert child.exitstatus == 0
