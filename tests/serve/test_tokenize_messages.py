"""/tokenize takes a conversation (vLLM's `messages` form) and renders it as chat completions do,
so `RemoteLLM.chat_tokens` over llmkit serve is the local count exactly; a server that cannot
count messages gets the upper-bound estimate instead."""

from __future__ import annotations

import pytest

from llmkit.apps.context import assemble
from llmkit.infer.remote import RemoteLLM, RequestRefused
from llmkit.tokenizer.chat import estimate_chat_tokens
from tests.fake_openai import fake_openai
from tests.serve.test_bad_input import post

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3 + 3, in words?"}]


def test_tokenize_messages_as_chat_completions_render_them(server, served_llm):
    code, out = post(server.url, {"model": "tiny", "messages": MESSAGES}, "/tokenize")
    assert code == 200, out
    assert out["tokens"] == served_llm.chat_prompt(MESSAGES) and out["count"] == len(out["tokens"])
    code, out = post(server.url, {"model": "tiny", "messages": MESSAGES, "add_generation_prompt": False},
                     "/v1/tokenize")
    assert code == 200, out
    assert out["tokens"] == served_llm.tokenizer.apply_chat_template(MESSAGES, tokenize=True)
    # the prompt form is unchanged
    code, out = post(server.url, {"model": "tiny", "prompt": "hi there"}, "/tokenize")
    assert code == 200 and out["tokens"] == served_llm.tokenize("hi there")


@pytest.mark.parametrize("body,param", [({"prompt": "hi", "messages": MESSAGES}, "messages"), ({}, "prompt"),
                                        ({"messages": []}, "messages")])
def test_prompt_or_messages_exactly_one(server, body, param):
    code, out = post(server.url, {"model": "tiny", **body}, "/tokenize")
    assert code == 400, out
    assert out["error"]["param"] == param


def test_remote_chat_tokens_are_exact_through_llmkit_serve(server, served_llm):
    remote = RemoteLLM(server.url + "/v1", model="tiny")
    assert remote.chat_tokens(MESSAGES) == served_llm.chat_tokens(MESSAGES)
    assert remote.chat_tokens_exact
    # and the assembler fits a remote conversation as it fits a local one
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " * 8} for i in range(30)]
    here = assemble(served_llm, history=history + [{"role": "user", "content": "now?"}], budget=200)
    there = assemble(remote, history=history + [{"role": "user", "content": "now?"}], budget=200)
    assert here.messages == there.messages and here.tokens == there.tokens <= 200


def test_a_server_that_cannot_count_messages_gets_the_estimate():
    with fake_openai(lambda text: "ok") as fake:  # no /tokenize at all
        remote = RemoteLLM(fake["url"], api_key="sk-test", model="fake")
        assert remote.chat_tokens(MESSAGES) == estimate_chat_tokens(MESSAGES)
        assert remote.chat_tokens(MESSAGES) == estimate_chat_tokens(MESSAGES) and not remote.chat_tokens_exact
        assert sum(r["path"].endswith("/tokenize") for r in fake["requests"]) == 1  # asked once, not every time

    class Older(RemoteLLM):  # a server whose /tokenize takes only a prompt
        asked = 0

        def _request(self, method, path, body=None):
            Older.asked += 1
            raise RequestRefused("POST /tokenize answered 400: unsupported field 'messages'")

    older = Older("http://127.0.0.1:9/v1", model="m")
    assert older.chat_tokens(MESSAGES) == estimate_chat_tokens(MESSAGES) == older.chat_tokens(MESSAGES)
    assert Older.asked == 1
