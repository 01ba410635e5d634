"""Tokenizer.from_dir must encode and decode exactly like transformers.AutoTokenizer."""

from __future__ import annotations

import json
import random
import shutil

import pytest
from tokenizers import Tokenizer as BackendTokenizer

from llmkit.tokenizer import Tokenizer
from tests.tokenizer.conftest import SAMPLES, STYLES


@pytest.mark.parametrize("style", STYLES)
def test_encode_decode_match_transformers(style, tok_dirs, auto_tokenizer):
    path = tok_dirs[style]
    hf, tok = auto_tokenizer(path), Tokenizer.from_dir(path)
    for text in SAMPLES:
        for add in (True, False):
            expected = hf(text, add_special_tokens=add)["input_ids"]
            assert tok.encode(text, add_special_tokens=add) == expected, (style, text, add)
        for skip in (False, True):
            assert tok.decode(expected, skip_special_tokens=skip) == hf.decode(expected, skip_special_tokens=skip)
    assert tok.encode_batch(SAMPLES) == hf(SAMPLES)["input_ids"]


@pytest.mark.parametrize("style", STYLES)
def test_decode_random_ids_matches_transformers(style, tok_dirs, auto_tokenizer):
    """Arbitrary id sequences (partial UTF-8, byte-fallback bytes, special tokens in odd places)."""
    path = tok_dirs[style]
    hf, tok = auto_tokenizer(path), Tokenizer.from_dir(path)
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(len(hf)) for _ in range(rng.randint(1, 12))]
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), ids


@pytest.mark.parametrize("style", STYLES)
def test_special_tokens_and_sizes_match_transformers(style, tok_dirs, auto_tokenizer):
    path = tok_dirs[style]
    hf, tok = auto_tokenizer(path), Tokenizer.from_dir(path)
    assert tok.vocab_size == len(hf)
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(tok, name) == getattr(hf, name), name
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(tok, name) == getattr(hf, name), name
    assert tok.all_special_ids == sorted(i for i, t in hf.added_tokens_decoder.items() if t.special)
    for i in (0, 5, len(hf) - 1):
        assert tok.id_to_token(i) == hf.convert_ids_to_tokens(i)
        assert tok.token_to_id(tok.id_to_token(i)) == i
    assert tok.token_to_id("definitely-not-a-token-\u2603\u2603") is None
    assert tok.id_to_token(10**7) is None


def test_known_values(tok_dirs):
    gpt2, llama3, llama2 = (Tokenizer.from_dir(tok_dirs[s]) for s in ("gpt2", "llama3", "llama2"))
    assert gpt2.model_max_length == 1024 and gpt2.eos_token == "<|endoftext|>" and gpt2.encode("hi")[0] != 0
    assert llama3.encode("hi")[0] == llama3.token_to_id("<|begin_of_text|>")  # bos from the post-processor
    assert llama3.encode("hi", add_special_tokens=False)[0] != llama3.bos_token_id
    assert llama3.eos_token_ids == {llama3.token_to_id("<|eot_id|>"), llama3.token_to_id("<|end_of_text|>")}
    assert llama2.encode("hi")[0] == llama2.bos_token_id == 1 and llama2.eos_token_ids == {2}
    assert llama2.chat_template is not None and llama3.chat_template is not None and gpt2.chat_template is None


def test_llama_class_rebuild_is_emulated(tok_dirs, auto_tokenizer):
    """tokenizer_class LlamaTokenizer: transformers 5 replaces tokenizer.json's Prepend normalizer by a
    Metaspace(prepend_scheme="first") pre-tokenizer; the raw file would encode differently."""
    path = tok_dirs["llama2"]
    raw = BackendTokenizer.from_file(str(path / "tokenizer.json"))
    text = " leading space and a<s>b"
    expected = auto_tokenizer(path)(text)["input_ids"]
    assert raw.encode(text).ids != expected  # otherwise this test would prove nothing
    assert Tokenizer.from_dir(path).encode(text) == expected


def test_add_bos_token_in_config_is_ignored_like_transformers(tok_dirs, tmp_path):
    """With a tokenizer.json present, transformers 5 drops add_bos_token/add_eos_token from the
    config: the post-processor alone decides."""
    from transformers import AutoTokenizer

    path = tmp_path / "llama3"
    shutil.copytree(tok_dirs["llama3"], path)
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    cfg.update(add_bos_token=False, add_eos_token=True)
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    expected = AutoTokenizer.from_pretrained(str(path))("hello")["input_ids"]
    assert Tokenizer.from_dir(path).encode("hello") == expected
    assert expected[0] == Tokenizer.from_dir(path).bos_token_id


