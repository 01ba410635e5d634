"""LoRA on BERT encoders and classifiers, in PEFT's file format: targets named our way (q_proj,
down_proj, …) are saved under BERT's names (query, output.dense, …), PEFT on the transformers
model computes what llmkit computes, and PEFT's own BERT adapters load here."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmkit.models.classifier import Classifier
from llmkit.models.hf import load_pretrained
from llmkit.peft import AdapterError, apply_lora, load_adapter, save_adapter
from tests.peers import peer

transformers = peer("transformers")
peft = peer("peft")

TOL = 1e-4
VOCAB = 120

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def _hf_config(**kw):
    return transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=48, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0, pad_token_id=0, **kw)


@pytest.fixture(scope="module")
def bert_dirs(tmp_path_factory):
    """A random BertModel and BertForMaskedLM on disk, with biases and norms away from 0 and 1."""
    out = {}
    for i, cls in enumerate(("BertModel", "BertForMaskedLM")):
        torch.manual_seed(i)
        model = getattr(transformers, cls)(_hf_config())
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("bias") or "LayerNorm" in n:
                    p.normal_(0.0 if n.endswith("bias") else 1.0, 0.1)
        out[cls] = tmp_path_factory.mktemp(cls)
        model.save_pretrained(out[cls])
    return out


def _inputs():
    """Two rows, the second right-padded: the padding must not leak into the comparison."""
    ids = torch.randint(1, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    return ids, mask


def _randomise(params, seed, std=0.2):
    """Trained-looking weights: LoRA's B starts at zero, which would make every comparison trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * std)


def _hf(cls, path, **kw):
    return getattr(transformers, cls).from_pretrained(path, **kw).eval()


def _output(cls, out):
    return out.last_hidden_state if cls == "BertModel" else out.logits


