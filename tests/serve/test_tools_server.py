"""Function calling through `llmkit serve` with the official `openai` client: OpenAI's tool-calling
loop on the real SmolLM2 (a weak model, forced to call: its arguments validate every time),
streamed tool-call deltas, `tool` results in the next turn, the same calls locally and through
`RemoteLLM`, and bad input answered with a 400 that names the field."""

from __future__ import annotations

import json

import pytest

from llmkit.apps import Tool
from tests.peers import peer
from tests.serve.conftest import Running

openai = peer("openai")


def get_weather(city: str, unit: str = "celsius") -> str:
    """The current weather of a city.

    Args:
        city: the city's name, e.g. Paris
        unit: celsius or fahrenheit
    """
    return json.dumps({"city": city, "temperature": 21 if unit == "celsius" else 70, "unit": unit})


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


TOOLS = [Tool.from_function(get_weather), Tool.from_function(multiply)]
BY_NAME = {t.name: t for t in TOOLS}
QUESTIONS = ["What's the weather like in Paris right now?", "How much is 12 times 7?", "Multiply 3 by 14, please."]


@pytest.fixture(scope="module")
def smol(smollm2):
    from tests.apps.scripted import smol_llm

    return smol_llm(str(smollm2.path))  # loaded once for every module that asks


@pytest.fixture(scope="module")
def smol_server(smol):
    from llmkit.serve import ServedModel, create_app

    with Running(create_app([ServedModel("smol", smol, engine_options={"max_batch": 4})])) as running:
        yield running


@pytest.fixture(scope="module")
def client(smol_server):
    return openai.OpenAI(base_url=smol_server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_openai_tool_loop_with_a_weak_model_forced_to_call(client):
    """OpenAI's documented loop: ask with tools (a call is required), run each call, send the
    results back as `tool` messages, get the answer. Every call's arguments validate."""
    jsonschema = peer("jsonschema")
    specs = [t.spec() for t in TOOLS]
    for question in QUESTIONS:
        messages = [{"role": "user", "content": question}]
        r = client.chat.completions.create(model="smol", messages=messages, tools=specs, tool_choice="required",
                                           parallel_tool_calls=False, temperature=0, max_tokens=64)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1, choice
        call = choice.message.tool_calls[0]
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), BY_NAME[call.function.name].parameters)
        messages.append(choice.message.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": call.id,
                         "content": BY_NAME[call.function.name].run(call.function.arguments)})
        final = client.chat.completions.create(model="smol", messages=messages, tools=specs, tool_choice="none",
                                               temperature=0, max_tokens=40)
        assert final.choices[0].message.tool_calls is None and final.choices[0].message.content


def test_named_choice_sampled_many_times_always_validates(client):
    jsonschema = peer("jsonschema")
    specs = [t.spec() for t in TOOLS]
    for seed in range(4):
        r = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": QUESTIONS[seed % len(QUESTIONS)]}], tools=specs,
            tool_choice={"type": "function", "function": {"name": "multiply"}}, temperature=1.0, seed=seed,
            max_tokens=48)
        calls = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "tool_calls" and [c.function.name for c in calls] == ["multiply"]
        jsonschema.validate(json.loads(calls[0].function.arguments), BY_NAME["multiply"].parameters)


