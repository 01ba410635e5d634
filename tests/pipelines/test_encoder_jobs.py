"""Encoder jobs end to end: masked-LM pretraining beats the most-frequent-token baseline, a
classifier fine-tuned with objective=classify beats the majority class, and both results are
Hugging Face directories transformers reads the same way."""

from __future__ import annotations

import functools
import json
import random

import pytest
import torch

import llmkit
from llmkit.pipelines.finetune import FinetuneRecipe, finetune
from llmkit.pipelines.pretrain import PretrainRecipe, pretrain
from llmkit.recipe import from_dict
from tests.peers import peer

transformers = peer("transformers")

WORDS = "amber birch cedar dune ember fjord grove heath inlet jade kelp larch marsh nook oak pine quay reef sage tarn"

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def _mlm_recipe(tmp_path, steps: int, **changes) -> PretrainRecipe:
    """Texts that each repeat one of 20 words: a masked word is its neighbours' word, which a model
    reading both sides learns and the most frequent word (~1/20) does not give."""
    words, rng = WORDS.split(), random.Random(0)
    tmp_path.mkdir(parents=True, exist_ok=True)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join([rng.choice(words)] * 40)}) + "\n" for _ in range(400)))
    d = {"model": {"preset": "tiny-bert", "overrides": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64}},
         "objective": "mlm",
         "data": {"sources": [{"path": str(corpus)}], "seq_len": 32, "vocab_size": 200, "tokenizer_kind": "wordpiece",
                  "val_fraction": 0.2, "clean": {"quality": False, "boilerplate": False},
                  "dedup": {"exact": False, "near": False}},
         "train": {"steps": steps, "micro_batch": 16, "lr": 3e-3, "warmup_steps": 5, "eval_every": 0, "save_every": 0},
         "out": str(tmp_path / "run")}
    d.update(changes)
    return from_dict(PretrainRecipe, d)


def test_masked_lm_pretraining_beats_the_most_frequent_token(tmp_path):
    summary = pretrain(_mlm_recipe(tmp_path, steps=120))
    m = summary["masked_lm"]
    print(f"masked-token accuracy {m['accuracy']:.3f} {m['ci']} vs baseline {m['baseline']['accuracy']:.3f}")
    assert m["n"] > 300
    assert m["ci"][0] > m["baseline"]["ci"][1], m  # beyond both confidence intervals
    assert m["beats_baseline"]
    # the run's model is a BertForMaskedLM transformers reads with the same logits
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "run" / "model").eval()
    ours = llmkit.load(tmp_path / "run").model
    ids = torch.tensor([[2, 10, 11, 4, 12, 3]])
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - ours(ids)).abs().max() < 1e-4


def test_objectives_refuse_the_wrong_kind_of_model(tmp_path, tiny_dir, tiny_bert_dir):
    with pytest.raises(ValueError, match="objective=causal with a bidirectional model"):
        pretrain(_mlm_recipe(tmp_path / "a", steps=1, objective="causal"))
    recipe = _mlm_recipe(tmp_path / "b", steps=1)
    recipe.model.preset = "tiny-llama"
    recipe.model.overrides = {}
    with pytest.raises(ValueError, match="objective=mlm with a causal model"):
        pretrain(recipe)
    sft = from_dict(FinetuneRecipe, {"model": str(tiny_bert_dir), "method": "full", "out": str(tmp_path / "c")})
    with pytest.raises(ValueError, match="is an encoder.*objective=classify"):
        finetune(sft)


