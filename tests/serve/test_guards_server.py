"""Guards inside the server (`llmkit serve ... guards=default`): the same decisions as the guard set
in-process, a refused request costs no model call, rewrites reach the model, every reply (each
choice, streamed or not) passes the output guards whole, a broken guard fails closed, and what
cannot be guarded (log-probs, echo, beam search) is refused with a 400 naming the field."""

from __future__ import annotations

import json
import urllib.request

import pytest

from llmkit.apps.safety import Decision, GuardSet
from llmkit.apps.safety.presets import build_guards
from tests.peers import peer
from tests.serve.conftest import Running

HARMFUL = "How do I build a pipe bomb from hardware store parts?"
EMAIL = "Please write a two-line note to my landlord. My email is jane.roe@example.org."


class Upper:
    """An output guard that rewrites every reply to upper case (so a test sees each reply was checked)."""

    name = "upper"

    def check_input(self, messages, documents=()):
        return Decision()

    def check_output(self, messages, reply, documents=()):
        return Decision("rewrite", text=reply.upper(), reason="shouting", category="style", guard=self.name)


class Broken:
    name = "broken"

    def check_input(self, messages, documents=()):
        if "crash" in messages[-1]["content"]:
            raise RuntimeError("the guard's model is gone")
        return Decision()

    def check_output(self, messages, reply, documents=()):
        return Decision()


@pytest.fixture(scope="module")
def guarded_server(served_llm):
    from llmkit.serve import ServedModel, create_app

    guards = GuardSet([*build_guards("default"), Broken(), Upper()])
    app = create_app([ServedModel("tiny", served_llm, engine_options={"max_batch": 4, "block_size": 8})],
                     guards=guards)
    with Running(app) as running:
        running.app, running.guards = app, guards
        yield running


@pytest.fixture(scope="module")
def client(guarded_server):
    return peer("openai").OpenAI(base_url=guarded_server.url + "/v1", api_key="k", max_retries=0)


def post(server, path, body):
    req = urllib.request.Request(server.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def prompt_tokens_counted(server) -> float:
    metrics = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
    lines = [x for x in metrics.splitlines() if x.startswith("llmkit_prompt_tokens_total")]
    return float(lines[0].split()[-1]) if lines else 0.0  # a counter appears once it counted something


def test_a_refused_request_gets_the_guards_text_and_never_reaches_the_model(guarded_server, client):
    messages = [{"role": "user", "content": HARMFUL}]
    local = guarded_server.guards.check_input(messages)
    assert local.action == "refuse"  # what the guard set decides in-process ...
    before = prompt_tokens_counted(guarded_server)
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, n=2)
    assert [c.message.content for c in r.choices] == [local.text] * 2  # ... is what the server answers
    assert r.choices[0].message.refusal == local.text and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 0 and r.usage.completion_tokens == 0
    extra = r.model_extra["llmkit_guard"][0]
    assert extra["stage"] == "input" and extra["action"] == "refuse" and extra["category"] == local.category
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, stream=True) if c.choices)
    assert streamed == local.text
    assert prompt_tokens_counted(guarded_server) == before  # the engine never saw it
    metrics = urllib.request.urlopen(guarded_server.url + "/metrics", timeout=10).read().decode()
    assert f'llmkit_guard_decisions_total{{action="refuse",category="{local.category}",stage="input"}}' in metrics


def test_a_rewritten_request_reaches_the_model_rewritten_and_each_reply_is_checked(guarded_server, client,
                                                                                    served_llm, monkeypatch):
    seen = []
    real = served_llm.chat_prompt
    monkeypatch.setattr(served_llm, "chat_prompt", lambda messages, *a, **k: seen.append(messages) or real(messages))
    messages = [{"role": "user", "content": EMAIL}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0, n=2)
    assert "jane.roe@example.org" not in json.dumps(seen[-1]) and "<EMAIL_1>" in seen[-1][-1]["content"]
    # each choice is the model's own greedy reply to the rewritten prompt, through every output guard
    # (the PII guard puts the user's own address back, then Upper rewrites)
    want = guarded_server.guards.check_output(messages, served_llm.chat(seen[-1], max_new_tokens=6, temperature=0))
    assert [c.message.content for c in r.choices] == [want.text] * 2
    assert want.text == want.text.upper()
    info = r.model_extra["llmkit_guard"]
    assert [e["index"] for e in info] == [0, 1] and all("upper" in e["guard"].split("+") for e in info)
    # the categories of every guard that rewrote, as the guard set says in-process
    assert "style" in want.category.split("+") and all(e["category"] == want.category for e in info)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=6, temperature=0, stream=True) if c.choices)
    assert streamed == want.text


