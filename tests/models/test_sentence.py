"""`llmkit.models.sentence`: a sentence-transformers directory's files read as an `EmbeddingSpec`,
and `pool` checked against sentence-transformers itself: its Pooling module on random hidden
states (every mode, with padding), and its `encode` on the real all-MiniLM-L6-v2, first from
transformers' BertModel hidden states, then end to end through `llmkit.load(...).embed`."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from llmkit.models.sentence import (POOLING_MODES, EmbeddingSpec, EmbeddingSpecError, pool, read_embedding_spec,
                                    truncate_ids, write_embedding_spec)
from llmkit.models.texts import pad_right
from tests.peers import peer

# short, non-ASCII, empty, and longer than MiniLM's 256 tokens (cut, its [SEP] kept)
SENTENCES = ["A man is eating food.", "Ünïcödé façade — naïve café in Zürich; 東京は大きい。", "",
             " ".join(["Retrieval stands on embeddings that keep their meaning."] * 40), "ok"]


def st_dir(tmp_path, modules, pooling=None, bert=None):
    """A sentence-transformers directory's own files (no weights: the spec does not read them)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    if pooling is not None:
        (tmp_path / "1_Pooling").mkdir()
        (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    if bert is not None:
        (tmp_path / "sentence_bert_config.json").write_text(json.dumps(bert))
    return tmp_path


def st_pooling(config: dict):
    """sentence-transformers' own Pooling module, made from a Pooling config.json's keys."""
    peer("sentence_transformers")
    try:  # sentence-transformers 5+; older versions keep it in .models
        from sentence_transformers.sentence_transformer.modules import Pooling
    except ImportError:
        from sentence_transformers.models import Pooling
    with warnings.catch_warnings():  # 5+ calls the pooling_mode_* keys of older files deprecated, and reads them
        warnings.simplefilter("ignore", FutureWarning)
        return Pooling(**config)


TRANSFORMER = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
POOLING = {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
NORMALIZE = {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}


# ------------------------------------------------------------------------------ the files
def test_minilm_files_give_mean_pooling_normalised_256_tokens(minilm):
    assert read_embedding_spec(minilm.path) == EmbeddingSpec(("mean",), normalize=True, max_seq_length=256)


def test_a_plain_model_directory_has_no_spec(tiny_dir):
    assert read_embedding_spec(tiny_dir) is None


def test_pooling_modes_old_and_new_spellings(tmp_path):
    legacy = {"word_embedding_dimension": 8, "pooling_mode_cls_token": True, "pooling_mode_max_tokens": True,
              "pooling_mode_mean_tokens": False}
    spec = read_embedding_spec(st_dir(tmp_path / "a", [TRANSFORMER, POOLING], legacy, {"max_seq_length": 128,
                                                                                       "do_lower_case": True}))
    assert spec == EmbeddingSpec(("cls", "max"), normalize=False, max_seq_length=128, lowercase=True)
    # sentence-transformers 5 writes one `pooling_mode` and newer module paths
    newer = dict(POOLING, type="sentence_transformers.sentence_transformer.modules.pooling.Pooling")
    spec = read_embedding_spec(st_dir(tmp_path / "b", [TRANSFORMER, newer, NORMALIZE], {"pooling_mode": "lasttoken"}))
    assert spec == EmbeddingSpec(("lasttoken",), normalize=True, max_seq_length=None)


def test_unsupported_modules_and_modes_are_named(tmp_path):
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    with pytest.raises(EmbeddingSpecError, match=r"'sentence_transformers\.models\.Dense'.*Transformer, Pooling, "
                                                 r"Normalize modules only"):
        read_embedding_spec(st_dir(tmp_path / "a", [TRANSFORMER, POOLING, dense], {"pooling_mode_mean_tokens": True}))
    with pytest.raises(EmbeddingSpecError, match="pooling mode 'weightedmean' is not supported"):
        read_embedding_spec(st_dir(tmp_path / "b", [TRANSFORMER, POOLING], {"pooling_mode_weightedmean_tokens": True}))
    with pytest.raises(EmbeddingSpecError, match=r"1_Pooling/config\.json is missing"):
        read_embedding_spec(st_dir(tmp_path / "c", [TRANSFORMER, POOLING]))
    elsewhere = dict(TRANSFORMER, path="0_Transformer")
    with pytest.raises(EmbeddingSpecError, match="lives in .*0_Transformer"):
        read_embedding_spec(st_dir(tmp_path / "d", [elsewhere, POOLING], {"pooling_mode": "mean"}))


def test_written_files_read_back_and_sentence_transformers_reads_them(tmp_path):
    spec = EmbeddingSpec(("cls", "mean"), normalize=True, max_seq_length=64)
    write_embedding_spec(tmp_path, spec, dim=8)
    assert read_embedding_spec(tmp_path) == spec
    module = st_pooling(json.loads((tmp_path / "1_Pooling" / "config.json").read_text()))
    assert module.pooling_output_dimension == 16  # two modes of 8, concatenated


# -------------------------------------------------------------------------------- pooling
def test_padding_never_counts(tmp_path):
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])  # right and left padding
    hidden[mask == 0] = 1e4  # padding that counted would dominate every mode
    rows = [hidden[0, :3], hidden[1, 1:]]
    want = {"mean": [r.mean(0) for r in rows], "max": [r.max(0).values for r in rows], "cls": [r[0] for r in rows],
            "lasttoken": [r[-1] for r in rows], "mean_sqrt_len_tokens": [r.sum(0) / len(r) ** 0.5 for r in rows]}
    for mode in POOLING_MODES:
        got = pool(hidden, mask, EmbeddingSpec((mode,)))
        assert torch.allclose(got, torch.stack(want[mode]), atol=1e-5), mode
    both = pool(hidden, mask, EmbeddingSpec(("cls", "mean"), normalize=True))
    assert both.shape == (2, 8) and torch.allclose(both.norm(dim=-1), torch.ones(2))
    assert torch.allclose(both, torch.nn.functional.normalize(torch.cat([torch.stack(want["cls"]),
                                                                         torch.stack(want["mean"])], -1), dim=-1))