def test_clean_up_tokenization_spaces_rule(tok_dirs, tmp_path, auto_tokenizer):
    """transformers applies clean_up_tokenization_spaces only to non-BPE models."""
    wp = Tokenizer.from_dir(tok_dirs["wordpiece"])
    ids = wp.encode("hello , world . it ' s", add_special_tokens=False)
    assert wp.decode(ids) == auto_tokenizer(tok_dirs["wordpiece"]).decode(ids) == "hello, world. it's"
    path = tmp_path / "gpt2_cleanup"
    shutil.copytree(tok_dirs["gpt2"], path)
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**cfg, "clean_up_tokenization_spaces": True}))
    bpe = Tokenizer.from_dir(path)
    ids = bpe.encode("hello , world .")
    assert bpe.decode(ids) == auto_tokenizer(path).decode(ids) == "hello , world ."


def test_missing_special_token_is_added_like_transformers(tok_dirs, tmp_path, auto_tokenizer):
    """A special token named in tokenizer_config.json but absent from tokenizer.json is added."""
    path = tmp_path / "extra"
    shutil.copytree(tok_dirs["gpt2"], path)
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    cfg.update(pad_token="<pad>", extra_special_tokens=["<tool>"])
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    hf, tok = auto_tokenizer(path), Tokenizer.from_dir(path)
    assert tok.vocab_size == len(hf) == Tokenizer.from_dir(tok_dirs["gpt2"]).vocab_size + 2
    assert tok.pad_token_id == hf.pad_token_id
    text = "a<pad>b<tool>c"
    assert tok.encode(text) == hf(text)["input_ids"]
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == hf.decode(hf(text)["input_ids"],
                                                                               skip_special_tokens=True)


def test_decode_accepts_tensors_and_ints(tok_dirs):
    import torch

    tok = Tokenizer.from_dir(tok_dirs["gpt2"])
    ids = tok.encode("hello world")
    assert tok.decode(torch.tensor(ids)) == tok.decode(ids) == "hello world"
    assert tok.decode(ids[0]) == tok.decode([ids[0]])


def _edit(src, dst, config=None, drop=(), files=None):
    """Copy a tokenizer dir, update/drop tokenizer_config.json keys, write extra files."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    for key in drop:
        cfg.pop(key, None)
    cfg.update(config or {})
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    for name, content in (files or {}).items():
        (dst / name).write_text(json.dumps(content))
    return dst


V4_ADDED = {"0": {"content": "<unk>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                  "special": True},
            "1": {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                  "special": True},
            "2": {"content": "</s>", "lstrip": True, "normalized": False, "rstrip": False, "single_word": False,
                  "special": True}}

VARIANTS = {  # name: (style, config update, config keys dropped, extra files)
    "llama_legacy": ("llama2", {"legacy": True}, (), None),
    "llama_no_prefix_space": ("llama2", {"add_prefix_space": False}, (), None),
    "llama_v4_added_tokens": ("llama2", {"added_tokens_decoder": V4_ADDED, "add_bos_token": True}, (), None),
    "llama_as_mistral_model": ("llama2", {}, (), {"config.json": {"model_type": "mistral"}}),
    "llama_class_on_byte_level": ("llama3", {"tokenizer_class": "LlamaTokenizerFast"}, (), None),
    "gpt2_special_map_only": ("gpt2", {}, ("bos_token", "eos_token", "unk_token"),
                              {"special_tokens_map.json": {"bos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                                                           "additional_special_tokens": ["<|sep|>"]}}),
    "gpt2_class_defaults": ("gpt2", {}, ("bos_token", "eos_token", "unk_token"), None),
    "gpt2_in_qwen2_model": ("gpt2", {}, (), {"config.json": {"model_type": "qwen2"}}),
    "llama3_split_special": ("llama3", {"split_special_tokens": True}, (), None),
    "llama3_image_token": ("llama3", {"image_token": "<image>"}, (), None),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_variants_match_transformers(variant, tok_dirs, tmp_path, auto_tokenizer):
    style, config, drop, files = VARIANTS[variant]
    path = _edit(tok_dirs[style], tmp_path / variant, config, drop, files)
    hf, tok = auto_tokenizer(path), Tokenizer.from_dir(path)
    assert tok.vocab_size == len(hf)
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == (hf.bos_token, hf.eos_token,
                                                                          hf.unk_token, hf.pad_token)
    for text in SAMPLES + ["<image> x <|sep|> y"]:
        ids = hf(text)["input_ids"]
        assert tok.encode(text) == ids, text
        assert tok.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True), text
        assert tok.decode(ids) == hf.decode(ids), text
