"""guarded() is an LLM: anything in the project can sit behind it, a real local model included."""

from __future__ import annotations

import llmkit
from llmkit.apps.production import guarded
from llmkit.infer.llm import LLM


def test_guarded_is_an_llm_and_answers_as_the_model_it_wraps(tiny_dir, tmp_path):
    model = llmkit.load(tiny_dir)
    llm = guarded(model, cache="exact", budget={"session_tokens": 10_000}, log=tmp_path / "calls.jsonl")
    assert isinstance(llm, LLM) and llm.context_window == model.context_window
    opts = {"max_new_tokens": 6, "temperature": 0}
    assert llm.generate("def main", **opts) == model.generate("def main", **opts)
    assert "".join(llm.stream("def main", **opts)) == model.generate("def main", **opts)
    chat = [{"role": "user", "content": "hello"}]
    assert llm.chat(chat, **opts) == model.chat(chat, **opts)
    assert "".join(llm.chat(chat, stream=True, **opts)) == model.chat(chat, **opts)
    assert llm.generate(["a", "b"], **opts) == model.generate(["a", "b"], **opts)
    # counted with the model's own tokenizer
    rows = llm.log.rows()
    assert rows[0]["prompt_tokens"] == len(model.tokenize("def main"))
    text = model.generate("def main", **opts)
    assert rows[0]["completion_tokens"] == len(model.tokenize(text, add_special_tokens=False))
    assert llm.budget.used_tokens == sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)
    assert [r["cache_hit"] for r in rows][:2] == [None, "exact"]  # the stream was served from the cache
