"""`llmkit.load` and `LocalLLM`: generation, streaming, chat, scoring, saving."""

from __future__ import annotations

import pytest
import torch

import llmkit
from llmkit.infer import LLM, LocalLLM
from llmkit.models import ContextLengthError, Transformer, preset
from llmkit.models.resolve import ModelNotFoundError
from tests.conftest import TINY_PRESETS
from tests.peers import peer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


@pytest.fixture(scope="module")
def llm(tiny_dir):
    return llmkit.load(tiny_dir)


def _greedy_without_cache(model, ids: list[int], n: int) -> list[int]:
    """Reference: argmax of a full forward pass per step, no KV cache, no sampling code."""
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(ids):]


def test_load_gives_a_local_llm(llm):
    assert isinstance(llm, LocalLLM) and isinstance(llm, LLM)
    assert isinstance(llm.model, torch.nn.Module)
    assert llm.config.family == "llama"
    ids = torch.tensor([llm.tokenize("Hello world")])
    assert llm.model(ids).shape == (1, ids.shape[1], llm.config.vocab_size)


def test_greedy_generation_equals_reference(llm):
    prompt = "def fib(n):"
    out = llm.complete([prompt], max_new_tokens=20, temperature=0, ignore_eos=True)[0]
    expected = _greedy_without_cache(llm.model, llm.tokenize(prompt), 20)
    assert out.token_ids == expected and len(set(expected)) >= 8
    assert out.finish_reason == "length" and out.prompt_tokens == len(llm.tokenize(prompt))
    assert llm.generate(prompt, max_new_tokens=20, temperature=0, ignore_eos=True) == out.text
    assert out.text == llm.tokenizer.decode(expected, skip_special_tokens=True)


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_batched_prompts_of_different_lengths_equal_alone(tiny_dirs, name):
    llm = llmkit.load(tiny_dirs[name])
    prompts = ["import os", "class Foo(object):\n    def __init__(self, x, y):", "x", "return [i for i in"]
    kw = dict(max_new_tokens=24, temperature=0, ignore_eos=True)
    batched = llm.complete(prompts, **kw)
    assert all(len(set(c.token_ids)) >= 8 for c in batched), "degenerate outputs would hide masking bugs"
    for prompt, got in zip(prompts, batched):
        alone = llm.complete([prompt], **kw)[0]
        assert got.token_ids == alone.token_ids, (name, prompt)


def test_stream_concatenates_to_generate(llm):
    kw = dict(max_new_tokens=40, temperature=0.9, top_p=0.95, seed=7)
    pieces = list(llm.stream("for i in range(", **kw))
    assert "".join(pieces) == llm.generate("for i in range(", **kw)
    assert len(pieces) > 1


