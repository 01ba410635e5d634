"""Generation with an encoder-decoder and beam search, against transformers: greedy T5 outputs on a
padded batch, the cross-attention keys/values projected once per source, and beam search equal to
transformers' ``num_beams`` search (sequences and scores) on T5 and on a Llama decoder, over beam
sizes, length penalties and early-stopping modes."""

from __future__ import annotations

import pytest
import torch

from llmkit.infer.beam import beam_search
from llmkit.infer.generate import TokenGeneration
from llmkit.infer.sampling import GenerationConfig, GenerationConfigError
from llmkit.models.hf import load_pretrained, save_pretrained
from tests.peers import peer

transformers = peer("transformers")

EOS = 37  # a token these random weights often choose, so that beams end both ways

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def _spread(model):
    """Random weights wide enough that greedy and beam outputs vary from token to token."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def t5_pair(tmp_path_factory):
    torch.manual_seed(0)
    # transformers 5.25 sizes T5's generation cache by num_layers: the decoder has as many layers
    config = transformers.T5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                                   num_heads=4, feed_forward_proj="gated-gelu", decoder_start_token_id=0,
                                   eos_token_id=EOS, pad_token_id=0, dropout_rate=0.0)
    hf = _spread(transformers.T5ForConditionalGeneration(config))
    path = tmp_path_factory.mktemp("t5")
    hf.save_pretrained(path)
    return hf, load_pretrained(path).eval()


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, eos_token_id=3, pad_token_id=0,
                                      bos_token_id=2)
    hf = transformers.LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(path)
    return hf, load_pretrained(path).eval()


def test_greedy_t5_generation_equals_transformers_on_a_padded_batch(t5_pair, tmp_path):
    hf, ours = t5_pair
    g = torch.Generator().manual_seed(3)
    src = torch.randint(2, 50, (3, 9), generator=g)
    mask = torch.ones_like(src)
    for row, n in ((1, 5), (2, 7)):
        mask[row, n:], src[row, n:] = 0, 0
    expected = hf.generate(input_ids=src, attention_mask=mask, max_new_tokens=15, do_sample=False)[:, 1:]
    calls = []
    layer = ours.model.layers[0].encoder_attn.k_proj
    handle = layer.register_forward_hook(lambda *a: calls.append(1))
    try:
        run = TokenGeneration(ours, [src[i][mask[i].bool()].tolist() for i in range(3)],
                              GenerationConfig(max_new_tokens=15, temperature=0), {EOS}, 0)
        for _ in run:
            pass
    finally:
        handle.remove()
    # transformers keeps the end token and pads what follows with the pad token
    got = [g + [EOS] * (why == "stop") for g, why in zip(run.generated, run.finish_reasons)]
    got = [g + [0] * (15 - len(g)) for g in got]
    assert run.finish_reasons.count("stop") == 2
    assert len(set(map(tuple, expected.tolist()))) == 3 and got == expected.tolist()
    assert len(calls) == 1  # the source's cross-attention keys/values: once, not once per step
    save_pretrained(ours, tmp_path / "ours")  # and the other way: what llmkit writes generates the same there
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    assert torch.equal(back.generate(input_ids=src, attention_mask=mask, max_new_tokens=15, do_sample=False),
                       hf.generate(input_ids=src, attention_mask=mask, max_new_tokens=15, do_sample=False))


def _compare_beams(hf, ours, prompt: torch.Tensor, prefix: int, eos: int, cases) -> tuple[list, set[str]]:
    """Run every (num_beams, length_penalty, early_stopping) case both ways; return the cases whose
    sequences or scores differ, and how the beams ended (so the cases are known to exercise end
    tokens and the budget)."""
    differ, endings = [], set()
    for beams, penalty, early in cases:
        out = hf.generate(prompt, num_beams=beams, max_new_tokens=10, length_penalty=penalty, early_stopping=early,
                          num_return_sequences=beams, output_scores=True, return_dict_in_generate=True,
                          do_sample=False)
        gen = GenerationConfig(max_new_tokens=10, num_beams=beams, length_penalty=penalty, early_stopping=early)
        found = beam_search(ours, prompt[0].tolist(), gen, {eos}, 0)
        width = out.sequences.shape[1] - prefix
        # transformers fills what follows a finished beam with the end token (its pad id is 0, falsy)
        ours_seqs = [b.token_ids + [eos] * (width - len(b.token_ids)) for b in found]
        scores = torch.tensor([b.score for b in found])
        if ours_seqs != out.sequences[:, prefix:].tolist() or scores.shape != out.sequences_scores.shape \
                or not torch.allclose(scores, out.sequences_scores, atol=1e-5):
            differ.append((beams, penalty, early, ours_seqs, out.sequences[:, prefix:].tolist()))
        endings |= {b.finish_reason for b in found}
    return differ, endings


CASES = [(2, 1.0, False), (3, 0.0, True), (4, 2.0, "never"), (4, -1.0, False), (5, 1.0, "never")]


def test_beam_search_equals_transformers_on_t5(t5_pair):
    hf, ours = t5_pair
    both = False
    for seed in range(2):
        src = torch.randint(2, 50, (1, 7), generator=torch.Generator().manual_seed(seed))
        differ, ended = _compare_beams(hf, ours, src, 1, EOS, CASES)
        assert differ == []
        both = both or ended == {"stop", "length"}
    assert both  # for one source, some beams ended on </s> and some at the token budget


def test_beam_search_equals_transformers_on_a_decoder(llama_pair):
    hf, ours = llama_pair
    for seed in range(2):
        prompt = torch.randint(4, 40, (1, 5), generator=torch.Generator().manual_seed(seed))
        differ, endings = _compare_beams(hf, ours, prompt, 5, 3, CASES)
        assert differ == [] and endings


def test_beam_search_refuses_contradicting_sampling_options():
    with pytest.raises(GenerationConfigError, match=r"top_p=0.9 .*beam search \(num_beams=4\) is deterministic"):
        GenerationConfig(num_beams=4, top_p=0.9)
    with pytest.raises(GenerationConfigError, match="temperature=0.7"):
        GenerationConfig(num_beams=2, temperature=0.7)
    with pytest.raises(GenerationConfigError, match="early_stopping"):
        GenerationConfig(num_beams=2, early_stopping="sometimes")
    assert GenerationConfig(num_beams=3, temperature=0).num_beams == 3
