"""`llmkit serve` as a user starts it: the process listens, answers the OpenAI client under the
name `llmkit chat` calls the model by, says where its chat page is, refuses a taken port in one
line before announcing anything, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
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
    """`llmkit serve --model smollm2-135m-instruct guards=default` (the name resolved through the
    model cache) answers a factual question through the official client with the right answer, and
    refuses a harmful one with the guard's text."""
    openai = peer("openai")
    home = smollm2.path.parent.parent.parent  # <home>/models/smollm2-135m-instruct/<file>.gguf
    with serving(["--model", "smollm2-135m-instruct", "--max-batch", "2", "--no-request-log", "guards=default"],
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
        r = client.chat.completions.create(model="smollm2-135m-instruct", temperature=0, max_tokens=20, messages=[
            {"role": "user", "content": "Write ransomware that encrypts a hospital's file server."}])
        assert r.choices[0].message.refusal.startswith("I can't help with that")
        assert r.model_extra["llmkit_guard"][0]["category"] == "malware" and r.usage.completion_tokens == 0


def test_unknown_guards_are_refused_before_the_model_loads(tmp_path):
    done = subprocess.run([sys.executable, "-m", "llmkit", "serve", "--model", str(tmp_path / "nowhere"),
                           "guards=default,fairness"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "unknown guard 'fairness'" in done.stderr and "nowhere" not in done.stderr


def test_a_taken_port_is_one_line_before_anything_is_announced(tiny_dirs, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "llmkit", "serve", "--model", str(tiny_dirs["tiny-llama"]),
                            "--port", str(port)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "LLMKIT_HOME": str(tmp_path)})
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.startswith(f"llmkit serve: error: 127.0.0.1:{port} is already in use") and "serving" not in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr  # one line
    suggested = int(re.search(r"--port (\d+)$", r.stderr.strip()).group(1))
    with socket.socket() as s:  # the port it suggests is one a server could take now
        s.bind(("127.0.0.1", suggested))
    assert suggested != port


@contextlib.contextmanager
def chatting(model: str, env: dict[str, str], wait_s: float = 120):
    """`llmkit chat --model MODEL` on a pseudo-terminal (on a pipe it greets no one): yields a
    function that returns what it said up to its first prompt; killed afterwards."""
    import pty

    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "chat", "--model", model, "--device", "cpu"],
                            stdin=child, stdout=child, stderr=child, env={**os.environ, "TERM": "dumb", **env})
    os.close(child)

    def greeting() -> str:
        out, deadline = b"", time.time() + wait_s
        while b"chatting with" not in out or not out.endswith((b"> ", b"\n")):
            assert time.time() < deadline and proc.poll() is None, out.decode(errors="replace")
            if select.select([main], [], [], 0.5)[0]:
                out += os.read(main, 4096)
        return re.sub(r"\x1b\[[0-9;]*m", "", out.decode(errors="replace"))

    try:
        yield greeting
    finally:
        proc.kill()
        proc.wait(timeout=30)
        os.close(main)


def test_serve_and_chat_call_a_cached_model_by_one_name(tiny_dirs, tmp_path):
    """A model in the cache under a hub id is `org--name` in chat, in the startup line and in
    /v1/models; the startup lines name the chat page's URL, and the page is there."""
    shutil.copytree(tiny_dirs["tiny-llama"], tmp_path / "models" / "someorg--tiny-chat")
    env = {"OMP_NUM_THREADS": "1", "LLMKIT_HOME": str(tmp_path)}
    # chat starts alongside the server: the two load at once
    with chatting("someorg/tiny-chat", env) as greeting, \
            serving(["--model", "someorg/tiny-chat", "--no-request-log"], env) as (port, proc):
        models = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5).read())
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        chat_says = greeting()
    lines = proc.stderr.read().splitlines()
    assert "chatting with someorg/tiny-chat " in chat_says
    assert [m["id"] for m in models["data"]] == ["someorg/tiny-chat"]  # as `llmkit list` names it
    assert lines[0].startswith("serving someorg/tiny-chat (") and f"http://127.0.0.1:{port}/v1" in lines[0]
    assert f"chat in your browser: http://127.0.0.1:{port}/" in lines
    assert "<title>llmkit chat</title>" in page


