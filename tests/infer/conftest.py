"""Models shared by the speculative decoding tests (`llmkit generate --draft` and the engine's)."""

from __future__ import annotations

import pytest

import llmkit


@pytest.fixture(scope="session")
def target(tiny_dirs):
    return llmkit.load(tiny_dirs["tiny-llama"])


@pytest.fixture(scope="session")
def draft(target, tmp_path_factory):
    """A one-layer random model with the target's tokenizer: a draft that is often wrong."""
    from llmkit.pipelines.init import init_model

    path = tmp_path_factory.mktemp("draft") / "d"
    init_model("tiny-llama", path, tokenizer=target.tokenizer, seed=1, init_std=0.3, n_layers=1)
    return llmkit.load(path)