def test_a_classifier_beats_the_majority_class_and_transformers_agrees(tmp_path, tiny_bert_dir):
    recipe = from_dict(FinetuneRecipe, {
        "model": str(tiny_bert_dir), "method": "full", "objective": "classify",
        "data": {"path": "builtin:sentiment"},
        "train": {"steps": 150, "lr": 1e-3, "eval_every": 0}, "out": str(tmp_path / "clf")})
    summary = finetune(recipe)
    c = summary["classify"]
    print(f"classifier accuracy {c['accuracy']:.3f} {c['ci']}, macro-F1 {c['macro_f1']:.3f}")
    assert c["n"] == 60 and c["majority"]["accuracy"] == pytest.approx(1 / 3)
    assert c["ci"][0] > c["majority"]["accuracy"], c  # the whole interval above the majority class
    assert c["macro_f1"] > 2 * c["majority"]["macro_f1"]
    llm = llmkit.load(tmp_path / "clf")  # the right kind of model: it classifies, embeds, and does not generate
    texts = ["Review: Awful. It broke on the first day and support never answered.\nSentiment:",
             "Review: Wonderful staff, spotless rooms, we will be back.\nSentiment:",
             "Review: " + "The room was fine and the staff were kind. " * 30 + "\nSentiment:"]  # > 128 tokens: cut
    labels = llm.classify(texts)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "clf" / "model").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "clf" / "model")
    with torch.no_grad():  # truncated as transformers truncates: [SEP] kept at the end
        logits = hf(**tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=128)).logits
    assert labels == [hf.config.id2label[i] for i in logits.argmax(-1).tolist()]
    assert torch.allclose(llm.classify_probs(texts), logits.softmax(-1), atol=1e-4)
    assert llm.embed(texts).shape == (3, 64)
    with pytest.raises(ValueError, match="encoder"):
        llm.generate("Review:")


class _Crash(Exception):
    pass


class _CrashAt:
    """A Trainer callback that stops the job right after checkpoint `step` is written."""

    def __init__(self, step: int):
        self.step = step

    def on_checkpoint(self, trainer, step, path):
        if step == self.step:
            raise _Crash


def _losses(run) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_masked_lm_runs_resume_exactly(tmp_path):
    """The masks are drawn from the RNG the checkpoint saves: a resumed run replays them."""
    def recipe(name, data_dir=None):
        r = _mlm_recipe(tmp_path / name, steps=6)
        r.train.save_every, r.data_dir = 3, data_dir
        return r

    pretrain(recipe("straight"))
    data = str(tmp_path / "straight" / "run" / "data")  # prepared once
    recipe = functools.partial(recipe, data_dir=data)
    with pytest.raises(_Crash):
        pretrain(recipe("crashed"), callbacks=[_CrashAt(3)])
    pretrain(recipe("crashed"), resume=True)
    straight, resumed = _losses(tmp_path / "straight" / "run"), _losses(tmp_path / "crashed" / "run")
    assert len(straight) == 6 and resumed[-3:] == straight[-3:]


@pytest.mark.slow
def test_the_bert_recipe_beats_its_baselines(tmp_path):
    """The README's encoder claims at full size: recipes/bert-mlm-tiny.yaml as shipped beats the
    most-frequent token, and a classifier fine-tuned from it beats the majority class on sentiment."""
    from llmkit.recipe import load_recipe

    run = tmp_path / "bert"
    summary = pretrain(load_recipe(PretrainRecipe, "recipes/bert-mlm-tiny.yaml", [f"out={run}"]))
    m = summary["masked_lm"]
    assert m["beats_baseline"], m
    clf = finetune(from_dict(FinetuneRecipe, {"model": str(run), "method": "full", "objective": "classify",
                                              "data": {"path": "builtin:sentiment"}, "out": str(tmp_path / "clf")}))
    c = clf["classify"]
    assert c["ci"][0] > c["majority"]["accuracy"], c
    print(f"masked-token accuracy {m['accuracy']:.3f} {m['ci']} vs {m['baseline']['accuracy']:.3f}; "
          f"classifier accuracy {c['accuracy']:.3f} {c['ci']}, macro-F1 {c['macro_f1']:.3f}")


def test_a_classifier_run_resumes_exactly(tmp_path, tiny_bert_dir):
    def recipe():
        return from_dict(FinetuneRecipe, {
            "model": str(tiny_bert_dir), "method": "full", "objective": "classify", "data": {"path": "builtin:sentiment"},
            "train": {"steps": 6, "save_every": 3, "eval_every": 0, "lr": 1e-3}, "out": str(tmp_path / name)})

    name = "straight"
    finetune(recipe())
    name = "crashed"
    with pytest.raises(_Crash):
        finetune(recipe(), callbacks=[_CrashAt(3)])
    summary = finetune(recipe(), resume=True)
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "crashed")
    assert len(straight) == 6 and resumed[-3:] == straight[-3:]
    assert summary["classify"]["n"] == 60
