"""prepare_data end to end: stats, packing, split, mixture, workers, atomic output."""

from __future__ import annotations

import filecmp
import json
import os

import numpy as np
import pytest

from llmkit.data import (CleanConfig, DataConfig, DedupConfig, PackedDataset, PreparedData, SourceConfig,
                         format_stats, prepare_data)
from llmkit.data.clean import clean_texts
from llmkit.data.corpus import read_source
from llmkit.data.dedup import jaccard, shingles
from llmkit.data.pack import shard_dtype
from llmkit.tokenizer import Tokenizer
from tests.data.helpers import (NO_CLEAN, config, decoded_docs, make_docs, one_word_edit, stream, write_docs,
                                write_jsonl)


def test_stdlib_end_to_end(tmp_path):
    cfg = DataConfig(sources=[SourceConfig(max_bytes=200_000)], seq_len=64, vocab_size=512, val_fraction=0.1)
    prepared = prepare_data(cfg, tmp_path / "out")
    src = prepared.stats["sources"][0]
    assert src["name"] == "stdlib" and src["documents"] > 10 and src["bytes"] <= 200_000
    assert src["tokens"]["train"] > 10_000 and src["tokens"]["val"] > 0
    assert src["train_documents"] + src["val_documents"] == src["kept"]["documents"]
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["dtype"] == "uint16" and index["seq_len"] == 64 and index["vocab_size"] == 512
    tok = Tokenizer.from_dir(prepared.tokenizer_dir)
    assert index["eos_id"] == tok.eos_token_id
    train, val = PackedDataset(tmp_path / "out"), PackedDataset(tmp_path / "out", "val")
    assert len(train) == index["splits"]["train"]["num_sequences"] > 100 and len(val) > 0
    assert train[0].dtype == np.int64 and train[0].shape == (65,)
    # every document piece of the first sequences is text of a cleaned stdlib document
    cleaned = "\x00".join(clean_texts(read_source(cfg.sources[0]).texts, cfg.clean)[0])
    ids = stream(train)[:64 * 5].tolist()
    pieces = tok.decode(ids).split("<|endoftext|>")
    assert len(pieces) >= 1 and all(p in cleaned for p in pieces)
    assert PreparedData.load(tmp_path / "out").stats == prepared.stats
    report = format_stats(prepared.stats)
    assert "stdlib" in report and "near_dedup" in report and "train" in report


def test_packing_exact_stream_overlap_and_shards(tmp_path, corpus, small_tokenizer):
    docs = sorted(p.read_text(encoding="utf-8") for p in corpus.iterdir())
    whole = prepare_data(config(corpus, seq_len=1, clean=NO_CLEAN), tmp_path / "one", small_tokenizer)
    ds1 = whole.dataset()
    order = decoded_docs(ds1, small_tokenizer)
    assert sorted(order) == docs  # every document exactly once, nothing lost or changed
    expected = np.concatenate([small_tokenizer.encode(d, add_special_tokens=False) + [ds1.eos_id] for d in order])
    assert whole.index["splits"]["train"]["num_tokens"] == len(expected)
    np.testing.assert_array_equal(stream(ds1), expected)

    L = 7
    packed = prepare_data(config(corpus, seq_len=L, clean=NO_CLEAN, shard_tokens=50), tmp_path / "seven",
                          small_tokenizer)
    ds = packed.dataset()
    n = len(ds)
    assert n == (len(expected) - 1) // L
    for i in range(3):  # the first sequences decode to the documents joined by eos
        np.testing.assert_array_equal(ds[i], expected[i * L:i * L + L + 1])
    for i in range(n - 1):  # consecutive sequences overlap by exactly one token
        assert ds[i][-1] == ds[i + 1][0]
    targets = np.concatenate([ds[i][1:] for i in range(n)])
    np.testing.assert_array_equal(targets, expected[1:n * L + 1])  # every token a target exactly once
    shards = packed.index["splits"]["train"]["shards"]
    assert len(shards) > 5 and all(s["num_sequences"] == 7 for s in shards[:-1])
    for s in shards:
        assert (tmp_path / "seven" / s["file"]).stat().st_size == 2 * s["num_tokens"]
    assert packed.index["splits"]["train"]["dropped_tokens"] == len(expected) - (n * L + 1)