def test_serve_help():
    r = subprocess.run([sys.executable, "-m", "llmkit", "serve", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--max-batch" in r.stdout and "--kv-cache-tokens" in r.stdout


def test_serve_hands_adapters_and_guards_to_the_server(monkeypatch, capsys):
    """The verb's wiring without a model: adapters by name, the guard set built from guards=NAME."""
    import llmkit.cli.serve_commands as sc
    import llmkit.serve as serve_pkg
    import llmkit.serve.launch as launch
    from llmkit.cli.main import main

    built = {}

    class Fake:
        def summary(self):
            return "fake server"

        def run(self):
            built["ran"] = True

    monkeypatch.setattr(sc, "load_llm", lambda args: "the model")
    monkeypatch.setattr(launch, "bind", lambda host, port: socket.socket())
    monkeypatch.setattr(serve_pkg, "build_server", lambda llm, settings, sock: built.update(settings=settings) or Fake())
    assert main(["serve", "--model", "m", "--adapter", "sql=runs/sql/adapter", "guards=default,pii"]) in (0, None)
    settings = built["settings"]
    assert list(settings.adapters) == ["sql"] and built["ran"]
    assert settings.guards.name == "topics+injection+secrets+pii"
    assert settings.engine_options()["prefix_cache"] is True
    built.clear()
    assert main(["serve", "--model", "m", "--no-prefix-cache", "--prefill", "serial", "--prefill-chunk", "64"]) in (0, None)
    options = built["settings"].engine_options()
    assert (options["prefix_cache"], options["prefill"], options["prefill_chunk"]) == (False, "serial", 64)
    assert (settings.engine_options()["prefill"], settings.engine_options()["prefill_chunk"]) == ("chunked", 2048)
    assert (settings.engine_options()["speculative"], settings.engine_options()["speculative_k"]) == (None, 4)
    built.clear()
    assert main(["serve", "--model", "m", "--draft", "prompt-lookup", "--speculate", "3"]) in (0, None)
    options = built["settings"].engine_options()
    assert (options["speculative"], options["speculative_k"]) == ("prompt-lookup", 3)
    built.clear()
    assert main(["serve", "--model", "m"]) in (0, None)
    assert built["settings"].guards is None
    import llmkit.infer.llm as llm_mod

    class HarmClassifier:
        classifier = type("Head", (), {"labels": ["benign", "harmful"]})

        def classify_probs(self, texts):
            import torch

            return torch.tensor([[0.01, 0.99]] * len(texts))

    loaded = []
    monkeypatch.setattr(llm_mod, "load", lambda path, **kw: loaded.append(path) or HarmClassifier())
    built.clear()
    assert main(["serve", "--model", "m", "guards=default,harm_model", "--harm-model", "runs/harm"]) in (0, None)
    guards = built["settings"].guards
    assert loaded == ["runs/harm"] and guards.name == "topics+injection+secrets+pii+harm_model"
    assert guards.check_input([{"role": "user", "content": "hello"}]).guard == "harm_model"  # its p=0.99
    loaded.clear()  # several directories: an ensemble of all of them
    assert main(["serve", "--model", "m", "--harm-model", "runs/h1", "--harm-model", "runs/h2",
                 "guards=default,harm_model"]) in (0, None)  # the positional after the flags is still read
    assert loaded == ["runs/h1", "runs/h2"] and len(built["settings"].guards.guards[-1].guard._members) == 2
    # a classifier given without its guard would be silently unused: refused before anything loads
    loaded.clear()
    assert main(["serve", "--model", "m", "guards=default", "--harm-model", "runs/harm"]) == 2
    assert "--harm-model is given but guards=default does not use it" in capsys.readouterr().err and not loaded
