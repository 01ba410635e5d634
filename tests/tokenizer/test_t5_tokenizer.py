"""T5-style Unigram tokenizers with `<extra_id_N>` sentinels: loaded, trained and saved by llmkit,
they encode and decode exactly like transformers.AutoTokenizer (which rebuilds them as T5Tokenizer).

No real T5 tokenizer is available offline, so the fixtures are a small Unigram trained with the
`tokenizers` library, laid out as T5's spiece vocabulary (<pad> </s> <unk>, pieces, then
<extra_id_99> ... <extra_id_0>) and written in the layouts real checkpoints use:

* "saved": written by transformers 5's own T5Tokenizer.save_pretrained;
* "hub": as t5/flan-t5 ship (converted by transformers 4): a Precompiled SentencePiece normalizer
  followed by a Replace, special_tokens_map.json, no added_tokens_decoder, clean-up on;
* "bare": only config.json's model_type says T5; tokenizer.json has a Lowercase normalizer, no
  post-processor, unk_id 0 and no added sentinels - all things T5Tokenizer overrides;
* "listed": "bare" whose tokenizer_config.json lists its own extra special tokens, so transformers 5
  adds no sentinels: they stay plain Unigram pieces.
"""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path

import pytest
from tokenizers import (
    Regex,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from tokenizers import Tokenizer as Backend

from llmkit.tokenizer import Tokenizer
from tests.peers import peer
from tests.tokenizer import builders

transformers = peer("transformers")

TEXTS = [
    "Hello, world! How are you today?", "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "  leading and   inner   runs of spaces  ", "tabs\tand\nnewlines\n\n\nmany\r\nwindows", "    ", "\n",
    "Café naïve façade déjà vu e\u0301 combining", "ﬁne ligature and ＡＢＣ full width", "日本語のテキストです。",
    "中文，你好世界 mixed 中文 and English", "emoji 😀🎉👍🏽 👨‍👩‍👧 🇫🇷 ❤️", "Hello , world . don 't",
    "a <extra_id_0> b", "<extra_id_0> starts<extra_id_1>glued <extra_id_99> end <extra_id_100>", "<extra_id_5>",
    "</s> <pad> <unk> inside text", "<sep> custom", "", " ", "xqzwv" * 20, "null\x00byte \x7f \u200b zero width",
]
PAIRS = [("translate English to German: Hi", "Hallo"), ("", "only b"), ("a <extra_id_0>", "<extra_id_0> b c")]
SENTINELS = [f"<extra_id_{i}>" for i in range(100)]
# A tiny SentencePiece charsmap (NFKC-like for a few characters) for the "hub" layout's normalizer.
CHARSMAP = {"ﬁ": "fi", "Ａ": "A", "Ｂ": "B", "Ｃ": "C", "é": "e"}


def _charsmap(mapping: dict[str, str]) -> bytes:
    """A SentencePiece precompiled charsmap: a darts-clone double-array trie over the UTF-8 keys
    (one 256-unit block per node, so no two nodes' children collide) + the NUL-ended values."""
    trie: dict = {}
    values = b""
    for key, value in mapping.items():
        node = trie
        for byte in key.encode():
            node = node.setdefault(byte, {})
        node[None] = len(values)
        values += value.encode() + b"\0"
    units = [0] * 256
    def place(node: dict, pos: int) -> None:
        base = len(units)
        units.extend([0] * 256)
        units[pos] |= (pos ^ base) << 10  # offset: children sit at (pos ^ offset) ^ byte
        for byte, child in node.items():
            if byte is None:  # has_leaf; the value unit sits at (pos ^ offset) ^ 0
                units[pos] |= 1 << 8
                units[base] = child | (1 << 31)
            else:
                units[base ^ byte] = byte  # the label
                place(child, base ^ byte)
    place(trie, 0)
    blob = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(blob)) + blob + values