class _BigVocab:
    """A tokenizer that claims a vocabulary too large for uint16 shards."""

    def __init__(self, tok: Tokenizer, vocab_size: int) -> None:
        self.tok, self.vocab_size = tok, vocab_size

    eos_token_id = property(lambda self: self.tok.eos_token_id)

    def save(self, path) -> None:
        self.tok.save(path)


def test_uint16_or_uint32(tmp_path, corpus, small_tokenizer):
    assert shard_dtype(65_536) == np.uint16 and shard_dtype(65_537) == np.uint32
    small = prepare_data(config(corpus), tmp_path / "small", small_tokenizer)
    big = prepare_data(config(corpus), tmp_path / "big", _BigVocab(small_tokenizer, 70_000))
    assert big.index["dtype"] == "uint32" and big.index["vocab_size"] == 70_000
    shard = big.index["splits"]["train"]["shards"][0]
    assert (tmp_path / "big" / shard["file"]).stat().st_size == 4 * shard["num_tokens"]
    np.testing.assert_array_equal(stream(big.dataset()), stream(small.dataset()))


def test_stats_count_each_step(tmp_path, small_tokenizer):
    docs = make_docs(20, length=150)
    extra = [docs[0], docs[1], docs[1],  # 3 exact copies
             one_word_edit(docs[2]), one_word_edit(docs[3], seed=1),  # 2 near copies
             "#$%^&*()!@#$%^&*()_+{}|:<>?~" * 5,  # symbols only
             "<html><body><p>" + docs[4][:200].replace("\n", " ") + " and more words here</p></body></html>",
             "Write to joe@example.com about " + docs[5][:300]]
    root = write_docs(tmp_path / "c", docs + extra)
    (root / "latin1.txt").write_bytes("d\xe9j\xe0 vu".encode("latin-1"))
    prepared = prepare_data(config(root, val_fraction=0.2), tmp_path / "out", small_tokenizer)
    s = prepared.stats["sources"][0]
    assert s["files"] == 29 and s["non_utf8_skipped"] == 1 and s["non_utf8_files"][0].endswith("latin1.txt")
    assert prepared.stats["non_utf8_skipped"] == 1
    assert s["documents"] == 28
    assert s["removed"]["quality"]["documents"] == 1
    assert s["removed"]["exact_dedup"]["documents"] == 3
    assert s["removed"]["near_dedup"]["documents"] == 2
    assert s["changed"]["strip_html"]["documents"] == 1 and s["changed"]["pii"]["documents"] == 1
    assert s["changed"]["pii"]["characters"] == len("joe@example.com")
    assert s["kept"]["documents"] == 22 == s["train_documents"] + s["val_documents"]
    assert s["val_documents"] == round(0.2 * 22)
    assert s["tokens"]["train"] == prepared.index["splits"]["train"]["num_tokens"]


def test_split_by_document_no_near_duplicate_leak(tmp_path, small_tokenizer):
    docs = make_docs(40, length=100)
    planted = [one_word_edit(docs[i], seed=i) for i in range(0, 20, 2)] + docs[:5]
    root = write_docs(tmp_path / "c", docs + planted)
    cfg = config(root, seq_len=1, val_fraction=0.3, clean=NO_CLEAN)
    prepared = prepare_data(cfg, tmp_path / "a", small_tokenizer)
    train = decoded_docs(prepared.dataset("train"), small_tokenizer)
    val = decoded_docs(prepared.dataset("val"), small_tokenizer)
    assert len(val) == 12 and len(train) == 28 and not set(val) & set(train)
    assert sorted(train + val) == sorted(docs)  # the originals come first in file order and are kept
    for v in val:
        sv = shingles(v, cfg.dedup.shingle_size)
        assert max(jaccard(sv, shingles(t, cfg.dedup.shingle_size)) for t in train) < cfg.dedup.threshold
    # deterministic from the seed
    again = prepare_data(cfg, tmp_path / "b", small_tokenizer)
    assert decoded_docs(again.dataset("val"), small_tokenizer) == val
    other = prepare_data(config(root, seq_len=1, val_fraction=0.3, clean=NO_CLEAN, seed=1), tmp_path / "c2",
                         small_tokenizer)
    assert set(decoded_docs(other.dataset("val"), small_tokenizer)) != set(val)


