"""The verbs that take --model work against a server URL as they do locally: `llmkit chat` and
`llmkit generate --chat` over llmkit serve give the local model's greedy reply, and --stats
reports the prompt tokens the server counted."""

from __future__ import annotations

import io
import re

import pytest

from llmkit.cli.main import main

MESSAGE = "Write a function that adds two numbers."


def test_chat_and_generate_against_a_url(server, served_llm, monkeypatch, capsys):
    url = server.url + "/v1"
    messages = [{"role": "user", "content": MESSAGE}]
    ids = served_llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    local = served_llm.complete([ids], max_new_tokens=6, temperature=0)[0]
    want = local.text

    monkeypatch.setattr("sys.stdin", io.StringIO(f"/help\n{MESSAGE}\n/stats\n"))
    assert main(["chat", "-m", url, "--max-new-tokens", "6", "--temperature", "0", "--stats"]) == 0
    out, err = capsys.readouterr()
    assert want + "\n" in out
    assert f"prompt {len(ids)} tokens" in err
    assert f"generated {len(local.token_ids)} tokens" in err
    assert re.search(r"context \d+ of \d+ tokens", out)  # the server's window and tokenizer were reached

    assert main(["generate", "-m", url, "-p", MESSAGE, "--chat", "--max-new-tokens", "6", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == want + "\n"


def test_info_describes_a_served_model_from_its_card(server, served_llm, capsys):
    assert main(["info", "-m", server.url + "/v1"]) == 0
    out = capsys.readouterr().out
    assert f"tiny at {server.url}/v1" in out
    assert f"context            {served_llm.config.context_window}" in out


@pytest.mark.parametrize("verb, extra", [("convert", ["-o", "x"]), ("export", ["-o", "x.gguf"]),
                                         ("quantize", ["--method", "int8", "-o", "q"]),
                                         ("merge", ["-a", "adapter", "-o", "m"]), ("serve", ["--port", "0"])])
def test_verbs_that_need_the_weights_say_so_for_a_url(server, verb, extra, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([verb, "-m", server.url + "/v1", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"llmkit {verb}: error: --model {server.url}/v1 is a server") and err.count("\n") == 1