@functools.lru_cache(maxsize=1)
def _t5_vocab() -> tuple[tuple[str, float], ...]:
    """A 400-piece Unigram trained by `tokenizers` (not llmkit), in T5's spiece layout + 100 sentinels."""
    tok = Backend(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(builders.corpus(), trainer)
    pieces = [tuple(p) for p in json.loads(tok.model.__getstate__())["vocab"]]
    assert [p for p, _ in pieces[:3]] == ["<pad>", "</s>", "<unk>"]
    return tuple(pieces + [(s, 0.0) for s in reversed(SENTINELS)])


def _write(path: Path, name: str, data: dict) -> None:
    (path / name).write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def _build_saved(path: Path) -> None:
    transformers.T5Tokenizer(vocab=list(_t5_vocab()), extra_ids=100).save_pretrained(path)


def _build_hub(path: Path) -> None:
    vocab = list(_t5_vocab())
    tok = Backend(models.Unigram(vocab, unk_id=2))
    tok.normalizer = normalizers.Sequence([normalizers.Precompiled(_charsmap(CHARSMAP)),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"] + SENTINELS)
    path.mkdir(parents=True)
    tok.save(str(path / "tokenizer.json"))
    specials = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    _write(path, "tokenizer_config.json", {"additional_special_tokens": SENTINELS, **specials, "extra_ids": 100,
                                           "model_max_length": 512, "tokenizer_class": "T5Tokenizer",
                                           "clean_up_tokenization_spaces": True})
    _write(path, "special_tokens_map.json", {"additional_special_tokens": SENTINELS, **specials})
    _write(path, "config.json", {"model_type": "t5"})


def _build_bare(path: Path) -> None:
    tok = Backend(models.Unigram(list(_t5_vocab()), unk_id=0))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    path.mkdir(parents=True)
    tok.save(str(path / "tokenizer.json"))
    _write(path, "tokenizer_config.json", {"model_max_length": 512})
    _write(path, "config.json", {"model_type": "t5"})


def _build_listed(path: Path) -> None:
    _build_bare(path)
    _write(path, "tokenizer_config.json", {"model_max_length": 512, "extra_special_tokens": ["<sep>"]})


BUILDERS = {"saved": _build_saved, "hub": _build_hub, "bare": _build_bare, "listed": _build_listed}


@pytest.fixture(scope="module")
def t5_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("t5")
    for name, build in BUILDERS.items():
        build(root / name)
    return {name: root / name for name in BUILDERS}


@pytest.fixture(scope="module")
def trained_t5(tmp_path_factory) -> tuple[Tokenizer, Path]:
    """A 600-token T5-style Unigram trained by llmkit (with one extra special token), and its directory."""
    tok = Tokenizer.train(builders.corpus(), vocab_size=600, kind="unigram", special_tokens=["<sep>"])
    path = tmp_path_factory.mktemp("trained_t5") / "tok"
    tok.save(path)
    return tok, path


def _hf(path: Path):
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    return transformers.AutoTokenizer.from_pretrained(str(path))


def assert_same(mine: Tokenizer, hf) -> None:
    """Ids (with and without special tokens), pairs, decoding both ways, size and special ids."""
    assert len(mine) == len(hf)
    # llmkit's all_special_ids are the added tokens marked special (what skip_special_tokens drops);
    # transformers' lists only the named and extra special tokens.
    hf_added = hf.backend_tokenizer.get_added_tokens_decoder()
    assert mine.all_special_ids == sorted(i for i, t in hf_added.items() if t.special)
    assert set(hf.all_special_ids) <= set(mine.all_special_ids)
    assert mine.extra_special_tokens == [str(t) for t in hf.extra_special_tokens]
    for text in TEXTS:
        ids = hf(text)["input_ids"]
        assert mine.encode(text) == ids, text
        assert mine.encode(text, add_special_tokens=False) == hf(text, add_special_tokens=False)["input_ids"], text
        for skip in (False, True):
            assert mine.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), text
    for a, b in PAIRS:
        assert mine.encode_pair(a, b)[0] == hf(a, b)["input_ids"]


@pytest.mark.parametrize("layout", list(BUILDERS))
def test_loaded_t5_matches_transformers(t5_dirs, layout):
    path = t5_dirs[layout]
    hf = _hf(path)
    assert type(hf).__name__ == "T5Tokenizer"
    mine = Tokenizer.from_dir(path)
    assert_same(mine, hf)
    assert mine.eos_token == "</s>" and mine.pad_token == "<pad>" and mine.unk_token == "<unk>"
    assert mine.encode("a b")[-1] == mine.eos_token_id == 1
    # T5's layout: <extra_id_0> is the last id, then counting down.
    assert mine.sentinel_ids == [hf.convert_tokens_to_ids(s) for s in SENTINELS] == list(range(499, 399, -1))
    specials = set(mine.all_special_ids)
    if layout == "listed":  # a config list replaces the sentinels (transformers 5): they stay plain pieces
        assert not specials & set(mine.sentinel_ids) and mine.token_to_id("<sep>") in specials
    else:
        assert set(mine.sentinel_ids) <= specials
        assert mine.encode("a <extra_id_0> b <extra_id_99>", add_special_tokens=False)[1::2] == [499, 400]


def test_t5_pipeline_is_rebuilt_not_read(t5_dirs):
    """What T5Tokenizer overrides in the files, checked directly (so a loader that used tokenizer.json
    as is would fail here even if transformers changed)."""
    bare = Tokenizer.from_dir(t5_dirs["bare"])
    assert bare.decode(bare.encode("ABC abc")) == "ABC abc</s>"  # the Lowercase is dropped; "</s>" appended
    assert bare.encode("x\n\n  y") == bare.encode("x y")  # whitespace runs are one boundary
    assert bare.encode("\u2603") == [bare.token_to_id("▁"), 2, 1]  # unknown -> id 2 (<unk>), not 0
    hub = Tokenizer.from_dir(t5_dirs["hub"])
    assert hub.encode("ﬁ ＡＢ") == hub.encode("fi AB")  # the Precompiled charsmap is kept
    assert hub.decode(hub.encode("Hello , world .")) == "Hello, world.</s>"  # clean-up applies (Unigram)


def test_trained_t5_layout_and_save(trained_t5):
    tok, path = trained_t5
    assert len(tok) == 600 and tok.chat_template is None
    assert [tok.id_to_token(i) for i in range(4)] == ["<pad>", "</s>", "<unk>", "<sep>"]
    assert tok.sentinel_ids == list(range(599, 499, -1))
    assert tok.encode("a b") == tok.encode("a b", add_special_tokens=False) + [tok.eos_token_id]
    assert tok.encode("<extra_id_3> <sep>", add_special_tokens=False) == [596, 3]
    config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "T5Tokenizer" and config["extra_ids"] == 100
    hf = _hf(path)
    assert type(hf).__name__ == "T5Tokenizer"
    assert_same(tok, hf)
    reloaded = Tokenizer.from_dir(path)
    assert_same(reloaded, hf)
    assert reloaded.sentinel_ids == tok.sentinel_ids
    for text in TEXTS[:3] + TEXTS[14:16]:  # streaming never disagrees with the Metaspace decoder
        ids = tok.encode(text)
        stream = tok.stream_decoder(skip_special_tokens=False)
        assert "".join(stream.push(i) for i in ids) + stream.flush() == hf.decode(ids)


def test_loaded_t5_saves_as_t5(t5_dirs, tmp_path):
    """A hub T5 loaded and saved by llmkit is still a T5Tokenizer with the same ids in transformers."""
    mine = Tokenizer.from_dir(t5_dirs["hub"])
    mine.save(tmp_path / "out")
    config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "T5Tokenizer"
    assert_same(mine, _hf(tmp_path / "out"))


def test_sentinels_absent_and_bad_configs(t5_dirs, tmp_path, trained):
    bpe, _ = trained
    assert bpe.sentinel_ids == []
    with pytest.raises(ValueError, match="too small"):
        Tokenizer.train(["a b c"], vocab_size=100, kind="unigram")
    # extra_ids disagreeing with the listed sentinels: transformers refuses, and so do we.
    path = tmp_path / "bad"
    path.mkdir()
    for name in ("tokenizer.json", "config.json"):
        (path / name).write_bytes((t5_dirs["hub"] / name).read_bytes())
    _write(path, "tokenizer_config.json", {"extra_ids": 10})
    _write(path, "special_tokens_map.json", {"additional_special_tokens": SENTINELS[:3]})
    with pytest.raises(ValueError, match="extra_ids"):
        transformers.AutoTokenizer.from_pretrained(str(path))
    with pytest.raises(ValueError, match="extra_ids"):
        Tokenizer.from_dir(path)