@pytest.fixture(scope="module")
def parrot(tiny_tokenizer):
    """A tiny model trained to recite one line holding emoji and CJK (split over byte tokens)."""
    text = "Hi 😀 世界 — naïve café 🎉 日本語 👨‍👩‍👧 end"
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    assert any("\ufffd" in tiny_tokenizer.decode([i]) for i in ids), "want tokens that split characters"
    torch.manual_seed(0)
    model = Transformer(preset("tiny-llama", vocab_size=tiny_tokenizer.vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.tensor([ids])
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1])[0], x[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return LocalLLM(model, tiny_tokenizer), text, ids


def test_stream_never_splits_a_character(parrot):
    llm, text, ids = parrot
    prompt = ids[:2]
    expected = llm.tokenizer.decode(ids[2:])
    pieces = list(llm.stream(prompt, max_new_tokens=len(ids) - 2, temperature=0))
    assert "".join(pieces) == expected  # the model recites the line
    assert any(ord(c) > 0xFFFF for c in expected) and "世界" in expected
    for piece in pieces:
        assert "\ufffd" not in piece
        piece.encode("utf-8")  # no lone surrogates


def test_stop_strings_and_stop_tokens(llm):
    kw = dict(max_new_tokens=30, temperature=0, ignore_eos=True)
    full = llm.complete(["import sys\n"], **kw)[0]
    assert len(full.text) > 6
    stop = full.text[3:6]
    cut = llm.complete(["import sys\n"], stop=[stop], **kw)[0]
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.finish_reason == "stop"
    assert "".join(llm.stream("import sys\n", stop=[stop], **kw)) == cut.text
    # a stop token id ends the row before it
    tok = full.token_ids[5]
    by_token = llm.complete(["import sys\n"], stop_token_ids=[tok], **kw)[0]
    assert by_token.token_ids == full.token_ids[: full.token_ids.index(tok)]
    assert by_token.finish_reason == "stop"


def test_seed_makes_sampling_reproducible(llm):
    kw = dict(max_new_tokens=30, temperature=1.0, ignore_eos=True)
    a = llm.complete(["x = "], seed=1, **kw)[0].token_ids
    assert a == llm.complete(["x = "], seed=1, **kw)[0].token_ids
    assert a != llm.complete(["x = "], seed=2, **kw)[0].token_ids


def test_logprobs_are_the_models(llm):
    prompt = llm.tokenize("while True:")
    out = llm.complete([prompt], max_new_tokens=6, temperature=0.8, seed=3, logprobs=True, top_logprobs=3,
                       ignore_eos=True)[0]
    seq = prompt + out.token_ids
    with torch.no_grad():
        logp = llm.model(torch.tensor([seq]))[0].log_softmax(-1)
    for i, tok in enumerate(out.token_ids):
        row = logp[len(prompt) - 1 + i]
        assert out.logprobs[i] == pytest.approx(row[tok].item(), abs=1e-4)
        best = row.topk(3)
        assert list(out.top_logprobs[i]) == best.indices.tolist()


def test_chat_uses_the_template(llm):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    rendered = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n")
    ids = llm.tokenizer.encode(rendered, add_special_tokens=False)
    kw = dict(max_new_tokens=15, temperature=0)
    assert llm.chat(messages, **kw) == llm.complete([ids], **kw)[0].text
    assert "".join(llm.chat(messages, stream=True, **kw)) == llm.chat(messages, **kw)


def test_loglikelihood(llm):
    pairs = [("def add(a, b):", " return a + b"), ("import", " os"), ("x", " = 1"), ("class A:", "\n    pass")]
    got = llm.loglikelihood(pairs)
    for (ctx, cont), res in zip(pairs, got):
        c, whole = llm.tokenize(ctx), llm.tokenize(ctx + cont)
        with torch.no_grad():
            logp = llm.model(torch.tensor([whole]))[0].log_softmax(-1)
        n = len(whole) - len(c)
        expected = sum(logp[len(c) - 1 + i, whole[len(c) + i]].item() for i in range(n))
        assert res.logprob == pytest.approx(expected, abs=1e-4) and res.n_tokens == n
    # batch composition does not change the numbers
    for one, many in zip(llm.loglikelihood(pairs, batch_size=1), got):
        assert one.logprob == pytest.approx(many.logprob, abs=1e-5)
    # the greedy continuation is recognised as greedy
    greedy = llm.complete(["import"], max_new_tokens=3, temperature=0, ignore_eos=True)[0]
    res = llm.loglikelihood_tokens([(llm.tokenize("import"), greedy.token_ids)])[0]
    assert res.is_greedy


def test_prompt_longer_than_context(tiny_tokenizer):
    llm = LocalLLM(Transformer(preset("tiny-llama", vocab_size=tiny_tokenizer.vocab_size, max_seq_len=32)),
                   tiny_tokenizer)
    prompt = list(range(3, 33))  # 30 tokens
    with pytest.raises(ContextLengthError, match="30 tokens"):
        llm.complete([prompt], max_new_tokens=5)
    out = llm.complete([prompt], max_new_tokens=5, temperature=0, truncate_prompt=True, ignore_eos=True)[0]
    assert out.prompt_tokens == 27 and len(out.token_ids) == 5


def test_save_loads_in_transformers(llm, tmp_path):
    transformers = peer("transformers")
    llm.save(tmp_path / "m")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "m")
    text = "def main():\n    print('hi')"
    ids = hf_tok(text)["input_ids"]
    assert ids == llm.tokenize(text)
    with torch.no_grad():
        assert (hf(torch.tensor([ids])).logits - llm.model(torch.tensor([ids]))).abs().max() <= 1e-4
    assert llmkit.load(tmp_path / "m").generate("x", max_new_tokens=8, temperature=0) == \
        llm.generate("x", max_new_tokens=8, temperature=0)


def test_resolver_finds_run_dirs_and_cache(tiny_dir, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "runs" / "r1"
    shutil.copytree(tiny_dir, run / "model")
    assert llmkit.load(run).config == llmkit.load(tiny_dir).config
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path / "home"))
    shutil.copytree(tiny_dir, tmp_path / "home" / "models" / "me--tiny")
    assert llmkit.resolve_model("me/tiny") == tmp_path / "home" / "models" / "me--tiny"
    with pytest.raises(ModelNotFoundError, match="'nobody/nothing' is neither a directory here nor in the model cache.*llmkit pull nobody/nothing"):
        llmkit.load("nobody/nothing")


