"""Speculative decoding behind the API: a model served with prompt lookup answers concurrent requests with
the text the same model gives without it, and /metrics reports the draft acceptance rate."""

from __future__ import annotations

import concurrent.futures
import urllib.request

import pytest

from tests.serve.conftest import Running
from tests.serve.test_bad_input import post

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py

PROMPTS = ["name: Ada\ncity: Paris\nname: Ada\ncity:", "import os\nimport sys\nimport os\nimport",
           "a b c a b c a b", "x = [1, 2, 3]\ny = [1, 2, 3]\nz = [1, 2,"]


@pytest.fixture(scope="module")
def servers(tiny_dirs, tmp_path_factory):
    import llmkit
    from llmkit.pipelines.init import init_model
    from llmkit.serve import ServedModel, create_app

    tok = llmkit.load(tiny_dirs["tiny-llama"]).tokenizer
    # the usual small init repeats itself: text that prompt lookup can draft
    llm = init_model("tiny-llama", tmp_path_factory.mktemp("spec") / "m", tokenizer=tok, seed=0)
    app = create_app([ServedModel("plain", llm, engine_options={"max_batch": 4, "block_size": 8}),
                      ServedModel("spec", llm, engine_options={"max_batch": 4, "block_size": 8,
                                                               "speculative": "prompt-lookup", "speculative_k": 4})])
    with Running(app) as running:
        running.app = app
        yield running


def test_served_prompt_lookup_keeps_the_text_and_reports_its_acceptance_rate(servers):
    def complete(model, prompt):
        code, body = post(servers.url, {"model": model, "prompt": prompt, "max_tokens": 24, "temperature": 0},
                          path="/v1/completions")
        assert code == 200, body
        return body["choices"][0]["text"]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # in one running batch
        spec = list(pool.map(lambda p: complete("spec", p), PROMPTS))
    assert spec == [complete("plain", p) for p in PROMPTS]
    engine = servers.app.state.server.models["spec"].engine
    assert engine.speculation.proposed > 0 and engine.speculation.accepted > 0
    text = urllib.request.urlopen(servers.url + "/metrics", timeout=30).read().decode()
    rate = next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("llmkit_draft_acceptance_rate"))
    assert rate == pytest.approx(engine.speculation.accepted / engine.speculation.proposed, abs=1e-6)
