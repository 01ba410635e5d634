"""`llmkit serve`'s wiring as a Python user calls it: `ServerSettings` + `build_server` around a
loaded model give the engine, keys, limits and request log the settings name."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.serve.conftest import Running


def get(url: str, key: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_build_server_wires_what_the_settings_name(served_llm, tmp_path):
    from llmkit.serve import ServerSettings, build_server

    keys = tmp_path / "keys.txt"
    keys.write_text("ann:sk-ann-0001\n")
    settings = ServerSettings(name="tiny-api", port=1234, max_batch=3, kv_cache_tokens=4096, block_size=8,
                              max_queue=5, api_keys=keys, rate_limit=2, request_log=tmp_path / "log.sqlite")
    built = build_server(served_llm, settings)
    engine = built.models[0].engine
    assert [m.name for m in built.models] == ["tiny-api"]
    assert (engine.max_batch, engine.max_queue, engine.pool.block_size) == (3, 5, 8)
    assert engine.pool.capacity_tokens >= 4096
    assert built.summary().splitlines() == [
        f"serving tiny-api ({served_llm.model.num_parameters():,} parameters, {served_llm.device}) at "
        f"http://127.0.0.1:1234/v1 — KV cache {engine.pool.capacity_tokens} tokens, batch up to 3",
        f"API keys: 1; request log: {tmp_path / 'log.sqlite'}"]
    with Running(built.app) as running:
        assert get(running.url + "/v1/models") == 401
        assert get(running.url + "/v1/models", "sk-ann-0001") == 200
        assert get(running.url + "/v1/models/tiny-api", "sk-ann-0001") == 200
        assert get(running.url + "/v1/models", "sk-ann-0001") == 429  # the server-wide 2 a minute
    rows = built.request_log.rows()
    assert [(r["key"], r["status"]) for r in rows] == [(None, 401), ("ann", 200), ("ann", 200), ("ann", 429)]
    assert rows[1]["prompt"] is None  # text is logged only when asked


def test_build_server_defaults_and_refusals(served_llm, tmp_path, monkeypatch):
    from llmkit.infer.remote import RemoteLLM
    from llmkit.serve import ServerSettings, build_server

    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path))
    built = build_server(served_llm, ServerSettings(log_requests=False))
    assert [m.name for m in built.models] == [served_llm.name] and built.request_log is None
    assert built.summary().endswith("API keys: none required; request log: off")
    with Running(built.app) as running:
        health = json.loads(urllib.request.urlopen(running.url + "/health", timeout=30).read())
        assert list(health["models"]) == [served_llm.name]
    assert not (tmp_path / "requests.sqlite").exists()
    with pytest.raises(ValueError, match="needs a local model"):
        build_server(RemoteLLM("http://127.0.0.1:9/v1", model="x"))
