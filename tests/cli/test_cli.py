"""The `llmkit` command: every verb, through the real console script where it matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import llmkit
from llmkit.cli.main import VERBS, main
from tests.peers import peer


def run_cli(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmkit", *args], input=stdin, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"llmkit {verb}" in out and VERBS[verb][2].split()[0] in out.lower()


def test_init_then_generate_through_the_console_script(tmp_path):
    out = tmp_path / "tiny"
    r = run_cli("init", "--preset", "tiny-gpt2", "--out", str(out), "--vocab-size", "300")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).exists(), name
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    args = ["generate", "--model", str(out), "--prompt", "def fib(n):", "--max-new-tokens", "16",
            "--temperature", "0.7", "--top-p", "0.9", "--seed", "1"]
    a, b = run_cli(*args), run_cli(*args)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.startswith("def fib(n):")
    expected = llmkit.load(out).generate("def fib(n):", max_new_tokens=16, temperature=0.7, top_p=0.9, seed=1)
    assert a.stdout == "def fib(n):" + expected + "\n"
    # a second init into the same directory refuses instead of overwriting
    again = run_cli("init", "--preset", "tiny-gpt2", "--out", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_generate_greedy_no_stream(tiny_dir, capsys):
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "import os", "--max-new-tokens", "12",
                 "--temperature", "0", "--no-stream"]) == 0
    expected = llmkit.load(tiny_dir).generate("import os", max_new_tokens=12, temperature=0)
    assert capsys.readouterr().out == "import os" + expected + "\n"


def test_info_of_model_and_preset(tiny_dir, capsys):
    assert main(["info", "--model", str(tiny_dir)]) == 0
    out = capsys.readouterr().out
    n = llmkit.load(tiny_dir).model.num_parameters()
    assert "llama" in out and f"{n:,}" in out and "GQA" in out
    for dtype in ("fp32", "bf16", "int8", "int4"):
        assert f"weights {dtype}" in out
    assert main(["info", "--preset", "llama-3.1-8b"]) == 0
    out = capsys.readouterr().out
    assert "8,030,261,248" in out and "llama3 scaling" in out and f"{8_030_261_248 * 4 / 2**30:.2f} GiB" in out


def test_chat_reads_turns_from_stdin(tiny_dir):
    r = run_cli("chat", "--model", str(tiny_dir), "--temperature", "0", "--max-new-tokens", "8",
                stdin="Hello there\n/reset\nWhat is 2+2?\n")
    assert r.returncode == 0, r.stderr
    llm = llmkit.load(tiny_dir)
    first = llm.chat([{"role": "user", "content": "Hello there"}], max_new_tokens=8, temperature=0)
    second = llm.chat([{"role": "user", "content": "What is 2+2?"}], max_new_tokens=8, temperature=0)
    assert r.stdout == first + "\n" + second + "\n"


def test_unknown_model_is_one_clear_line(tmp_path, capsys):
    code = main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"no such file or directory: {tmp_path / 'nope'}" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bad_generation_value_names_the_field(tiny_dir, capsys):
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "x", "--top-p", "1.5"]) == 2
    assert "--top-p 1.5 is invalid" in capsys.readouterr().err  # the CLI's name for the field, not top_p


def test_pull_without_network_is_a_clear_error(tmp_path):
    peer("huggingface_hub")
    env = {"LLMKIT_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    r = run_cli("pull", "Qwen/Qwen2.5-0.5B-Instruct", env=env)
    assert r.returncode == 2
    assert "not reachable" in r.stderr and "Traceback" not in r.stderr
    # a closed port instead of offline mode: also a quick, clear failure
    env = {"LLMKIT_HOME": str(tmp_path), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2",
           "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
    r = run_cli("pull", "Qwen/Qwen2.5-0.5B-Instruct", env=env)
    assert r.returncode == 2 and "not reachable" in r.stderr


def test_chat_defaults_fit_a_small_context_and_long_conversations(tiny_dir):
    """The README's `llmkit chat --model tiny/` with no options, and more turns than the window holds."""
    # replies of a quarter of the 512-token window: the fourth exchange no longer fits with the first
    lines = "".join(f"tell me about item number {i} in great detail please\n" for i in range(8))
    r = run_cli("chat", "--model", str(tiny_dir), "--temperature", "0", stdin=lines)
    assert r.returncode == 0, r.stderr
    assert "error" not in r.stderr
    assert "outgrew the 512-token context" in r.stderr  # said once per drop, in a line of its own


def test_cli_input_errors_are_one_line(tmp_path, tiny_dir, capsys):
    import torch

    if not torch.cuda.is_available():
        assert main(["generate", "--model", str(tiny_dir), "--prompt", "x", "--device", "cuda"]) == 2
        assert "no usable CUDA device" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["init", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["info", "--preset", "gpt2", "--context", "-5"])
    assert e.value.code == 2
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "hi", "--max-new-tokens", "100000"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "context window" in captured.err  # nothing echoed before the error
