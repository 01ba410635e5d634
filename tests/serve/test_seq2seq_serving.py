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
    prompt = "import os"
    widths = {w: llm.beams(prompt, num_beams=w, max_new_tokens=8) for w in (2, 4)}
    assert widths[2][0].text != widths[4][0].text  # the width changes the answer here
    for w, beams in widths.items():
        reply = client.completions.create(model="t5", prompt=prompt, best_of=w, n=w, max_tokens=8)
        assert [c.text for c in reply.choices] == [b.text for b in beams] and len(beams) == w
    assert llm.generate(prompt, temperature=0, max_new_tokens=8) != widths[4][0].text  # not greedy either


def test_beam_options_travel_from_remote_llm_to_the_search(t5_server):
    running, llm, client = t5_server
    remote = llmkit.connect(running.url + "/v1", model="t5")  # num_beams travels as best_of
    # a stop string ends beams at different lengths inside the search, so the length penalty decides
    options = dict(num_beams=3, max_new_tokens=10, stop=["e"])
    short, long = (llm.generate("import os", length_penalty=p, **options) for p in (-2.0, 2.0))
    assert short != long and len(short) < len(long)
    assert remote.generate("import os", length_penalty=-2.0, **options) == short
    assert remote.generate("import os", length_penalty=2.0, **options) == long
    reply = client.completions.create(model="t5", prompt="import os", best_of=3, max_tokens=10, stop=["e"],
                                      extra_body={"length_penalty": -2.0, "early_stopping": "never"})
    assert reply.choices[0].text == llm.generate("import os", length_penalty=-2.0, early_stopping="never", **options)
    with pytest.raises(ValueError, match="num_beams=3: through a server beam search runs on /v1/completions"):
        remote.chat([{"role": "user", "content": "x"}], num_beams=3)
    with pytest.raises(NotImplementedError, match="is an encoder-decoder: the OpenAI API scores"):
        remote.loglikelihood([("x", " y")])


def test_beam_requests_that_contradict_themselves_are_refused(t5_server):
    running, llm, client = t5_server
    with pytest.raises(openai.BadRequestError, match=r"temperature=0.7 .*beam search \(best_of=2\)"):
        client.completions.create(model="t5", prompt="x", best_of=2, temperature=0.7, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="does not constrain its output"):
        client.completions.create(model="t5", prompt="x", best_of=2, max_tokens=4,
                                  extra_body={"response_format": {"type": "json_object"}})
    with pytest.raises(openai.BadRequestError, match="length_penalty=2.0 is invalid: it shapes beam search only"):
        client.completions.create(model="t5", prompt="x", max_tokens=4, extra_body={"length_penalty": 2.0})
    with pytest.raises(openai.BadRequestError, match="echo continues the prompt's text"):
        client.completions.create(model="t5", prompt="x", echo=True, max_tokens=4)
