"""Several LoRA adapters on one base, served side by side: the `model` field picks the adapter,
requests of different adapters share the engine's batch, and each gets what the model computes
locally with that adapter alone."""

from __future__ import annotations

import pytest
import torch

import llmkit
from llmkit.infer import GenerationConfig
from tests.peers import peer
from tests.serve.conftest import Running

openai = peer("openai")
PROMPT = "def main():"


@pytest.fixture(scope="module")
def adapter_dirs(tiny_dirs, tmp_path_factory):
    from llmkit.peft import apply_lora, save_adapter

    root = tmp_path_factory.mktemp("adapters")
    dirs = {}
    for i, name in enumerate(("sql", "poet")):
        llm = llmkit.load(tiny_dirs["tiny-llama"])
        apply_lora(llm.model, r=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"])
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for n, p in llm.model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        dirs[name] = save_adapter(llm.model, root / name)
    return dirs


def reference(tiny_dirs, adapter_dir, prompt_ids, n):
    from llmkit.pipelines.adapters import load_with_adapters

    llm = load_with_adapters(str(tiny_dirs["tiny-llama"]), [str(adapter_dir)] if adapter_dir else [])
    return llm.complete([prompt_ids], max_new_tokens=n, temperature=0, ignore_eos=True)[0]


def test_adapters_share_a_batch_and_match_local(tiny_dirs, adapter_dirs):
    from llmkit.pipelines.adapters import load_with_adapters
    from llmkit.serve import create_app, with_adapters

    llm = load_with_adapters(str(tiny_dirs["tiny-llama"]), [f"{k}={v}" for k, v in adapter_dirs.items()])
    served = with_adapters("tiny", llm, list(adapter_dirs), max_batch=8, block_size=4)
    assert [s.name for s in served] == ["tiny", "tiny:sql", "tiny:poet"]
    ids = llm.tokenize(PROMPT)
    want = {None: reference(tiny_dirs, None, ids, 16), **{k: reference(tiny_dirs, v, ids, 16)
                                                         for k, v in adapter_dirs.items()}}
    assert len({tuple(c.token_ids) for c in want.values()}) == 3  # the adapters really differ

    engine = served[0].engine  # one engine, one batch, three adapters
    reqs = {a: engine.submit(ids, GenerationConfig(max_new_tokens=16, temperature=0, ignore_eos=True), adapter=a)
            for a in (None, "sql", "poet")}
    sizes = []
    while engine.has_work():
        engine.step()
        sizes.append(engine.batch_size)
    assert max(sizes) == 3
    assert {a: r.generated for a, r in reqs.items()} == {a: c.token_ids for a, c in want.items()}

    with Running(create_app(served)) as running:  # and through the API, by model name
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="k", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny", "tiny:sql", "tiny:poet"]
        for model, adapter in (("tiny", None), ("tiny:sql", "sql"), ("tiny:poet", "poet")):
            r = client.completions.create(model=model, prompt=ids, max_tokens=16, temperature=0,
                                          extra_body={"ignore_eos": True})
            assert r.choices[0].text == want[adapter].text, model
