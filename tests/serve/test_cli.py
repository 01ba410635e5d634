"""`llmkit serve` as a user starts it: the process listens, answers the OpenAI client under the
model's directory name, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.peers import peer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(args: list[str], env: dict[str, str], wait_s: float = 120):
    """`llmkit serve ARGS --port P` in a process: yields (port, process) once /health answers;
    stops it with Ctrl-C (SIGINT) afterwards."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "serve", *args, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    try:
        deadline = time.time() + wait_s
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.time() < deadline, "the server did not come up"
                time.sleep(0.2)
        yield port, proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_llmkit_serve_command(tiny_dirs, tmp_path, quantize):
    openai = peer("openai")
    extra = ["--quantize", quantize] if quantize else []
    with serving(["--model", str(tiny_dirs["tiny-llama"]), "--max-batch", "4", *extra],
                 {"OMP_NUM_THREADS": "1", "LLMKIT_HOME": str(tmp_path)}) as (port, proc):
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read())
        assert health["status"] == "ok" and list(health["models"]) == ["tiny-llama"]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        r = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=5, temperature=0)
        assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens >= 1
        card = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5).read())["data"][0]
        assert card["quantization"] == quantize
        if quantize:  # the served weights are the quantised ones: its greedy text is the local quantised model's
            from llmkit.pipelines.adapters import load_with_adapters

            local = load_with_adapters(tiny_dirs["tiny-llama"], quantize=quantize)
            want = local.chat([{"role": "user", "content": "hi"}], max_new_tokens=5, temperature=0)
            assert r.choices[0].message.content == want
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    from llmkit.serve.auth import RequestLog

    rows = RequestLog(tmp_path / "requests.sqlite").rows()  # the default request log
    assert "/v1/chat/completions" in [r["endpoint"] for r in rows if r["status"] == 200]


def test_llmkit_serve_answers_with_the_real_smollm2(smollm2):
    """`llmkit serve --model smollm2-135m-instruct` (the name resolved through the model cache)
    answers a factual question through the official client with the right answer."""
    openai = peer("openai")
    home = smollm2.path.parent.parent.parent  # <home>/models/smollm2-135m-instruct/<file>.gguf
    with serving(["--model", "smollm2-135m-instruct", "--max-batch", "2", "--no-request-log"],
                 {"LLMKIT_HOME": str(home)}, wait_s=180) as (port, _):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == ["smollm2-135m-instruct"]
        r = client.chat.completions.create(model="smollm2-135m-instruct", temperature=0, max_tokens=20,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="smollm2-135m-instruct", temperature=0, max_tokens=20, stream=True,
            messages=[{"role": "user", "content": "What is the capital of Japan?"}]) if c.choices)
        assert "Tokyo" in streamed


def test_serve_help():
    r = subprocess.run([sys.executable, "-m", "llmkit", "serve", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--max-batch" in r.stdout and "--kv-cache-tokens" in r.stdout
