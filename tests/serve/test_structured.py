"""response_format through the official client: with a JSON schema every sampled output parses and
validates; json_object outputs that finish are JSON objects; schemas that cannot compile are a 400."""

from __future__ import annotations

import json

import pytest

from tests.peers import peer

peer("xgrammar")
jsonschema = peer("jsonschema")
openai = peer("openai")

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
          "properties": {"name": {"type": "string", "maxLength": 12},
                         "age": {"type": "integer", "minimum": 0, "maximum": 150},
                         "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]},
                                  "maxItems": 3}}}
MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0, timeout=120)


def test_json_schema_outputs_always_validate(client):
    r = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=120, temperature=1.0, seed=0, n=6,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}})
    for choice in r.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    # and through /v1/completions, streamed
    chunks = client.completions.create(model="tiny", prompt="JSON:", max_tokens=120, temperature=0.7, seed=1,
                                       stream=True, extra_body={"response_format": {
                                           "type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}})
    jsonschema.validate(json.loads("".join(c.choices[0].text for c in chunks)), SCHEMA)


def test_json_object_outputs_are_objects(client):
    done = 0
    for seed in range(6):
        r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=200, temperature=1.0,
                                           seed=seed, response_format={"type": "json_object"})
        text, reason = r.choices[0].message.content, r.choices[0].finish_reason
        assert text.startswith("{")
        if reason == "stop":  # a random model may ramble inside a string until max_tokens
            assert isinstance(json.loads(text), dict)
            done += 1
    assert done >= 2


def test_bad_schemas_are_400(client):
    for fmt in ({"type": "json_schema", "json_schema": {"name": "x"}},
                {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}},
                {"type": "yaml"}):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5, response_format=fmt)
        assert e.value.body["param"].startswith("response_format") and "[" not in e.value.body["message"][:3]