def test_remote_and_gguf_names_get_clear_errors(tmp_path):
    remote = llmkit.load("http://127.0.0.1:9/v1", api_key="k")  # a client; nothing is contacted yet
    with pytest.raises(ConnectionError, match="cannot reach http://127.0.0.1:9/v1/models"):
        remote.chat([{"role": "user", "content": "hi"}])
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="m.gguf is truncated: 4 bytes"):
        llmkit.load(tmp_path / "m.gguf")


def test_unknown_generation_option(llm):
    with pytest.raises(ValueError, match="max_tokens"):
        llm.generate("x", max_tokens=3)


def test_loglikelihood_tokenises_like_lm_eval(llm):
    a, b = llm.loglikelihood([("The answer is", " yes"), ("The answer is ", "yes")])
    assert a == b  # trailing spaces move to the continuation
    empty = llm.loglikelihood([("", "hello world")])[0]
    start = llm.tokenizer.bos_token_id if llm.tokenizer.bos_token_id is not None else llm.tokenizer.eos_token_id
    cont = llm.tokenize("hello world", add_special_tokens=False)
    with torch.no_grad():
        logp = llm.model(torch.tensor([[start] + cont]))[0].log_softmax(-1)
    expected = sum(logp[i, t].item() for i, t in enumerate(cont))
    assert empty.logprob == pytest.approx(expected, abs=1e-4) and empty.n_tokens == len(cont)
    with pytest.raises(ValueError, match="does not fit the context window"):
        llm.loglikelihood_tokens([([1], list(range(5, 5 + llm.config.context_window + 1)))])


def test_stop_string_on_the_last_token_is_a_stop(llm):
    kw = dict(temperature=0, ignore_eos=True)
    full = llm.complete(["import sys\n"], max_new_tokens=12, **kw)[0]
    # from the 6th generated token on, the first whose text ends in a character not seen earlier
    n = next(n for n in range(6, 13) if llm.tokenizer.decode(full.token_ids[:n])[-1:] not in
             llm.tokenizer.decode(full.token_ids[:n - 1]))
    last_piece = llm.tokenizer.decode(full.token_ids[:n])[-1]
    cut = llm.complete(["import sys\n"], max_new_tokens=n, stop=[last_piece], **kw)[0]
    assert cut.finish_reason == "stop"


def test_bad_inputs_get_clear_errors(llm):
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        llm.complete([[1, llm.config.vocab_size + 5]], max_new_tokens=2)
    with pytest.raises(ValueError, match="no prompts"):
        llm.complete([], max_new_tokens=2)
    with pytest.raises(ValueError, match="temperature"):
        llm.generate("x", temperature="hot")
    out = llm.complete(["x"], max_new_tokens=2, top_logprobs=10_000, ignore_eos=True)[0]  # capped at the vocabulary
    assert len(out.top_logprobs[0]) == llm.config.vocab_size
    with pytest.raises(ValueError, match="context window"):
        llm.stream("x", max_new_tokens=llm.config.context_window)  # raises before the first delta


def test_fit_history_drops_oldest_turns_but_keeps_system(llm):
    system = {"role": "system", "content": "Be brief."}
    turns = []
    for i in range(40):
        turns += [{"role": "user", "content": f"question {i} " * 5}, {"role": "assistant", "content": f"answer {i} " * 5}]
    messages = [system] + turns + [{"role": "user", "content": "last one"}]
    kept = llm.fit_history(messages, max_new_tokens=64)
    assert kept[0] == system and kept[-1] == messages[-1]
    assert len(llm.chat_prompt(kept)) <= llm.config.context_window - 64 < len(llm.chat_prompt(messages))
    assert kept[1:] == messages[len(messages) - len(kept) + 1:]  # a suffix of the conversation


def test_rolling_perplexity_with_learned_positions_over_several_windows(tiny_dirs):
    """GPT-2's learned positions refuse any padded batch longer than the window: windows of
    different shapes must not be batched past it (they were, and raised)."""
    llm = llmkit.load(tiny_dirs["tiny-gpt2"])
    text = "def add(a, b):\n    return a + b\n" * 120
    assert len(llm.tokenize(text)) > 2 * llm.config.context_window
    batched, = llm.loglikelihood_rolling([text])
    alone, = llm.loglikelihood_rolling([text], batch_size=1)
    assert batched[1] == alone[1] and abs(batched[0] - alone[0]) < 1e-3 * abs(alone[0])
