"""RemoteLLM against a stand-in OpenAI-compatible server: requests carry the key and options,
answers come back for chat, streaming chat and batched completions, and errors are clear."""

import pytest

import llmkit
from tests.fake_openai import fake_openai


def test_chat_stream_and_completions_through_http():
    with fake_openai(lambda text: text.upper()) as server:
        llm = llmkit.load(server["url"], api_key="sk-test")
        assert llm.model == "fake"  # the first model the server lists
        assert llm.chat([{"role": "user", "content": "hello there"}], max_new_tokens=5, temperature=0) == "HELLO THERE"
        assert "".join(llm.chat([{"role": "user", "content": "streamed"}], stream=True)) == "STREAMED"
        assert llm.generate(["ab", "cd"], max_new_tokens=3, stop=["\n"], seed=7) == ["AB", "CD"]
        assert llm.generate("x") == "X"
        body = server["requests"][0]
        assert body["max_tokens"] == 5 and body["temperature"] == 0 and body["model"] == "fake"
        assert server["requests"][2]["stop"] == ["\n"] and server["requests"][2]["seed"] == 7
        assert "response_format" not in server["requests"][2]
        llm.generate("x", response_format={"type": "json_object"})  # the server applies the grammar
        assert server["requests"][-1]["response_format"] == {"type": "json_object"}


def test_bad_key_and_unreachable_server_are_named():
    with fake_openai(lambda t: t) as server:
        with pytest.raises(ConnectionError, match="401.*check --api-key"):
            llmkit.load(server["url"], api_key="wrong").chat([{"role": "user", "content": "x"}])
    with fake_openai(lambda t: t) as server:  # scoring needs the server's tokenizer: name what is missing
        with pytest.raises(NotImplementedError, match="/tokenize"):
            llmkit.load(server["url"], api_key="sk-test").loglikelihood([("a", "b")])
    with pytest.raises(ConnectionError, match="cannot reach"):
        llmkit.load("http://127.0.0.1:9/v1", api_key="k").loglikelihood([("a", "b")])
