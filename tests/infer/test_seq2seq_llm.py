"""An encoder-decoder through `LocalLLM` and the batching engine: sources encoded once, the engine's
outputs equal the static loop's (also across preemption), beams, scoring of a target given its
source (checked against the model's own teacher-forced logits), perplexity refused, and a too-long
source refused or truncated."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

import llmkit
from llmkit.infer.engine import Engine
from llmkit.infer.generate import ContextLengthError
from llmkit.infer.sampling import GenerationConfigError
from llmkit.infer.scoring import Seq2SeqScoringError

PROMPTS = ["def fib(n):", "import os\nprint(os.getcwd())", "x = 1"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


@pytest.fixture(scope="module")
def t5(tiny_t5_dir):
    return llmkit.load(tiny_t5_dir)


def test_engine_serves_t5_as_the_static_loop_generates(t5):
    local = t5.complete(PROMPTS, temperature=0, max_new_tokens=12)
    assert len({tuple(c.token_ids) for c in local}) == 3 and all(len(c.token_ids) == 12 for c in local)
    engine = Engine(t5, max_batch=2)
    served = engine.generate(PROMPTS, temperature=0, max_new_tokens=12)
    assert [c.token_ids for c in served] == [c.token_ids for c in local]
    assert [c.text for c in served] == [c.text for c in local]
    assert [c.prompt_tokens for c in served] == [len(t5.tokenize(p)) for p in PROMPTS]  # the sources
    # with a 64-token window the pool holds 64 decoder slots, not three 40-token outputs at once: the
    # newest request is preempted, and resumes reading the source it already encoded
    small = copy.copy(t5)
    small.model = copy.copy(t5.model)  # the same weights, a smaller context window for the engine's pool
    small.model.config = t5.config.replace(max_seq_len=64)
    long = t5.complete(PROMPTS, temperature=0, max_new_tokens=40)
    engine = Engine(small, max_batch=3, kv_cache_tokens=64, block_size=4)
    again = engine.generate(PROMPTS, temperature=0, max_new_tokens=40)
    assert engine.preemptions > 0
    assert [c.token_ids for c in again] == [c.token_ids for c in long]


def test_t5_beams_stream_and_refusals(t5):
    beams = t5.beams(PROMPTS[0], num_beams=4, max_new_tokens=8)
    assert 1 <= len(beams) <= 4
    best = t5.generate(PROMPTS[0], num_beams=4, max_new_tokens=8)
    assert best == beams[0].text and "".join(t5.stream(PROMPTS[0], num_beams=4, max_new_tokens=8)) == best
    with pytest.raises(ValueError, match="num_beams=4: the engine streams one output"):
        Engine(t5).submit(t5.tokenize(PROMPTS[0]), llmkit.GenerationConfig(num_beams=4))
    with pytest.raises(Seq2SeqScoringError, match="encoder-decoder: it scores a target given a source"):
        t5.loglikelihood_rolling(["some text"])


def test_t5_scores_a_target_given_its_source(t5):
    source, target = "def add(a, b):", " return a + b"
    (got,) = t5.loglikelihood([(source, target)])
    src, tgt = t5.tokenize(source), t5.tokenize(target.strip())
    assert tgt[-1] == t5.tokenizer.eos_token_id and got.n_tokens == len(tgt)  # the target ends as T5's do
    decoder = torch.tensor([[t5.config.decoder_start_token_id, *tgt[:-1]]])
    with torch.no_grad():
        logits = t5.model(decoder, encoder_input_ids=torch.tensor([src]))[0]
    expected = logits.log_softmax(-1)[torch.arange(len(tgt)), torch.tensor(tgt)].sum()
    assert abs(got.logprob - float(expected)) < 1e-4
    batch = t5.loglikelihood([(source, target), ("x", " y"), (source, " pass")])
    assert abs(batch[0].logprob - got.logprob) < 1e-4  # padding in a batch changes nothing


def test_a_source_longer_than_the_encoder_reads_is_refused_or_truncated(t5, caplog):
    long = " ".join(["value"] * 700)
    with pytest.raises(ContextLengthError, match=r"source 0 has \d+ tokens but the encoder reads at most 512"):
        t5.generate(long, max_new_tokens=4)
    with caplog.at_level(logging.WARNING):
        text = t5.generate(long, max_new_tokens=4, temperature=0, truncate_prompt=True)
    assert "keeping the first 512" in caplog.text
    head = t5.tokenize(long)[:511] + [t5.tokenizer.eos_token_id]
    assert text == t5.generate(t5.detokenize(head), max_new_tokens=4, temperature=0)


def test_beams_end_at_stop_strings_inside_the_search(t5):
    beams = t5.beams("import os", num_beams=6, max_new_tokens=12, stop=["e"])
    texts = [b.text for b in beams]
    assert len(set(texts)) == len(texts)  # each beam a different text, not one cut six ways
    for b in beams:
        assert "e" not in b.text
        if b.finish_reason == "stop":  # the stop string is completed by the beam's last token
            assert "e" in t5.detokenize(b.token_ids) and "e" not in t5.detokenize(b.token_ids[:-1])
    assert "stop" in {b.finish_reason for b in beams}


def test_beam_only_options_and_early_stopping_are_checked():
    with pytest.raises(GenerationConfigError, match="length_penalty=2.0 is invalid: it shapes beam search"):
        llmkit.GenerationConfig(length_penalty=2.0)
    with pytest.raises(GenerationConfigError, match="early_stopping=1 is invalid"):
        llmkit.GenerationConfig(num_beams=2, early_stopping=1)


def test_t5_trains_with_activation_checkpointing_as_without(t5):
    from llmkit.train.trainer import enable_activation_checkpointing

    src = torch.tensor([t5.tokenize("def add(a, b):")])
    labels = torch.tensor([t5.tokenize("return a + b")])
    decoder = torch.cat([torch.zeros(1, 1, dtype=torch.long), labels[:, :-1]], 1)
    grads = []
    for checkpointed in (False, True):
        model = type(t5.model)(t5.config)
        model.load_state_dict(t5.model.state_dict())
        if checkpointed:
            enable_activation_checkpointing(model)
        model.train()
        model(decoder, encoder_input_ids=src, labels=labels).backward()
        grads.append(model.model.layers[0].encoder_attn.k_proj.weight.grad)
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)


def test_the_engine_lets_go_of_finished_sources(t5):
    engine = Engine(t5, max_batch=4)
    engine.generate(PROMPTS, temperature=0, max_new_tokens=3)
    assert engine._memories.held is None and not engine.running
