"""Bad input: each a DataError that names the problem and the fix, and no output directory left."""

from __future__ import annotations

import os

import pytest

from llmkit.data import DataConfig, DataError, PackedDataset, SourceConfig, prepare_data
from llmkit.recipe import RecipeError, from_dict
from tests.data.helpers import config, make_docs, write_docs


def assert_nothing_left(tmp_path, *keep):
    assert sorted(os.listdir(tmp_path)) == sorted(keep)


def test_recipe_dict_to_config():
    cfg = from_dict(DataConfig, {
        "sources": [{"path": "stdlib", "max_bytes": 1000}, {"path": "data/*.jsonl", "kind": "jsonl", "weight": 2}],
        "temperature": 2, "clean": {"pii": False, "min_chars": 10}, "dedup": {"threshold": 0.9},
        "seq_len": 128, "workers": 2})
    assert cfg.sources[1].weight == 2.0 and cfg.sources[1].kind == "jsonl" and cfg.temperature == 2.0
    assert cfg.clean.pii is False and cfg.clean.quality is True and cfg.dedup.threshold == 0.9
    assert DataConfig().sources[0].path == "stdlib"
    with pytest.raises(RecipeError, match="kind='csv' is not one of auto, text, jsonl"):
        from_dict(DataConfig, {"sources": [{"path": "x", "kind": "csv"}]})


def test_seq_len_below_one():
    with pytest.raises(DataError, match=r"seq_len=0 must be >= 1"):
        DataConfig(seq_len=0)
    with pytest.raises(RecipeError, match="seq_len=-3"):
        from_dict(DataConfig, {"seq_len": -3})


def test_vocabulary_too_large_for_shards(tmp_path, corpus, small_tokenizer):
    with pytest.raises(DataError, match=r"vocab_size=4294967297 is larger than the uint32 shards allow"):
        DataConfig(vocab_size=2**32 + 1)

    class Huge:
        vocab_size = 2**32 + 1
        eos_token_id = 0

    with pytest.raises(DataError, match=r"vocabulary of 4294967297 tokens is larger than .*\(uint32\)"):
        prepare_data(config(corpus), tmp_path / "out", Huge())
    with pytest.raises(DataError, match="vocab_size=100 is too small"):
        prepare_data(config(corpus, vocab_size=100), tmp_path / "out")
    assert_nothing_left(tmp_path, "corpus")


def test_missing_source_path(tmp_path, small_tokenizer):
    with pytest.raises(DataError, match=r"sources\[1\]\.path=.*nowhere.*does not exist.*'stdlib'"):
        prepare_data(config("stdlib", tmp_path / "nowhere"), tmp_path / "out", small_tokenizer)
    assert_nothing_left(tmp_path)


def test_empty_after_reading(tmp_path, small_tokenizer):
    root = tmp_path / "c"
    root.mkdir()
    (root / "a.txt").write_bytes(b"\xff\xfe\x00b\x00a\x00d")
    (root / "b.txt").write_text("   \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty after reading.*2 file\(s\), 1 not UTF-8, 1 blank"):
        prepare_data(config(root), tmp_path / "out", small_tokenizer)
    assert_nothing_left(tmp_path, "c")


def test_empty_after_cleaning_names_the_step(tmp_path, small_tokenizer):
    root = write_docs(tmp_path / "c", ["#$%^&*()!@#$%^&*()_+{}|:<>?~" * 3, "!!!! ???? .... ;;;; ::::" * 4])
    with pytest.raises(DataError, match=r"empty after cleaning: step 'quality' removed every.*max_symbol_ratio"):
        prepare_data(config(root), tmp_path / "out", small_tokenizer)
    assert_nothing_left(tmp_path, "c")


def test_too_little_data_for_seq_len(tmp_path, small_tokenizer):
    root = write_docs(tmp_path / "c", make_docs(2, length=20))
    with pytest.raises(DataError, match=r"only \d+ tokens, fewer than seq_len \+ 1 = 100001.*lower seq_len"):
        prepare_data(config(root, seq_len=100_000), tmp_path / "out", small_tokenizer)
    assert_nothing_left(tmp_path, "c")


def test_foreign_out_dir_and_tokenizer_without_eos(tmp_path, corpus, small_tokenizer):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious", encoding="utf-8")
    with pytest.raises(DataError, match="not prepared data.*choose a new path"):
        prepare_data(config(corpus), mine, small_tokenizer)
    assert (mine / "thesis.tex").read_text(encoding="utf-8") == "precious"

    class NoEos:
        vocab_size = 300
        eos_token_id = None

    with pytest.raises(DataError, match="no eos token"):
        prepare_data(config(corpus), tmp_path / "out", NoEos())


def test_missing_or_truncated_shard(tmp_path, corpus, small_tokenizer):
    with pytest.raises(DataError, match="not a prepared data directory"):
        PackedDataset(tmp_path)
    out = tmp_path / "out"
    prepared = prepare_data(config(corpus, shard_tokens=500), out, small_tokenizer)
    shards = prepared.index["splits"]["train"]["shards"]
    first, second = out / shards[0]["file"], out / shards[1]["file"]
    first.write_bytes(first.read_bytes()[:-2])
    with pytest.raises(DataError, match=rf"shard {first} has \d+ bytes but the index says \d+.*truncated"):
        PackedDataset(out)
    second.unlink()
    first.unlink()
    with pytest.raises(DataError, match=rf"shard {first} is missing"):
        PackedDataset(out)
    with pytest.raises(DataError, match="split='test' is not one of train, val"):
        PackedDataset(out, "test")


def test_source_and_config_values():
    with pytest.raises(DataError, match="weight=0"):
        SourceConfig(weight=0)
    with pytest.raises(DataError, match="temperature=0"):
        DataConfig(temperature=0)
    with pytest.raises(DataError, match="sources is empty"):
        DataConfig(sources=[])
