"""BERT as a member of the one model: HF checkpoints in and out, logits equal to transformers'."""

from __future__ import annotations

import json

import pytest
import torch

from llmkit.models.classifier import Classifier, load_classifier, load_classifier_parts, save_classifier
from llmkit.models.config import ConfigError, preset
from llmkit.models.hf import CheckpointError, load_pretrained, save_pretrained
from llmkit.models.transformer import Transformer
from tests.peers import peer

transformers = peer("transformers")

TOL = 1e-4


def _hf_config(**kw):
    base = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                max_position_embeddings=64, type_vocab_size=2, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, pad_token_id=0)
    base.update(kw)
    return transformers.BertConfig(**base)


def _batch():
    """Two rows, the second right-padded, with sentence-B token types in the first."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 120, (2, 11), generator=g)
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0
    ids[1, 7:] = 0
    types = torch.zeros(2, 11, dtype=torch.long)
    types[0, 6:] = 1
    return ids, mask, types


def _real(x, mask):
    """Values at real (unpadded) positions: what padding queries give is nobody's business."""
    return x[mask.bool()]


@pytest.mark.parametrize("cls_name", ["BertModel", "BertForMaskedLM"])
def test_hf_bert_loads_with_the_same_outputs(tmp_path, cls_name):
    torch.manual_seed(1)
    hf = getattr(transformers, cls_name)(_hf_config()).eval()
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    ids, mask, types = _batch()
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        expected = out.last_hidden_state if cls_name == "BertModel" else out.logits
        got = ours(ids, attention_mask=mask, token_type_ids=types)
    assert ours.config.head == ("none" if cls_name == "BertModel" else "lm")
    assert ours.config.pooler == (cls_name == "BertModel")
    assert got.shape == expected.shape
    assert (_real(got, mask) - _real(expected, mask)).abs().max() < TOL
    if cls_name == "BertModel":  # the pooler, as BertModel's pooler_output reads it
        with torch.no_grad():
            pooled = torch.tanh(ours.model.pooler(got[:, 0]))
        assert (pooled - out.pooler_output).abs().max() < TOL


@pytest.mark.parametrize("head", ["lm", "none"])
def test_llmkit_bert_saves_what_transformers_reads(tmp_path, head):
    cfg = preset("tiny-bert", vocab_size=120, max_seq_len=64, head=head, pooler=head == "none")
    torch.manual_seed(2)
    ours = Transformer(cfg).eval()
    save_pretrained(ours, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == ["BertForMaskedLM" if head == "lm" else "BertModel"]
    auto = transformers.AutoModelForMaskedLM if head == "lm" else transformers.AutoModel
    hf = auto.from_pretrained(tmp_path).eval()
    ids, mask, types = _batch()
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        expected = out.logits if head == "lm" else out.last_hidden_state
        got = ours(ids, attention_mask=mask, token_type_ids=types)
    assert (_real(got, mask) - _real(expected, mask)).abs().max() < TOL
    back = load_pretrained(tmp_path)  # and our own reader gives the model back
    assert back.config == ours.config


@pytest.mark.parametrize("per_token", [False, True])
def test_bert_classifiers_match_transformers_both_ways(tmp_path, per_token):
    cls = transformers.BertForTokenClassification if per_token else transformers.BertForSequenceClassification
    torch.manual_seed(3)
    hf = cls(_hf_config(num_labels=3)).eval()
    hf.save_pretrained(tmp_path / "hf")
    clf = load_classifier(tmp_path / "hf")
    assert clf.per_token == per_token and clf.num_labels == 3
    _assert_same_logits(clf, hf, per_token)
    # ours out: a fresh head on the loaded body, written and read back by transformers
    fresh = Classifier(load_classifier_parts(tmp_path / "hf")[0], num_labels=2, per_token=per_token,
                       labels=["neg", "pos"], seed=4).eval()
    save_classifier(fresh, tmp_path / "ours")
    again = cls.from_pretrained(tmp_path / "ours").eval()
    assert again.config.id2label == {0: "neg", 1: "pos"}
    _assert_same_logits(fresh, again, per_token)


def _assert_same_logits(ours, hf, per_token: bool) -> None:
    """Our classifier's logits equal transformers' on `_batch()` (per token: at real positions)."""
    ids, mask, types = _batch()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours(ids, mask, types)
    if per_token:
        got, expected = _real(got, mask), _real(expected, mask)
    assert (got - expected).abs().max() < TOL


def test_unsupported_bert_variants_are_named(tmp_path):
    for arch, extra, needle in [("BertForNextSentencePrediction", {}, "BertForNextSentencePrediction.*BertForMaskedLM"),
                                ("BertModel", {"position_embedding_type": "relative_key"}, "'relative_key'.*absolute"),
                                ("BertModel", {"is_decoder": True}, "is_decoder.*BertForMaskedLM")]:
        _hf_config(architectures=[arch], **extra).save_pretrained(tmp_path)
        with pytest.raises(CheckpointError, match=needle):
            load_pretrained(tmp_path)
    transformers.RobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=48).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="'roberta' is not supported.*bert"):
        load_pretrained(tmp_path)


def test_encoder_configs_refuse_what_they_cannot_do():
    with pytest.raises(ConfigError, match="head="):
        preset("tiny-bert", head="classify")
    with pytest.raises(ConfigError, match="type_vocab_size"):
        preset("tiny-bert", type_vocab_size=-1)
    model = Transformer(preset("tiny-bert", head="none"))
    with pytest.raises(ValueError, match="no output head"):
        model(torch.tensor([[1, 2]]), labels=torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="token-type"):
        Transformer(preset("tiny-llama"))(torch.tensor([[1, 2]]), token_type_ids=torch.zeros(1, 2, dtype=torch.long))


def test_a_classifier_from_a_masked_lm_gets_a_pooler_transformers_reads(tmp_path):
    """BertForMaskedLM has no pooler; sequence classification reads one (as transformers adds one)."""
    torch.manual_seed(5)
    mlm = Transformer(preset("tiny-bert", vocab_size=120, max_seq_len=64)).eval()
    assert not mlm.config.pooler
    clf = Classifier(mlm, num_labels=2, seed=6).eval()
    assert clf.config.pooler and clf.model.pooler.weight.std() > 0
    save_classifier(clf, tmp_path)
    hf = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    ids, mask, types = _batch()
    with torch.no_grad():
        assert (clf(ids, mask, types) - hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits).abs().max() < TOL


def test_original_checkpoints_with_gamma_and_beta_load(tmp_path):
    """Google's BERT checkpoints (bert-base-uncased on the hub) name LayerNorm parameters gamma and
    beta; transformers reads them as weight and bias, and so does llmkit."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(7)
    hf = transformers.BertForMaskedLM(_hf_config()).eval()
    hf.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in tensors.items()}
    assert sum("gamma" in k for k in renamed) == 6  # embeddings, two per layer, the MLM head
    save_file(renamed, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    ids, mask, types = _batch()
    with torch.no_grad():
        expected = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()(
            input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = load_pretrained(tmp_path)(ids, attention_mask=mask, token_type_ids=types)
    assert (_real(got, mask) - _real(expected, mask)).abs().max() < TOL
