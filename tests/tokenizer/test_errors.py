"""Loading errors name the directory, the missing file and the fix."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from llmkit.tokenizer import Tokenizer


def test_missing_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as err:
        Tokenizer.from_dir(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "tokenizer.json" in msg and "tokenizer_config.json" in msg
    assert "Tokenizer.train" in msg  # the fix


def test_missing_tokenizer_json_with_slow_files_suggests_conversion(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\0")
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        Tokenizer.from_dir(tmp_path)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer.from_dir(tmp_path / "nope")


def test_bad_config_json(trained, tmp_path):
    shutil.copytree(trained[1], tmp_path / "t")
    (tmp_path / "t" / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json is not valid JSON"):
        Tokenizer.from_dir(tmp_path / "t")


def test_encode_type_errors(trained):
    tok = trained[0]
    with pytest.raises(TypeError, match="encode_batch"):
        tok.encode(["a", "b"])
    with pytest.raises(TypeError):
        tok.encode_batch("ab")


def test_save_warns_when_transformers_would_rebuild_the_pipeline(trained, tmp_path, caplog, auto_tokenizer):
    """A config.json with model_type qwen2 makes AutoTokenizer use Qwen2Tokenizer's own pipeline;
    llmkit follows it when loading and warns when saving."""
    path = tmp_path / "qwen"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with caplog.at_level(logging.WARNING, logger="llmkit.tokenizer"):
        trained[0].save(path)
    assert "Qwen2Tokenizer" in caplog.text
    hf, tok = auto_tokenizer(path), Tokenizer.from_dir(path)
    assert type(hf).__name__ == "Qwen2Tokenizer"
    texts = ["Hello 123456 world", "café e\u0301", "x\r\n\n  y", "don't STOP"]
    for text in texts:
        assert tok.encode(text) == hf(text)["input_ids"], text
    assert any(trained[0].encode(t) != hf(t)["input_ids"] for t in texts)  # the rebuild matters here
