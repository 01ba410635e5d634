"""Instruction data: the three row formats, bad rows named by line, the assistant-only loss mask
checked token by token, and packing that keeps each example to itself."""

from __future__ import annotations

import json

import pytest
import torch

from llmkit.data import DataError
from llmkit.data.instruct import (IGNORE_INDEX, builtin_instructions, collate, encode_all, encode_conversation,
                                  read_instructions, row_to_messages)
from llmkit.tokenizer import DEFAULT_CHAT_TEMPLATE


@pytest.fixture
def tok(tiny_tokenizer):
    tiny_tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tiny_tokenizer


def test_three_formats_become_messages():
    assert row_to_messages({"instruction": "Add", "input": "2 and 3", "output": "5"}) == [
        {"role": "user", "content": "Add\n\n2 and 3"}, {"role": "assistant", "content": "5"}]
    assert row_to_messages({"prompt": "2+3=", "completion": "5"}) == [
        {"role": "user", "content": "2+3="}, {"role": "assistant", "content": "5"}]
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}]
    assert row_to_messages({"messages": msgs}) == msgs


def test_bad_rows_are_reported_with_line_numbers(tmp_path):
    f = tmp_path / "chats.jsonl"
    rows = [json.dumps({"prompt": "a", "completion": "b"}), "{not json",
            json.dumps({"messages": [{"role": "user", "content": "x"}]}),
            json.dumps({"messages": [{"content": "x"}]}),
            json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}),
            json.dumps({"messages": [{"role": "wizard", "content": "x"}]}),
            json.dumps({"text": "hello"}), json.dumps({"instruction": "Add", "output": "5"})]
    f.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as e:
        read_instructions(f)
    msg = str(e.value)
    assert "6 bad row(s)" in msg and "--skip-bad-rows" in msg
    for needle in ("line 2: not JSON", "line 3: the conversation has no assistant turn", "line 4: messages[0]",
                   "line 5: messages[1] is an empty assistant turn", "line 6: messages[0].role is 'wizard'",
                   "line 7: unknown row format"):
        assert needle in msg, needle
    good, bad = read_instructions(f, skip_bad_rows=True)
    assert len(good) == 2 and [b.line for b in bad] == [2, 3, 4, 5, 6, 7]


def test_loss_mask_covers_exactly_the_assistant_turns(tok):
    """A multi-turn conversation, token by token: a label is set exactly where the token belongs
    to an assistant reply (its content and its end-of-turn marker)."""
    msgs = [{"role": "system", "content": "You add numbers."}, {"role": "user", "content": "2 + 3?"},
            {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 10 + 4?"},
            {"role": "assistant", "content": "It is 14."}]
    ids, labels = encode_conversation(tok, msgs)
    text = tok.apply_chat_template(msgs)
    assert tok.decode(ids) == text  # the ids are the rendered conversation
    # reference: render the pieces by hand (ChatML) and label by where each token's text lies
    replies = ["5<|im_end|>\n", "It is 14.<|im_end|>\n"]
    spans, at = [], 0
    for r in replies:
        start = text.index(r, at)
        spans.append((start, start + len(r)))
        at = start + len(r)
    offsets = tok.backend.encode(text, add_special_tokens=False).offsets
    expected = [i if any(s <= a < e for s, e in spans) else IGNORE_INDEX for i, (a, _) in zip(ids, offsets)]
    assert labels == expected
    learned = tok.decode([i for i, l in zip(ids, labels) if l != IGNORE_INDEX])
    assert learned == "".join(replies)
    assert "You add" not in learned and "<|im_start|>assistant" not in learned


def test_builtin_instruction_set_has_the_task_splits():
    train, dev = builtin_instructions("train", ["arith"]), builtin_instructions("dev", ["arith"])
    assert len(train) == 2000 and len(dev) == 200
    assert train[0][0]["role"] == "user" and train[0][1]["role"] == "assistant"
    assert not {m[0]["content"] for m in train} & {m[0]["content"] for m in dev}
    with pytest.raises(DataError, match="builtin instruction task 'nope'"):
        read_instructions("builtin:arith,nope")


def test_packed_examples_see_only_themselves(tok, tiny_dir):
    from llmkit.models.hf import load_pretrained

    model = load_pretrained(tiny_dir)
    convs = [[{"role": "user", "content": f"What is {a} + {b}?"}, {"role": "assistant", "content": str(a + b)}]
             for a, b in [(1, 2), (30, 44), (7, 9)]]
    examples, dropped = encode_all(tok, convs, 64)
    assert dropped == 0
    packed = collate(examples, pad_id=0, packed_len=96)
    assert packed["input_ids"].shape[0] == 1  # all three in one row
    alone = [collate([e], pad_id=0) for e in examples]
    with torch.no_grad():
        logits = model(packed["input_ids"], segment_ids=packed["segment_ids"])
        at = 0
        for a in alone:
            n = a["input_ids"].shape[1]
            ref = model(a["input_ids"])
            assert (logits[0, at:at + n] - ref[0]).abs().max() < 1e-4
            assert torch.equal(packed["labels"][0, at:at + n], a["labels"][0])
            at += n
