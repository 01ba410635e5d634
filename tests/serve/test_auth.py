"""API keys, per-key rate limits and token budgets (429 with Retry-After), and the SQLite request
log (tokens, latency, cost, and PII-scrubbed text only when asked), through the official client."""

from __future__ import annotations

import json
import urllib.request

import pytest

from llmkit.serve.auth import Gate, KeyFileError, Limited, RequestLog, load_keys
from tests.peers import peer
from tests.serve.conftest import Running

openai = peer("openai")
MESSAGES = [{"role": "user", "content": "my mail is jane.doe@example.com, call +1 415 555 0100"}]


@pytest.fixture(scope="module")
def guarded(served_llm, tmp_path_factory):
    from llmkit.serve import ServedModel, create_app

    root = tmp_path_factory.mktemp("auth")
    keys = root / "keys.txt"
    keys.write_text("# team keys\nalice:sk-alice-0001\nbob:sk-bob-0002 requests_per_minute=2\n"
                    "carol:sk-carol-0003 tokens_per_day=40\n")
    log = RequestLog(root / "requests.sqlite", price_prompt=1.0, price_completion=2.0, log_text=True)
    app = create_app(ServedModel("tiny", served_llm), gate=Gate(load_keys(keys)), request_log=log)
    with Running(app) as running:
        running.log = log
        yield running


def client(url, key):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_keys_are_required_and_checked(guarded):
    with pytest.raises(openai.AuthenticationError):
        client(guarded.url, "sk-wrong").models.list()
    req = urllib.request.Request(guarded.url + "/v1/models")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 401 and json.loads(e.value.read())["error"]["code"] == "invalid_api_key"
    assert [m.id for m in client(guarded.url, "sk-alice-0001").models.list().data] == ["tiny"]
    assert json.loads(urllib.request.urlopen(guarded.url + "/health", timeout=30).read())["status"] == "ok"


def test_rate_limit_answers_429_with_retry_after(guarded):
    bob = client(guarded.url, "sk-bob-0002")
    bob.models.list()
    bob.models.list()
    with pytest.raises(openai.RateLimitError) as e:
        bob.models.list()
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 60
    client(guarded.url, "sk-alice-0001").models.list()  # other keys are not affected


def test_token_budget_answers_429_once_spent(guarded):
    carol = client(guarded.url, "sk-carol-0003")
    r = carol.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=30, temperature=0)
    assert r.usage.total_tokens >= 40  # one request spends the budget...
    with pytest.raises(openai.RateLimitError) as e:  # ...so the next is refused
        carol.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5)
    assert "token budget" in str(e.value) and int(e.value.response.headers["retry-after"]) > 3600


def test_every_request_is_logged_with_cost_and_scrubbed_text(guarded):
    alice = client(guarded.url, "sk-alice-0001")
    r = alice.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0)
    list(alice.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, stream=True))
    rows = [row for row in guarded.log.rows() if row["key"] == "alice" and row["endpoint"] == "/v1/chat/completions"]
    assert len(rows) == 2
    plain = rows[0]
    assert plain["prompt_tokens"] == r.usage.prompt_tokens and plain["completion_tokens"] == r.usage.completion_tokens
    assert plain["cost"] == pytest.approx((r.usage.prompt_tokens * 1.0 + r.usage.completion_tokens * 2.0) / 1e6)
    assert plain["status"] == 200 and plain["latency_s"] > 0 and plain["model"] == "tiny"
    assert plain["prompt"].endswith("my mail is <EMAIL>, call <PHONE>")
    assert rows[1]["completion_tokens"] >= 1  # the streamed one too, counted when it ended
    refused = [row for row in guarded.log.rows() if row["status"] in (401, 429)]
    assert refused  # refusals are logged as well


def test_key_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "k.txt"
    bad.write_text("alice:sk-1\nnocolon\n")
    with pytest.raises(KeyFileError, match="line 2"):
        load_keys(bad)
    bad.write_text("alice:sk-1 requests_per_minute=fast\n")
    with pytest.raises(KeyFileError, match="requests_per_minute"):
        load_keys(bad)
    bad.write_text("alice:sk-1\nalice:sk-2\n")
    with pytest.raises(KeyFileError, match="twice"):
        load_keys(bad)


def test_sliding_windows():
    now = [0.0]
    gate = Gate(load_keys_text("a:k1 requests_per_minute=2 tokens_per_day=100"), clock=lambda: now[0])
    key = gate.identify("Bearer k1")
    gate.admit(key)
    gate.admit(key)
    with pytest.raises(Limited) as e:
        gate.admit(key)
    assert e.value.retry_after == 60
    now[0] = 61.0  # the window slid past both
    gate.admit(key)
    gate.spend(key, 150)
    now[0] = 62.0
    with pytest.raises(Limited, match="token budget"):
        gate.admit(key)
    now[0] = 61.0 + 86400 + 1
    gate.admit(key)
    assert gate.identify("Bearer nope") is None and gate.identify(None) is None


def load_keys_text(text):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "keys"
        p.write_text(text)
        return load_keys(p)


def test_the_log_masks_every_kind_of_pii(tmp_path):
    log = RequestLog(tmp_path / "log.sqlite", log_text=True)
    log.write("k", "tiny", "/v1/completions", 200, prompt="mail a.b@c.org, card 4111 1111 1111 1111, ssn 123-45-6789, "
              "ip 10.0.0.1, key sk-abcdefgh1234, call 4155550100", completion="the answer is 42")
    row = log.rows()[0]
    assert row["prompt"] == "mail <EMAIL>, card <CARD>, ssn <SSN>, ip <IP>, key <SECRET>, call <NUMBER>"
    # the looser forms prose holds, which the old log caught too
    log.write("k", "tiny", "/", 200, prompt="+44 7911 123456 or (555)1234567 or 555-1234567, müller@gmx.de, "
              "jo@bücher.de")
    assert log.rows()[-1]["prompt"] == "<PHONE> or <PHONE> or <PHONE>, <EMAIL>, <EMAIL>"
    assert row["completion"] == "the answer is 42"
    RequestLog(tmp_path / "raw.sqlite", log_text=True, scrub=False).write("k", "tiny", "/", 200, prompt="a.b@c.org")
    assert RequestLog(tmp_path / "raw.sqlite").rows()[0]["prompt"] == "a.b@c.org"
