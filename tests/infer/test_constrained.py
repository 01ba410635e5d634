"""Constrained decoding on the local path: `response_format` (the OpenAI shapes) on a `LocalLLM`
gives, at temperature 0, exactly what the server gives for the same request, and what it gives
parses as JSON (and validates against the schema). Without the constraint the same model's greedy
text is not JSON, so these tests fail if the constraint stops acting."""

from __future__ import annotations

import json

import pytest

import llmkit
from llmkit.infer import GenerationConfig, GenerationConfigError
from llmkit.infer.speculative import SpeculativeError, speculative_generate
from tests.peers import peer

peer("xgrammar")
jsonschema = peer("jsonschema")

# every value bounded (a boolean, a digit, an enum, a short string), so even a random model closes the object
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["ok", "count", "colour", "note"],
          "properties": {"ok": {"type": "boolean"}, "count": {"type": "integer", "minimum": 0, "maximum": 9},
                         "colour": {"enum": ["red", "green", "blue"]}, "note": {"type": "string", "maxLength": 8}}}
AS_SCHEMA = {"type": "json_schema", "json_schema": {"name": "reading", "schema": SCHEMA}}
AS_OBJECT = {"type": "json_object"}
PROMPTS = ["JSON:", "def main():", "Describe a person as JSON."]
MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


@pytest.fixture(scope="module")
def llm(tiny_dirs):
    return llmkit.load(tiny_dirs["tiny-llama"])


@pytest.fixture(scope="module")
def client(llm):
    from fastapi.testclient import TestClient

    from llmkit.serve import ServedModel, create_app

    app = create_app([ServedModel("tiny", llm, engine_options={"max_batch": 4, "block_size": 8})])
    with TestClient(app) as c:
        yield c


def _server_completion(client, prompt: str, fmt: dict, max_tokens: int) -> tuple[str, str]:
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": max_tokens,
                                             "temperature": 0, "response_format": fmt})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    return choice["text"], choice["finish_reason"]


@pytest.mark.parametrize("fmt", [AS_SCHEMA, AS_OBJECT], ids=["json_schema", "json_object"])
def test_local_generate_equals_the_server_at_temperature_0(llm, client, fmt):
    for prompt in PROMPTS:
        local = llm.complete([prompt], max_new_tokens=120, temperature=0, response_format=fmt)[0]
        text, reason = _server_completion(client, prompt, fmt, 120)
        assert (local.text, local.finish_reason) == (text, reason), prompt
        assert llm.generate(prompt, max_new_tokens=120, temperature=0, response_format=fmt) == text
        assert "".join(llm.stream(prompt, max_new_tokens=120, temperature=0, response_format=fmt)) == text
        assert reason == "stop", text  # the grammar closed the object before the budget ran out
        value = json.loads(text)
        assert isinstance(value, dict)
        if fmt is AS_SCHEMA:
            jsonschema.validate(value, SCHEMA)
        plain = llm.generate(prompt, max_new_tokens=120, temperature=0)
        with pytest.raises(json.JSONDecodeError):
            json.loads(plain)


def test_local_chat_equals_the_server_chat(llm, client):
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, "max_tokens": 120,
                                                  "temperature": 0, "response_format": AS_SCHEMA})
    assert r.status_code == 200, r.text
    served = r.json()["choices"][0]["message"]["content"]
    local = llm.chat(MESSAGES, max_new_tokens=120, temperature=0, response_format=AS_SCHEMA)
    assert local == served
    jsonschema.validate(json.loads(local), SCHEMA)


def test_a_batch_holds_one_grammar_per_row(llm):
    """Rows of one static batch finish at different steps; each keeps its own grammar state."""
    alone = [llm.generate(p, max_new_tokens=120, temperature=0, response_format=AS_SCHEMA) for p in PROMPTS]
    batch = llm.generate(PROMPTS, max_new_tokens=120, temperature=0, response_format=AS_SCHEMA)
    assert batch == alone
    assert len({len(t) for t in batch}) > 1  # the rows really ended at different steps
    sampled = llm.generate(PROMPTS * 2, max_new_tokens=120, temperature=1.0, seed=5, response_format=AS_SCHEMA)
    for text in sampled:
        jsonschema.validate(json.loads(text), SCHEMA)


def test_response_format_is_checked_and_speculation_refuses_it(llm):
    for bad in ({"type": "yaml"}, {"type": "json_schema", "json_schema": {"name": "x"}}, "json"):
        with pytest.raises(GenerationConfigError, match="response_format"):
            GenerationConfig(response_format=bad)
    assert llm.generate("x", max_new_tokens=5, temperature=0, response_format={"type": "text"}) == \
        llm.generate("x", max_new_tokens=5, temperature=0)
    with pytest.raises(SpeculativeError, match="response_format"):
        speculative_generate(llm, "x", GenerationConfig(max_new_tokens=5, response_format=AS_OBJECT))