@pytest.mark.parametrize("cls", ["BertModel", "BertForMaskedLM"])
def test_llmkit_lora_on_bert_loads_in_peft(bert_dirs, cls, tmp_path):
    path = bert_dirs[cls]
    ours = load_pretrained(path)
    # down_proj without o_proj: BERT's "output.dense" would also catch "attention.output.dense"
    apply_lora(ours, r=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"])
    _randomise([p for p in ours.parameters() if p.requires_grad], seed=1)
    save_adapter(ours, tmp_path / "adapter", base_model=str(path))

    conf = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert conf["target_modules"] == ["layer.0.output.dense", "layer.1.output.dense", "query", "value"]
    keys = set(load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    body = "" if cls == "BertModel" else "bert."  # transformers' task models keep the body under bert.
    assert f"base_model.model.{body}encoder.layer.1.attention.self.query.lora_A.weight" in keys
    assert f"base_model.model.{body}encoder.layer.0.output.dense.lora_B.weight" in keys
    assert len(keys) == 2 * 3 * 2  # A and B, three modules, two layers: nothing else

    ids, mask = _inputs()
    real = mask.bool()
    with torch.no_grad():
        got = ours(ids, attention_mask=mask)[real]
        base = _output(cls, _hf(cls, path)(input_ids=ids, attention_mask=mask))[real]
        theirs = peft.PeftModel.from_pretrained(_hf(cls, path), tmp_path / "adapter").eval()
        expected = _output(cls, theirs(input_ids=ids, attention_mask=mask))[real]
    assert (got - base).abs().max() > 1e-2  # the adapter changes the output
    assert (got - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("cls", ["BertModel", "BertForMaskedLM"])
def test_peft_lora_on_bert_loads_in_llmkit(bert_dirs, cls, tmp_path):
    path = bert_dirs[cls]
    cfg = peft.LoraConfig(r=4, lora_alpha=12, target_modules=["query", "key", "intermediate.dense", "output.dense"],
                          rank_pattern={"key": 2})
    theirs = peft.get_peft_model(_hf(cls, path), cfg)
    _randomise([p for n, p in theirs.named_parameters() if "lora_" in n], seed=2)
    theirs.save_pretrained(tmp_path / "peft")
    ours = load_pretrained(path)
    assert load_adapter(ours, tmp_path / "peft") == "lora"
    lora_paths = {n.removesuffix(".lora_A.default") for n, _ in ours.named_modules() if n.endswith("lora_A.default")}
    assert lora_paths == {f"model.layers.{i}.{m}" for i in range(2) for m in
                          ("self_attn.q_proj", "self_attn.k_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj")}
    ids, mask = _inputs()
    real = mask.bool()
    with torch.no_grad():
        expected = _output(cls, theirs.eval()(input_ids=ids, attention_mask=mask))[real]
        assert (ours(ids, attention_mask=mask)[real] - expected).abs().max().item() <= TOL
    # and back out: our file of their adapter (two ranks: rank_pattern) loads in PEFT to the same outputs
    save_adapter(ours, tmp_path / "again")
    again = peft.PeftModel.from_pretrained(_hf(cls, path), tmp_path / "again").eval()
    with torch.no_grad():
        assert (_output(cls, again(input_ids=ids, attention_mask=mask))[real] - expected).abs().max().item() <= TOL


def test_classifier_lora_round_trips_with_peft_seq_cls(bert_dirs, tmp_path):
    path = bert_dirs["BertModel"]
    clf = Classifier(load_pretrained(path), num_labels=3, labels=["positive", "negative", "neutral"])
    apply_lora(clf, r=4, alpha=8, targets=["q_proj", "v_proj"])
    _randomise([p for p in clf.parameters() if p.requires_grad] + list(clf.score.parameters()), seed=3, std=0.5)
    save_adapter(clf, tmp_path / "clf")
    conf = json.loads((tmp_path / "clf" / "adapter_config.json").read_text())
    assert conf["task_type"] == "SEQ_CLS" and conf["target_modules"] == ["query", "value"]
    assert conf["modules_to_save"] == ["classifier", "pooler"]  # the head is new: it goes with the adapter
    ids, mask = _inputs()
    with torch.no_grad():
        got = clf(ids, mask)
        theirs = peft.PeftModel.from_pretrained(
            _hf("BertForSequenceClassification", path, num_labels=3), tmp_path / "clf").eval()
        assert got.abs().max() > 0.1
        assert (got - theirs(input_ids=ids, attention_mask=mask).logits).abs().max().item() <= TOL

    # PEFT's own SEQ_CLS adapter (its classifier head in modules_to_save) into a fresh classifier
    made = peft.get_peft_model(_hf("BertForSequenceClassification", path, num_labels=3),
                               peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS"))
    _randomise([p for p in made.parameters() if p.requires_grad], seed=4, std=0.5)
    made.save_pretrained(tmp_path / "peft")
    fresh = Classifier(load_pretrained(path), num_labels=3)
    load_adapter(fresh, tmp_path / "peft")
    with torch.no_grad():
        assert (fresh(ids, mask) - made.eval()(input_ids=ids, attention_mask=mask).logits).abs().max().item() <= TOL

    # a head for three labels does not fit a two-label classifier
    with pytest.raises(AdapterError, match=r"classifier\.weight has shape \[3, 32\].*another set of labels"):
        load_adapter(Classifier(load_pretrained(path), num_labels=2), tmp_path / "peft")

    # a saved module we do not have (DistilBERT's pre_classifier, with its tensors) is refused, by name; PEFT 0.22
    # lists that name in every SEQ_CLS config, so the name alone (no tensors) is read past, as above
    odd = tmp_path / "odd"
    shutil.copytree(tmp_path / "peft", odd)
    tensors = load_file(odd / "adapter_model.safetensors")
    tensors["base_model.model.pre_classifier.weight"] = torch.zeros(32, 32)
    save_file(tensors, odd / "adapter_model.safetensors")
    conf = json.loads((odd / "adapter_config.json").read_text())
    conf["modules_to_save"] = sorted(set(conf["modules_to_save"] or []) | {"pre_classifier"})
    (odd / "adapter_config.json").write_text(json.dumps(conf))
    with pytest.raises(AdapterError, match=r"modules_to_save \['pre_classifier'\] are not supported on a classifier"):
        load_adapter(Classifier(load_pretrained(path), num_labels=3), odd)