def test_jsonl_glob_and_folder_sources(tmp_path, small_tokenizer):
    docs = make_docs(12)
    write_jsonl(tmp_path / "j" / "part1.jsonl", docs[:3])
    write_jsonl(tmp_path / "j" / "part2.jsonl", docs[3:5])
    write_docs(tmp_path / "g", docs[5:8], suffix=".md")
    write_docs(tmp_path / "g", docs[8:9], suffix=".rst")
    write_docs(tmp_path / "f" / "deep" / "er", docs[9:])
    sources = [SourceConfig(path=str(tmp_path / "j" / "*.jsonl"), name="jsonl"),
               SourceConfig(path=str(tmp_path / "g" / "*.md")), SourceConfig(path=str(tmp_path / "f"))]
    prepared = prepare_data(config(sources=sources, seq_len=1), tmp_path / "out", small_tokenizer)
    counts = {s["name"]: (s["files"], s["documents"]) for s in prepared.stats["sources"]}
    assert counts == {"jsonl": (2, 5), str(tmp_path / "g" / "*.md"): (3, 3), str(tmp_path / "f"): (3, 3)}
    assert sorted(decoded_docs(prepared.dataset(), small_tokenizer)) == sorted(docs[:8] + docs[9:])


def test_mixture_temperature(tmp_path, small_tokenizer):
    big = write_docs(tmp_path / "big", make_docs(30, seed=1))
    small = write_docs(tmp_path / "small", make_docs(10, seed=2))

    def run(name, temperature, weights=(1.0, 1.0)):
        sources = [SourceConfig(path=str(big), name="big", weight=weights[0]),
                   SourceConfig(path=str(small), name="small", weight=weights[1])]
        return prepare_data(config(sources=sources, temperature=temperature), tmp_path / name, small_tokenizer)

    t1 = run("t1", 1.0)
    sizes = {s["name"]: s["kept"]["characters"] for s in t1.stats["sources"]}
    share = sizes["big"] / (sizes["big"] + sizes["small"])
    assert t1.proportions["big"] == pytest.approx(share) and share == pytest.approx(0.75, abs=0.03)
    for s in t1.stats["sources"]:  # proportional to size: every document exactly once
        assert s["mixture"]["sampled_documents"] == s["train_documents"]
    hot = run("hot", 1000.0)
    assert hot.proportions["small"] == pytest.approx(0.5, abs=0.01)
    by_name = {s["name"]: s for s in hot.stats["sources"]}
    # each gets half of the 40 documents' worth: small up-sampled 2x, big down-sampled to 2/3
    assert 19 <= by_name["small"]["mixture"]["sampled_documents"] <= 21
    assert 19 <= by_name["big"]["mixture"]["sampled_documents"] <= 21
    total = sum(s["mixture"]["sampled_characters"] for s in by_name.values())
    assert by_name["small"]["mixture"]["sampled_characters"] / total == pytest.approx(0.5, abs=0.05)
    weighted = run("w", 1.0, weights=(1.0, 3.0))
    expect = 3 * sizes["small"] / (sizes["big"] + 3 * sizes["small"])
    assert weighted.proportions["small"] == pytest.approx(expect)


