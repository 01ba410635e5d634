"""Fixtures of the data room's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.helpers import make_docs, write_docs


@pytest.fixture(scope="session")
def small_tokenizer():
    """A 300-token byte-level BPE (eos <|endoftext|>) trained on synthetic text."""
    from llmkit.tokenizer import Tokenizer

    return Tokenizer.train(make_docs(30, seed=99), vocab_size=300)


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A folder of 30 distinct text documents."""
    return write_docs(tmp_path / "corpus", make_docs(30))