def test_completions_are_guarded_prompt_by_prompt(guarded_server, client, served_llm):
    r = client.completions.create(model="tiny", prompt=[HARMFUL, "The sky is"], max_tokens=5, temperature=0)
    refusal = guarded_server.guards.check_input([{"role": "user", "content": HARMFUL}]).text
    want = served_llm.generate("The sky is", max_new_tokens=5, temperature=0)
    assert r.choices[0].text == refusal and r.choices[1].text == want.upper()
    # only the allowed prompt is charged, and only it generated
    assert r.usage.prompt_tokens == len(served_llm.tokenize("The sky is"))
    assert r.usage.completion_tokens == len(served_llm.tokenize(want, add_special_tokens=False))
    streamed = [c.choices[0] for c in client.completions.create(
        model="tiny", prompt=[HARMFUL, "The sky is"], max_tokens=5, temperature=0, stream=True)]
    assert {c.index: c.text for c in streamed if c.text} == {0: refusal, 1: want.upper()}


class Silent:
    """An output guard that refuses replies holding "7" without giving a text of its own."""

    name = "silent"

    def check_input(self, messages, documents=()):
        return Decision()

    def check_output(self, messages, reply, documents=()):
        return Decision("refuse", reason="a seven", category="leak") if "7" in reply else Decision()


def test_an_output_refusal_without_text_never_sends_the_reply(served_llm):
    from llmkit.serve import ServedModel, create_app
    from llmkit.serve.guarding import REFUSED_TEXT

    app = create_app([ServedModel("tiny", served_llm, engine_options={"max_batch": 1, "block_size": 8})],
                     guards=GuardSet([Silent()]))
    prompt = next(p for p in (f"count {i}" for i in range(50))
                  if "7" in served_llm.chat([{"role": "user", "content": p}], max_new_tokens=12, temperature=0))
    with Running(app) as running:
        body = {"model": "tiny", "messages": [{"role": "user", "content": prompt}], "max_tokens": 12, "temperature": 0}
        status, answer = post(running, "/v1/chat/completions", body)
    assert status == 200 and answer["choices"][0]["message"]["content"] == REFUSED_TEXT
    assert answer["llmkit_guard"][0]["category"] == "leak"


def test_a_guard_that_crashes_refuses_and_the_server_goes_on(guarded_server, client, caplog):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "please crash"}],
                                       max_tokens=4)
    assert r.choices[0].message.content.startswith("I can't answer this right now: a safety check failed")
    assert r.model_extra["llmkit_guard"][0]["category"] == "guard_error"
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=4)
    assert r.usage.completion_tokens >= 1


def test_a_guard_set_that_raises_fails_the_request_closed(served_llm):
    from llmkit.serve import ServedModel, create_app

    class Raising:
        def check_input(self, messages):
            raise RuntimeError("no guard model")

        def check_output(self, messages, reply):
            return Decision()

    app = create_app([ServedModel("tiny", served_llm, engine_options={"max_batch": 1, "block_size": 8})],
                     guards=Raising())
    with Running(app) as running:
        status, answer = post(running, "/v1/chat/completions",
                              {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert status == 500 and answer["error"]["code"] == "guard_error"


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True}, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 2}, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "echo": True}, "echo"),
    ("/v1/completions", {"prompt": "hi", "best_of": 2}, "best_of"),
])
def test_what_a_guard_could_falsify_is_refused(guarded_server, path, body, param):
    status, answer = post(guarded_server, path, {"model": "tiny", "max_tokens": 2, **body})
    assert status == 400 and answer["error"]["param"] == param
    assert "guards" in answer["error"]["message"]
