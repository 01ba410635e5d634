"""T5 served: /v1/completions and /v1/chat/completions answer what the local model generates, and
best_of runs beam search (its n best beams, as `LocalLLM.beams` finds them)."""

from __future__ import annotations

import pytest

import llmkit
from tests.peers import peer
from tests.serve.conftest import Running

openai = peer("openai")


@pytest.fixture(scope="module")
def t5_server(tiny_t5_dir):
    from llmkit.serve import ServedModel, create_app

    llm = llmkit.load(tiny_t5_dir)
    with Running(create_app([ServedModel("t5", llm, engine_options={"max_batch": 4, "block_size": 8})])) as running:
        yield running, llm, openai.OpenAI(base_url=running.url + "/v1", api_key="none")


def test_served_t5_greedy_equals_local(t5_server):
    running, llm, client = t5_server
    prompts = ["def fib(n):", "import os"]
    local = llm.complete(prompts, temperature=0, max_new_tokens=10)
    reply = client.completions.create(model="t5", prompt=prompts, temperature=0, max_tokens=10)
    assert [c.text for c in reply.choices] == [c.text for c in local] and all(c.text for c in local)
    assert reply.usage.prompt_tokens == sum(len(llm.tokenize(p)) for p in prompts)  # the sources
    assert reply.usage.completion_tokens == sum(len(c.token_ids) for c in local)
    # no chat template: the messages' text is the source
    chat = client.chat.completions.create(model="t5", messages=[{"role": "user", "content": prompts[0]}],
                                          temperature=0, max_tokens=10)
    assert chat.choices[0].message.content == local[0].text
    streamed = client.completions.create(model="t5", prompt=prompts[1], temperature=0, max_tokens=10, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == local[1].text


def test_best_of_is_beam_search_returning_the_n_best(t5_server):
    running, llm, client = t5_server
    beams = llm.beams("def fib(n):", num_beams=4, max_new_tokens=8)
    reply = client.completions.create(model="t5", prompt="def fib(n):", best_of=4, n=2, max_tokens=8)
    assert [c.text for c in reply.choices] == [b.text for b in beams[:2]] and len(beams) >= 2
    remote = llmkit.connect(running.url + "/v1", model="t5")  # num_beams travels as best_of
    searched = llm.generate("import os", num_beams=3, max_new_tokens=8)
    assert searched != llm.generate("import os", temperature=0, max_new_tokens=8)  # the search changes the answer
    assert remote.generate("import os", num_beams=3, max_new_tokens=8) == searched
    body = remote._body(llmkit.GenerationConfig(num_beams=3, length_penalty=-2.0, early_stopping="never"))
    assert (body["best_of"], body["length_penalty"], body["early_stopping"]) == (3, -2.0, "never")
    reply = client.completions.create(model="t5", prompt="import os", best_of=3, max_tokens=8,
                                      extra_body={"length_penalty": -2.0, "early_stopping": "never"})
    assert reply.choices[0].text == llm.generate("import os", num_beams=3, max_new_tokens=8, length_penalty=-2.0,
                                                 early_stopping="never")
    with pytest.raises(ValueError, match="num_beams=3: through a server beam search runs on /v1/completions"):
        remote.chat([{"role": "user", "content": "x"}], num_beams=3)
    with pytest.raises(openai.BadRequestError, match="temperature=0.7 .*beam search"):
        client.completions.create(model="t5", prompt="x", best_of=2, temperature=0.7, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="echo continues the prompt's text"):
        client.completions.create(model="t5", prompt="x", echo=True, max_tokens=4)
