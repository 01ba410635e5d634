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


def test_busy_or_refusing_servers_are_tried_again_then_named_with_the_attempts():
    import http.server
    import json
    import threading
    import time

    from llmkit.infer.remote import RemoteLLM
    from tests.apps.scripted import closed_port

    seen: list[float] = []

    class Busy(http.server.BaseHTTPRequestHandler):
        fail = 2

        def do_GET(self):
            seen.append(time.monotonic())
            if len(seen) <= Busy.fail:
                self.send_response(503)
                self.send_header("Retry-After", "0.3")
                self.end_headers()
                self.wfile.write(b"busy")
                return
            payload = json.dumps({"data": [{"id": "m"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        assert RemoteLLM(url, retries=2).model == "m"  # two 503s, then the answer
        assert len(seen) == 3 and seen[1] - seen[0] >= 0.3  # the server's Retry-After was waited
        seen.clear()
        with pytest.raises(ConnectionError, match=r"answered 503 \(after 2 attempts\): busy"):
            RemoteLLM(url, retries=1).model
        assert len(seen) == 2
    finally:
        server.shutdown()
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=r"cannot reach .* \(after 3 attempts\)"):
        RemoteLLM(f"http://127.0.0.1:{closed_port()}/v1", retries=2, backoff=0.1).model
    assert time.monotonic() - start >= 0.3  # 0.1 + 0.2 s of backoff


def test_failures_are_typed_with_status_retry_after_and_kind_and_a_cut_stream_raises():
    from llmkit.apps.production import FaultServer
    from llmkit.infer.generate import Timings
    from llmkit.infer import retry
    from llmkit.infer.remote import EndpointError, RemoteLLM, RequestRefused, parse_retry_after, retry_delay

    assert (retry.EndpointError, retry.RequestRefused, retry.retry_delay) == (EndpointError, RequestRefused,
                                                                             retry_delay)  # one home, re-exported

    assert retry_delay(3, 0.25, 30) == 1.0 and retry_delay(1, 0.25, 30, retry_after=2.0) == 2.0
    assert retry_delay(1, 1.0, 30, jitter=0.5, rand=lambda: 0.0) == 0.5 and retry_delay(9, 1, 5) == 5
    assert parse_retry_after("1.5") == 1.5 and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=lambda: 1445412490.0) == 0.0  # 7:28:10 - 7:28:10
    with FaultServer(["429:7", "drop:1", "malformed"]) as server:
        llm = RemoteLLM(server.url, model=server.model, retries=0)
        with pytest.raises(EndpointError, match="answered 429") as e:
            llm.generate("x")
        assert (e.value.status, e.value.retry_after, e.value.kind, e.value.url) == (429, 7.0, "status",
                                                                                    server.url + "/completions")
        got = []
        with pytest.raises(EndpointError, match=r"ended after 1 chunks without \[DONE\]") as e:
            for delta in llm.stream("a b c"):
                got.append(delta)
        assert got == ["echo:"] and e.value.kind == "interrupted"  # never a quietly truncated answer
        with pytest.raises(EndpointError, match="did not answer JSON") as e:
            llm.generate("x")
        assert e.value.kind == "malformed"
        timings = Timings()
        assert llm.generate("a b", timings=timings) == "echo: a b" and timings.prompt_tokens == 2