def test_parallel_workers_give_identical_shards(tmp_path, small_tokenizer, monkeypatch):
    import llmkit.data.pack as pack

    monkeypatch.setattr(pack, "CHUNK_CHARS", 2000)  # many small tasks, so both workers get some
    root = write_docs(tmp_path / "c", make_docs(60))
    out = {}
    for workers in (1, 2):
        out[workers] = prepare_data(config(root, val_fraction=0.2, workers=workers, shard_tokens=1000),
                                    tmp_path / f"w{workers}", small_tokenizer)
    files = sorted(f for f in os.listdir(tmp_path / "w1") if f.endswith(".bin"))
    assert len(files) > 3 and files == sorted(f for f in os.listdir(tmp_path / "w2") if f.endswith(".bin"))
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "w1", tmp_path / "w2", files + ["index.json"], shallow=False)
    assert not mismatch and not errors
    assert out[1].stats["sources"] == out[2].stats["sources"]


def test_failure_mid_prepare_leaves_nothing(tmp_path, corpus, small_tokenizer, monkeypatch):
    import llmkit.data.prepare as prep

    real_pack = prep.pack

    def failing_pack(texts, folder, prefix, *args, **kw):
        if prefix == "val":  # the train shards are written by now
            raise RuntimeError("disk full")
        return real_pack(texts, folder, prefix, *args, **kw)

    out = tmp_path / "out"
    monkeypatch.setattr(prep, "pack", failing_pack)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_data(config(corpus, val_fraction=0.2), out, small_tokenizer)
    assert sorted(os.listdir(tmp_path)) == ["corpus"]  # no out_dir, no staging folder

    monkeypatch.setattr(prep, "pack", real_pack)
    prepare_data(config(corpus, val_fraction=0.2), out, small_tokenizer)
    before = {f: (out / f).read_bytes() for f in os.listdir(out) if (out / f).is_file()}
    monkeypatch.setattr(prep, "pack", failing_pack)
    with pytest.raises(RuntimeError):
        prepare_data(config(corpus, val_fraction=0.2, seq_len=5), out, small_tokenizer)
    assert {f: (out / f).read_bytes() for f in os.listdir(out) if (out / f).is_file()} == before
    assert sorted(os.listdir(tmp_path)) == ["corpus", "out"]

    monkeypatch.setattr(prep, "pack", real_pack)  # a successful run replaces the old output
    prepare_data(config(corpus, val_fraction=0.2, seq_len=5), out, small_tokenizer)
    assert json.loads((out / "index.json").read_text())["seq_len"] == 5
    assert sorted(os.listdir(tmp_path)) == ["corpus", "out"]


def test_trains_tokenizer_when_none_given(tmp_path, corpus):
    prepared = prepare_data(config(corpus, vocab_size=400, dedup=DedupConfig(near=False),
                                   clean=CleanConfig(pii=False)), tmp_path / "out")
    tok = Tokenizer.from_dir(tmp_path / "out" / "tokenizer")
    assert prepared.stats["tokenizer"]["trained"] and tok.vocab_size == prepared.index["vocab_size"] <= 400
    assert prepared.index["eos_id"] == tok.eos_token_id == tok.token_to_id("<|endoftext|>")


def test_failed_swap_puts_previous_output_back(tmp_path, corpus, small_tokenizer, monkeypatch):
    import llmkit.data.prepare as prep

    out = tmp_path / "out"
    prepare_data(config(corpus), out, small_tokenizer)
    before = (out / "index.json").read_bytes()
    real_rename = os.rename

    def rename(src, dst):
        if ".tmp-" in str(src):  # moving the new output into place fails (after the old one moved aside)
            raise OSError("device busy")
        real_rename(src, dst)

    monkeypatch.setattr(prep.os, "rename", rename)
    with pytest.raises(OSError, match="device busy"):
        prepare_data(config(corpus, seq_len=5), out, small_tokenizer)
    monkeypatch.undo()
    assert (out / "index.json").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["corpus", "out"]
