"""Shared fixtures: one tokenizer directory per family style, built once per session."""

from __future__ import annotations

import pytest

from tests.tokenizer import builders

# Strings every parity test runs: ASCII, code, whitespace runs, emoji (incl. ZWJ and flags), CJK,
# accents and combining marks, control characters, and text holding special tokens.
SAMPLES = [
    "Hello, world!", "The quick brown fox jumps over the lazy dog.", " leading space", "trailing space ",
    "  double  spaces  ", "\tTabs\tand\nnewlines\n\n\nmany", "\r\n windows line", "    ",
    "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "日本語のテキストです。", "中文，你好世界", "한국어 문장", "emoji 😀🎉👍🏽 👨‍👩‍👧 🇫🇷 ❤️",
    "café naïve façade déjà vu", "e\u0301 a\u0300 combining", "Ω≈ç√∫ ∑", "123456789 3.14159 1e-10",
    "<s>", "</s>", "<unk>", "a<s>b</s> c", "<|endoftext|>", "text<|endoftext|> more",
    "<|im_start|>user\nhi<|im_end|>", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "", " ", "\n", "\u200b zero\u200dwidth", "null\x00byte \x7f", "a" * 300, "Straße ﬁ ligature Ⅻ",
    "mixed 日本 and English 😀 text", "It's don't we'll they're .,!? ' s",
]

STYLES = ["gpt2", "llama3", "llama2", "mistral", "mistral_metaspace", "wordpiece"]


@pytest.fixture(scope="session")
def tok_dirs(tmp_path_factory):
    """{style: directory} written with transformers; built lazily and cached for the session."""
    root = tmp_path_factory.mktemp("tokenizers")
    makers = {
        "gpt2": lambda p: builders.build_gpt2_style(p),
        "llama3": lambda p: builders.build_llama3_style(p),
        "llama2": lambda p: builders.build_llama2_style(p),  # saved as LlamaTokenizer
        "mistral": lambda p: builders.build_llama2_style(p, tokenizer_class="PreTrainedTokenizerFast"),
        "mistral_metaspace": lambda p: builders.build_llama2_style(p, tokenizer_class="PreTrainedTokenizerFast",
                                                                   metaspace=True),
        "wordpiece": lambda p: builders.build_wordpiece_style(p),
    }
    class Dirs(dict):
        def __missing__(self, style):
            path = makers[style](root / style)
            self[style] = path
            return path

    return Dirs()


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A small byte-level BPE trained by llmkit (vocab 500), and the directory it was saved to."""
    from llmkit.tokenizer import Tokenizer

    tok = Tokenizer.train(builders.corpus(), vocab_size=500)
    path = tmp_path_factory.mktemp("trained") / "tok"
    tok.save(path)
    return tok, path


@pytest.fixture(scope="session")
def auto_tokenizer():
    """AutoTokenizer.from_pretrained, cached per directory."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cache = {}

    def load(path):
        key = str(path)
        if key not in cache:
            cache[key] = AutoTokenizer.from_pretrained(key)
        return cache[key]

    return load
