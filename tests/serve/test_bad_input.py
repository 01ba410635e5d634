"""Bad input never gets a 500: each case gets an OpenAI-style error body with the right 4xx (or a
clean end of stream), and the server goes on serving; a client that leaves mid-stream frees its
engine request."""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from urllib.parse import urlparse

import pytest

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def post(url: str, body: bytes | str | dict, path: str = "/v1/chat/completions", headers: dict | None = None):
    data = body if isinstance(body, bytes) else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
    req = urllib.request.Request(url + path, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


CASES = [
    ("malformed JSON", '{"model": "tiny", "messages": [', 400, None),
    ("not an object", "[1, 2]", 400, None),
    ("nested too deeply", "[" * 50_000, 400, None),
    ("missing messages", {"model": "tiny"}, 400, "messages"),
    ("missing model", {"messages": CHAT["messages"]}, 400, "model"),
    ("empty messages", {**CHAT, "messages": []}, 400, "messages"),
    ("bad role", {**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
    ("unknown model", {**CHAT, "model": "gpt-17"}, 404, "model"),
    ("max_tokens beyond the context", {**CHAT, "max_tokens": 10_000_000}, 400, "max_tokens"),
    ("negative max_tokens", {**CHAT, "max_tokens": -1}, 400, "max_tokens"),
    ("negative temperature", {**CHAT, "temperature": -0.5}, 400, "temperature"),
    ("absurd temperature", {**CHAT, "temperature": 1e9}, 400, "temperature"),
    ("top_p zero", {**CHAT, "top_p": 0}, 400, "top_p"),
    ("top_p above one", {**CHAT, "top_p": 3}, 400, "top_p"),
    ("temperature as text", {**CHAT, "temperature": "hot"}, 400, "temperature"),
    ("n too large", {**CHAT, "n": 1000}, 400, "n"),
    ("unsupported field", {**CHAT, "tools_choice_xyz": 1}, 400, "tools_choice_xyz"),
    ("logit_bias", {**CHAT, "logit_bias": {"5": 10}}, 400, "logit_bias"),
    ("empty stop string", {**CHAT, "stop": [""]}, 400, "stop"),
    ("top_logprobs without logprobs", {**CHAT, "top_logprobs": 2}, 400, "top_logprobs"),
]


@pytest.mark.parametrize("name,body,status,param", CASES, ids=[c[0] for c in CASES])
def test_bad_chat_requests_get_4xx_with_an_openai_error(server, name, body, status, param):
    code, reply = post(server.url, body)
    assert code == status, reply
    err = reply["error"]
    assert err["message"] and err["type"]
    if param is not None:
        assert err["param"] == param, err


COMPLETION_CASES = [
    ("token id outside the vocabulary", {"model": "tiny", "prompt": [1, 2, 10**9]}, 400, "prompt"),
    ("empty prompt list", {"model": "tiny", "prompt": []}, 400, "prompt"),
    ("empty token list", {"model": "tiny", "prompt": [[]]}, 400, "prompt"),
    ("suffix", {"model": "tiny", "prompt": "x", "suffix": "y"}, 400, "suffix"),
    ("n above best_of", {"model": "tiny", "prompt": "x", "best_of": 3, "n": 4}, 400, "n"),
    ("best_of streamed", {"model": "tiny", "prompt": "x", "best_of": 3, "stream": True}, 400, "stream"),
    ("best_of with sampling", {"model": "tiny", "prompt": "x", "best_of": 3, "top_p": 0.5}, 400, "top_p"),
    ("best_of with logprobs", {"model": "tiny", "prompt": "x", "best_of": 2, "logprobs": 1}, 400, "best_of"),
    ("logprobs too many", {"model": "tiny", "prompt": "x", "logprobs": 50}, 400, "logprobs"),
    ("prompt as number", {"model": "tiny", "prompt": 5}, 400, "prompt"),
]


@pytest.mark.parametrize("name,body,status,param", COMPLETION_CASES, ids=[c[0] for c in COMPLETION_CASES])
def test_bad_completion_requests(server, name, body, status, param):
    code, reply = post(server.url, body, "/v1/completions")
    assert code == status, reply
    assert reply["error"]["param"] == param


# JSON may spell an unpaired UTF-16 surrogate ("\udcff"), and Python's parser takes it (as it takes
# the raw UTF-8 bytes of one): a string no encoder can write. The bodies are raw bytes so the
# escape reaches the server as the client wrote it.
SURROGATES = [
    ("completion prompt", "/v1/completions", b'{"model": "tiny", "prompt": "hi \\udcff", "max_tokens": 2}', "prompt"),
    ("completion prompt list", "/v1/completions", b'{"model": "tiny", "prompt": ["ok", "\\ud800"], "max_tokens": 2}',
     "prompt.1"),
    ("raw surrogate bytes", "/v1/completions", b'{"model": "tiny", "prompt": "hi \xed\xb3\xbf", "max_tokens": 2}',
     "prompt"),
    ("chat content", "/v1/chat/completions",
     b'{"model": "tiny", "messages": [{"role": "user", "content": "\\udcff"}], "max_tokens": 2}', "messages.0.content"),
    ("chat content part", "/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": '
     b'[{"type": "text", "text": "a\\udcffb"}]}], "max_tokens": 2}', "messages.0.content.0.text"),
    ("stop", "/v1/chat/completions",
     b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stop": ["\\udcff"]}', "stop.0"),
    ("embedding input", "/v1/embeddings", b'{"model": "tiny", "input": "\\udcff"}', "input"),
    ("tokenize", "/tokenize", b'{"model": "tiny", "prompt": "\\udcff"}', "prompt"),
    ("field name", "/v1/completions", b'{"model": "tiny", "prompt": "hi", "\\udcff": 1}', None),
]


@pytest.mark.parametrize("name,path,body,param", SURROGATES, ids=[c[0] for c in SURROGATES])
def test_an_unpaired_surrogate_is_a_400_that_names_the_field(server, name, path, body, param):
    code, reply = post(server.url, body, path)
    assert code == 400, reply
    assert reply["error"]["param"] == param and "surrogate" in reply["error"]["message"]


def test_a_paired_surrogate_is_just_a_character(server):
    body = b'{"model": "tiny", "prompt": "hi \\ud83d\\ude00", "max_tokens": 2}'
    code, reply = post(server.url, body, "/v1/completions")
    assert code == 200 and reply["usage"]["prompt_tokens"] > 1


def test_oversized_body_is_413(server):
    code, reply = post(server.url, {**CHAT, "messages": [{"role": "user", "content": "x" * 100_000}]})
    assert code == 413 and "limit" in reply["error"]["message"]


def test_bad_embeddings(server):
    code, reply = post(server.url, {"model": "tiny", "input": ""}, "/v1/embeddings")
    assert code == 400 and reply["error"]["param"] == "input"
    code, reply = post(server.url, {"model": "tiny", "input": "x", "dimensions": 3}, "/v1/embeddings")
    assert code == 400 and reply["error"]["param"] == "dimensions"


def test_a_client_leaving_mid_stream_frees_its_request_and_the_server_goes_on(server):
    engine = server.app.state.server.models["tiny"].engine
    u = urlparse(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    before = engine.tokens_out
    body = {**CHAT, "max_tokens": 400, "ignore_eos": True, "stream": True, "temperature": 0}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline().startswith(b"data: ")
    resp.readline()
    resp.readline()  # a few events in: the request is decoding
    assert engine.batch_size == 1
    conn.sock.close()  # the client goes away
    conn.close()
    deadline = time.time() + 30
    while (engine.batch_size or engine.pool.num_free != engine.pool.num_blocks - 1) and time.time() < deadline:
        time.sleep(0.05)
    assert engine.batch_size == 0 and engine.pool.num_free == engine.pool.num_blocks - 1
    generated = engine.tokens_out - before  # this test's request is the only one on the engine
    assert 1 <= generated < 400 // 2, generated  # it stopped soon after the client left, far from the 400 asked
    code, reply = post(server.url, CHAT)
    assert code == 200 and reply["choices"][0]["message"]["role"] == "assistant"


def test_a_shared_system_prompt_is_found_in_the_prefix_cache(server):
    """Two chats with one long system prompt: the second finds the prompt's blocks, and /metrics reports the
    engine's hit rate."""
    pool = server.app.state.server.models["tiny"].engine.pool
    system = {"role": "system", "content": "You answer questions about the harbour's opening hours. " * 6}
    found = []
    for question in ("When does it open?", "Is it open on Sunday?"):
        before = pool.hit_tokens
        code, _ = post(server.url, {**CHAT, "messages": [system, {"role": "user", "content": question}],
                                    "max_tokens": 2})
        assert code == 200
        found.append(pool.hit_tokens - before)
    assert found[1] >= found[0] + 5 * pool.block_size  # the system prompt's blocks, not just the template's
    text = urllib.request.urlopen(server.url + "/metrics", timeout=30).read().decode()
    rate = next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("llmkit_prefix_cache_hit_rate"))
    assert rate == pytest.approx(pool.hit_rate, abs=1e-6) and rate > 0
    assert "llmkit_prefilling_requests 0" in text


def test_after_all_that_there_was_no_500(server):
    metrics = urllib.request.urlopen(server.url + "/metrics", timeout=30).read().decode()
    assert 'status="400"' in metrics and 'status="5' not in metrics
    assert "llmkit_time_to_first_token_seconds_count" in metrics and "llmkit_running_batch_size" in metrics
