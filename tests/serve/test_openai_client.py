"""The official `openai` client against `llmkit serve`, unchanged: models, chat (plain and
streaming), completions, embeddings, stop sequences, n=2, seeds; and what it returns is what the
model computes locally."""

from __future__ import annotations


import pytest
import torch

from tests.peers import peer

openai = peer("openai")

MESSAGES = [{"role": "user", "content": "Write a function that adds two numbers."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_chat_plain_and_streaming_agree_with_the_local_model(client, served_llm):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=20, temperature=0)
    local = served_llm.complete([served_llm.chat_prompt(MESSAGES)], max_new_tokens=20, temperature=0)[0]
    assert r.choices[0].message.content == local.text and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == local.finish_reason
    assert r.usage.prompt_tokens == len(served_llm.chat_prompt(MESSAGES))
    assert r.usage.completion_tokens == len(local.token_ids)
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == local.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == local.finish_reason
    assert chunks[-1].usage.completion_tokens == len(local.token_ids)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3  # it really streamed


def test_completions_with_logprobs(client, served_llm):
    prompt = "def main():\n"
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0, logprobs=3)
    local = served_llm.complete([prompt], max_new_tokens=12, temperature=0, logprobs=True, top_logprobs=3)[0]
    assert r.choices[0].text == local.text
    assert r.choices[0].logprobs.token_logprobs == pytest.approx(local.logprobs, abs=1e-4)
    assert all(len(t) == 3 for t in r.choices[0].logprobs.top_logprobs)
    # a batch of token-id prompts
    ids = [served_llm.tokenize(p) for p in ("import os", "class A:")]
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0)
    want = [served_llm.complete([p], max_new_tokens=6, temperature=0)[0].text for p in ids]
    assert [c.text for c in r.choices] == want


def test_echo_returns_the_prompt_log_probabilities(client, served_llm):
    ids = served_llm.tokenize("The capital of France is Paris")
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=1, temperature=0, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids) + 1
    with torch.no_grad():
        logp = served_llm.model(torch.tensor([ids]))[0].log_softmax(-1)
    want = [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert lp.token_logprobs[1:len(ids)] == pytest.approx(want, abs=1e-4)
    assert r.choices[0].text.startswith(served_llm.detokenize(ids))


def test_embeddings_are_mean_pooled_hidden_states(client, served_llm):
    texts = ["hello world", "def f(x): return x"]
    r = client.embeddings.create(model="tiny", input=texts)  # the client asks for base64 by default
    floats = client.embeddings.create(model="tiny", input=texts, encoding_format="float")
    with torch.no_grad():
        want = [served_llm.model.hidden_states(torch.tensor([served_llm.tokenize(t)]))[0].mean(0) for t in texts]
    for got, f, w in zip(r.data, floats.data, want):
        assert len(got.embedding) == served_llm.config.dim
        assert torch.allclose(torch.tensor(got.embedding), w, atol=1e-5)
        assert torch.allclose(torch.tensor(f.embedding), w, atol=1e-5)


def test_stop_n_and_seed(client, served_llm):
    free = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=30, temperature=0).choices[0]
    text = free.message.content
    assert len(text) > 6
    stop = text[len(text) // 2:len(text) // 2 + 2]
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=30, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop" and text.startswith(r.choices[0].message.content)
    assert stop not in r.choices[0].message.content
    two = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, temperature=1.0, n=2, seed=7)
    again = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, temperature=1.0, n=2, seed=7)
    assert len(two.choices) == 2 and [c.index for c in two.choices] == [0, 1]
    assert [c.message.content for c in two.choices] == [c.message.content for c in again.choices]  # reproducible
    assert two.choices[0].message.content != two.choices[1].message.content  # n draws, not one copied
    other = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, temperature=1.0, seed=8)
    assert other.choices[0].message.content != two.choices[0].message.content


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True,
                                       top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(c.top_logprobs) == 2 and c.logprob == pytest.approx(c.top_logprobs[0].logprob) for c in content)
