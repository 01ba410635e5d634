"""`llmkit serve`'s wiring as a Python user calls it: `ServerSettings` + `build_server` around a
loaded model give the engine, keys, limits and request log the settings name; `listen` binds the
port before anything is announced."""

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
        f"API keys: 1; request log: {tmp_path / 'log.sqlite'}",
        "chat in your browser: http://127.0.0.1:1234/"]
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
    assert built.summary().splitlines()[1] == "API keys: none required; request log: off"
    with Running(built.app) as running:
        health = json.loads(urllib.request.urlopen(running.url + "/health", timeout=30).read())
        assert list(health["models"]) == [served_llm.name]
    assert not (tmp_path / "requests.sqlite").exists()
    with pytest.raises(ValueError, match="needs a local model"):
        build_server(RemoteLLM("http://127.0.0.1:9/v1", model="x"))


def test_listen_binds_before_the_banner_and_names_a_taken_port(served_llm):
    from llmkit.serve import ServerSettings, build_server
    from llmkit.serve.launch import ListenError, bind

    built = build_server(served_llm, ServerSettings(port=0, log_requests=False))
    url = built.listen()  # port 0: the system picks one, and the banner names the one it picked
    port = built.sock.getsockname()[1]
    try:
        assert port != 0 and url == f"http://127.0.0.1:{port}"
        assert f"at http://127.0.0.1:{port}/v1 — " in built.summary()
        assert built.summary().splitlines()[-1] == f"chat in your browser: http://127.0.0.1:{port}/"
        with pytest.raises(ListenError, match=rf"^127\.0\.0\.1:{port} is already in use \(.*\): .* --port \d+$"):
            bind("127.0.0.1", port)
    finally:
        built.sock.close()
    bind("127.0.0.1", port).close()  # closed, the port is free again


def test_a_server_on_every_interface_names_the_address_a_browser_opens(served_llm):
    from llmkit.serve import ServerSettings, build_server

    built = build_server(served_llm, ServerSettings(host="0.0.0.0", port=8123, log_requests=False))
    lines = built.summary().splitlines()
    assert "at http://127.0.0.1:8123/v1 (listening on 0.0.0.0: every network interface) — " in lines[0]
    assert lines[-1] == "chat in your browser: http://127.0.0.1:8123/"


def test_a_run_directory_is_served_under_the_runs_name(tiny_dirs, tmp_path, monkeypatch):
    """`llmkit serve --model runs/myrun` and `llmkit chat --model runs/myrun` both call the model
    `myrun` (its weights are in runs/myrun/model/), as the README's client example expects."""
    import shutil

    import llmkit
    from llmkit.serve import ServerSettings, build_server

    run = tmp_path / "runs" / "myrun"
    shutil.copytree(tiny_dirs["tiny-llama"], run / "model")
    built = build_server(llmkit.load(run), ServerSettings(log_requests=False))
    assert [m.name for m in built.models] == ["myrun"]
    monkeypatch.chdir(run)
    assert llmkit.load(".").name == "myrun"  # `--model .` inside the run: its name, not ""
    assert llmkit.load("model").name == "model"  # the HF folder named itself keeps its own name