def test_streamed_tool_call_deltas_add_up_to_the_whole_reply(client):
    specs = [t.spec() for t in TOOLS]
    kwargs = dict(model="smol", messages=[{"role": "user", "content": QUESTIONS[0]}], tools=specs,
                  tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=64)
    whole = client.chat.completions.create(**kwargs).choices[0]
    calls: dict[int, dict] = {}
    deltas = 0
    reasons = []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for c in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(c.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = c.id or entry["id"]
            entry["name"] += (c.function.name or "") if c.function else ""
            entry["arguments"] += (c.function.arguments or "") if c.function else ""
            deltas += 1
        reasons.append(chunk.choices[0].finish_reason)
    assert [(e["name"], e["arguments"]) for e in calls.values()] == [
        (c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert all(e["id"].startswith("call_") for e in calls.values())
    assert deltas > 4  # the arguments really came in pieces
    assert reasons[-1] == "tool_calls" and reasons.count("tool_calls") == 1


def test_local_and_remote_chat_return_the_same_calls(smol, smol_server):
    import llmkit

    from llmkit.infer.tool_parse import reply_from_events

    remote = llmkit.load(smol_server.url + "/v1")
    messages = [{"role": "user", "content": QUESTIONS[1]}]
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        kwargs = dict(tools=TOOLS, tool_choice=choice, temperature=0, max_new_tokens=40)
        local = smol.chat(messages, **kwargs)
        served = remote.chat(messages, **kwargs)
        assert local.tool_calls and local.tool_calls[0].name == (choice["function"]["name"] if isinstance(choice, dict)
                                                                 else local.tool_calls[0].name)
        assert [(c.name, c.arguments) for c in served.tool_calls] == [(c.name, c.arguments) for c in local.tool_calls]
        assert served.finish_reason == local.finish_reason and served.content == local.content
        streamed = reply_from_events(remote.chat(messages, stream=True, **kwargs))
        assert [(c.name, c.arguments) for c in streamed.tool_calls] == [(c.name, c.arguments) for c in local.tool_calls]
        assert streamed.finish_reason == local.finish_reason


# ----------------------------------------------------------------------------- bad input (the tiny model)
def _post(server, body):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(server.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}


@pytest.mark.parametrize("extra, param, fragment", [
    ({"tools": [ADD], "tool_choice": {"type": "function", "function": {"name": "sub"}}}, "tool_choice",
     "'sub', which is not among the tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": 5}}}}}]}, "tools[0].function.parameters", "is not valid JSON Schema"),
    ({"tools": [ADD], "response_format": {"type": "json_object"}}, "response_format", "cannot be combined"),
    ({"tools": [ADD], "messages": [{"role": "user", "content": "hi"},
                                   {"role": "assistant", "content": None, "tool_calls": [CALL]},
                                   {"role": "tool", "tool_call_id": "call_2", "content": "1"}]},
     "messages[2].tool_call_id", "tool_call_id 'call_2', which no earlier assistant message called"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
])
def test_bad_tool_requests_are_a_400_naming_the_field(server, extra, param, fragment):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}
    status, out = _post(server, body)
    assert status == 400 and out["error"]["param"] == param and fragment in out["error"]["message"], out
    ok, answer = _post(server, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert ok == 200 and answer["choices"][0]["message"]["content"] is not None  # the server keeps serving


def test_a_tool_result_turn_is_accepted(server):
    messages = [{"role": "user", "content": "1?"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "1"}]
    status, out = _post(server, {"model": "tiny", "messages": messages, "max_tokens": 3, "tools": [ADD],
                                 "tool_choice": "none"})
    assert status == 200 and out["choices"][0]["message"].get("tool_calls") is None


ZQ = {"type": "function", "function": {"name": "zq_tool", "parameters": {
    "type": "object", "properties": {"qx": {"type": "boolean"}}, "required": ["qx"], "additionalProperties": False}}}


def test_a_stop_string_inside_a_call_is_no_tool_calls_finish(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 64, "tools": [ZQ],
            "tool_choice": "required", "stop": ["qx"]}
    status, out = _post(server, body)
    assert status == 200, out
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"'


def test_streamed_tool_replies_open_with_null_content_and_no_tools_means_no_calls(server):
    import urllib.request

    body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 40, "tools": [ZQ],
            "tool_choice": "required", "stream": True}
    req = urllib.request.Request(server.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        chunks = [json.loads(line[5:]) for line in r.read().decode().splitlines()
                  if line.startswith("data:") and "[DONE]" not in line]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    # a conversation holding a call and its result, sent without tools: the answer cannot call again
    messages = [{"role": "user", "content": "1?"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "1"}]
    for seed in range(3):
        status, out = _post(server, {"model": "tiny", "messages": messages, "max_tokens": 30, "temperature": 1.0,
                                     "seed": seed})
        assert status == 200 and out["choices"][0]["message"].get("tool_calls") is None
        assert "<tool_call>" not in out["choices"][0]["message"]["content"]
