"""Tokenizer.train: byte-level BPE that round-trips any text and that transformers loads identically."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmkit.tokenizer import DEFAULT_CHAT_TEMPLATE, Tokenizer
from tests.tokenizer.builders import corpus
from tests.tokenizer.conftest import SAMPLES

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def test_trained_defaults(trained):
    tok, _ = trained
    assert tok.vocab_size == 500
    assert [tok.token_to_id(t) for t in SPECIALS] == [0, 1, 2]
    assert tok.eos_token == tok.bos_token == tok.pad_token == "<|endoftext|>" and tok.unk_token is None
    assert tok.eos_token_ids == {0, 2}  # <|endoftext|> and ChatML's <|im_end|>
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE
    assert tok.encode("hello") == tok.encode("hello", add_special_tokens=False)  # no bos added
    assert tok.encode("<|im_start|>user") [0] == 1


def test_saved_files_load_identically_in_transformers(trained, auto_tokenizer):
    tok, path = trained
    assert {p.name for p in path.iterdir()} == {"tokenizer.json", "tokenizer_config.json",
                                               "special_tokens_map.json", "chat_template.jinja"}
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert cfg["add_bos_token"] is False and cfg["add_eos_token"] is False
    hf = auto_tokenizer(path)
    assert len(hf) == tok.vocab_size and hf.eos_token == tok.eos_token and hf.pad_token == tok.pad_token
    assert hf.chat_template == tok.chat_template
    for text in SAMPLES:
        ids = hf(text)["input_ids"]
        assert tok.encode(text) == ids, text
        assert tok.decode(ids) == hf.decode(ids) and tok.decode(ids, True) == hf.decode(ids, skip_special_tokens=True)
    reloaded = Tokenizer.from_dir(path)
    assert reloaded.encode_batch(SAMPLES) == tok.encode_batch(SAMPLES)
    assert reloaded.special_tokens == tok.special_tokens and reloaded.chat_template == tok.chat_template


def test_save_roundtrips_a_loaded_llama_tokenizer(tok_dirs, tmp_path, auto_tokenizer):
    """from_dir -> save -> AutoTokenizer keeps bos-adding, the rebuilt pipeline and the template."""
    src = Tokenizer.from_dir(tok_dirs["llama2"])
    src.save(tmp_path / "copy")
    hf = auto_tokenizer(tmp_path / "copy")
    for text in SAMPLES:
        assert hf(text)["input_ids"] == src.encode(text) == auto_tokenizer(tok_dirs["llama2"])(text)["input_ids"]
    assert json.loads((tmp_path / "copy" / "tokenizer_config.json").read_text())["add_bos_token"] is True
    assert hf.chat_template == src.chat_template


def test_train_from_files(tmp_path):
    files = []
    for i, text in enumerate(corpus()[:4]):
        files.append(tmp_path / f"part{i}.txt")
        files[-1].write_text(text, encoding="utf-8")
    from_files = Tokenizer.train(files, vocab_size=400)
    from_strs = Tokenizer.train([str(f) for f in files], vocab_size=400)
    assert from_files.vocab_size == from_strs.vocab_size == 400
    assert from_files.encode("def __init__(self):") == from_strs.encode("def __init__(self):")
    assert len(from_files.encode("def __init__(self):")) < len("def __init__(self):".encode())  # merges learned


def test_train_custom_special_tokens_and_template():
    tok = Tokenizer.train(["hello world " * 50], vocab_size=300, special_tokens=["<eos>", "<pad>"],
                          chat_template="{{ messages[0]['content'] }}")
    assert tok.eos_token == "<eos>" and tok.token_to_id("<pad>") == 1
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "x"


def test_train_errors(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        Tokenizer.train(["abc"], vocab_size=100)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer.train(tmp_path / "nope.txt", vocab_size=300)
    with pytest.raises(TypeError, match="item 1"):
        Tokenizer.train(iter(["ok", 3]), vocab_size=300)


@pytest.fixture(scope="module")
def small_bpe():
    return Tokenizer.train(corpus(), vocab_size=320)


@settings(max_examples=300, deadline=None, database=None)
@given(st.text())
def test_roundtrip_any_unicode(small_bpe, text):
    for special in SPECIALS:
        text = text.replace(special, "")
    assert small_bpe.decode(small_bpe.encode(text, add_special_tokens=False)) == text