@pytest.mark.parametrize("modes", [("mean",), ("max",), ("cls",), ("lasttoken",), ("mean_sqrt_len_tokens",),
                                   ("cls", "max", "mean")])
def test_pool_equals_sentence_transformers_pooling_module(modes, tmp_path):
    torch.manual_seed(1)
    hidden = torch.randn(3, 7, 6)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])  # right padding, as both tokenizers pad
    write_embedding_spec(tmp_path, EmbeddingSpec(modes), dim=6)  # the files' spelling, which every version reads
    module = st_pooling(json.loads((tmp_path / "1_Pooling" / "config.json").read_text()))
    want = module({"token_embeddings": hidden, "attention_mask": mask})["sentence_embedding"]
    assert torch.allclose(pool(hidden, mask, EmbeddingSpec(modes)), want, atol=1e-6)


def test_truncation_keeps_the_special_tokens_around_the_text():
    cls, sep = 101, 102
    assert truncate_ids([cls, 1, 2, 3, 4, 5, sep], [1, 2, 3, 4, 5], 4) == [cls, 1, 2, sep]
    assert truncate_ids([9, 1, 2, 3], [1, 2, 3], 3) == [9, 1, 2]  # a bos only
    assert truncate_ids([1, 2, 3], [1, 2, 3], 2) == [1, 2]


# --------------------------------------------------------------------- real all-MiniLM-L6-v2
@pytest.fixture(scope="module")
def st_minilm(minilm):
    st = peer("sentence_transformers")
    return st.SentenceTransformer(str(minilm.path), device="cpu")


def test_pool_of_bert_hidden_states_equals_sentence_transformers(minilm, st_minilm):
    """transformers' BertModel computes the hidden states; `pool` must turn them into exactly the
    vectors sentence-transformers' `encode` gives (so a mismatch end to end is the model's)."""
    transformers = peer("transformers")
    bert = transformers.BertModel.from_pretrained(str(minilm.path)).eval()
    features = st_minilm.tokenize(SENTENCES)  # padded, cut at 256 as encode does
    assert features["input_ids"].shape[1] == 256
    with torch.no_grad():
        hidden = bert(input_ids=features["input_ids"], attention_mask=features["attention_mask"]).last_hidden_state
    got = pool(hidden, features["attention_mask"], read_embedding_spec(minilm.path)).numpy()
    want = st_minilm.encode(SENTENCES, convert_to_numpy=True)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_llmkit_embeds_minilm_as_sentence_transformers_does(minilm, st_minilm, caplog):
    """End to end: llmkit's BERT, tokenizer, truncation and pooling against `encode`."""
    import llmkit

    llm = llmkit.load(minilm.path)
    assert not llm.config.causal and llm.embedding_dim == 384
    got = llm.embed(SENTENCES, batch_size=2, precision="fp32")
    want = st_minilm.encode(SENTENCES, convert_to_numpy=True)
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.9999, cosine
    assert [r.message for r in caplog.records if "were cut" in r.message] == [
        f"1 of {len(SENTENCES)} texts were longer than the 256 tokens all-minilm-l6-v2 embeds and were cut to that "
        f"(the longest had {len(llm.tokenize(SENTENCES[3]))})"]


def test_real_minilm_hidden_states_equal_transformers_bert(minilm):
    """llmkit's BERT on the real all-MiniLM-L6-v2 weights: last hidden states equal transformers'
    BertModel's at every real position of a padded batch (≤ 1e-4)."""
    import llmkit

    transformers = peer("transformers")
    hf = transformers.BertModel.from_pretrained(minilm.path).eval()
    llm = llmkit.load(minilm.path)
    rows = [llm.tokenize(t) for t in SENTENCES[:4]]
    ids, mask = pad_right([r[:256] for r in rows], llm.tokenizer.padding_id)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = llm.model.hidden_states(ids, mask)
    real = mask.bool()
    assert (got[real] - want[real]).abs().max() < 1e-4
