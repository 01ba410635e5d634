"""Reward models: transformers' *ForSequenceClassification loads what llmkit saves and computes
the same rewards; `llmkit align reward` learns to rank held-out pairs."""

from __future__ import annotations

import json

import pytest
import torch

import llmkit
from llmkit.align.prefs import builtin_preferences, collate_pairs, encode_pairs
from llmkit.align.reward import RewardModel, load_reward_model, save_reward_model
from llmkit.cli.main import main
from llmkit.infer.llm import EncoderError
from llmkit.models.hf import CheckpointError, load_pretrained
from tests.align.test_dpo import write_pairs
from tests.peers import peer

transformers = peer("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_transformers_computes_the_same_rewards(tiny_dirs, tmp_path, preset):
    llm = llmkit.load(tiny_dirs[preset])
    rm = RewardModel(load_pretrained(tiny_dirs[preset]), seed=1).eval()
    save_reward_model(rm, tmp_path / "rm", llm.tokenizer)
    examples, _ = encode_pairs(llm.tokenizer, builtin_preferences("dev", ["arith"])[:4], 120)
    batch = collate_pairs(examples, pad_id=0, full=True)  # right padding of different lengths
    assert batch["attention_mask"].sum(-1).unique().numel() > 1
    assert not (batch["input_ids"][batch["attention_mask"].bool()] == 0).any()  # pad id only in padding
    with torch.no_grad():
        ours = rm(batch["input_ids"], batch["attention_mask"])
        hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
        theirs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        back = load_reward_model(tmp_path / "rm")(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(back, ours, rtol=0, atol=0)
    assert ours.std() > 1e-3  # different sequences, different rewards
    with pytest.raises(CheckpointError, match="load_reward_model"):
        load_pretrained(tmp_path / "rm")  # not a language model
    llm = llmkit.load(tmp_path / "rm")  # a classifier with one label, which cannot generate
    assert llm.classifier.num_labels == 1 and not llm.generates
    with pytest.raises(EncoderError, match="classification model"):
        llm.generate("hi")


def test_align_reward_learns_to_rank_held_out_pairs(tiny_dirs, tmp_path, capsys):
    # a random tiny model cannot do arithmetic, but it can learn to prefer the bare answer over
    # the rambling one: held-out "concise" pairs (dev split, other questions) it must rank right
    train = write_pairs(tmp_path / "train.jsonl", builtin_preferences("train", ["arith"])[:320])
    val = write_pairs(tmp_path / "val.jsonl", builtin_preferences("dev", ["arith"], kinds=["concise"])[:60])
    out = tmp_path / "rm"
    assert main(["align", "reward", "--model", str(tiny_dirs["tiny-llama"]), "--data", str(train),
                 f"data.val_path={val}", "--out", str(out), "train.steps=30", "train.lr=1e-3",
                 "train.eval_every=0"]) == 0
    assert "held-out pairs: chosen ranked first" in capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    assert s["preferences"]["accuracy"] > 0.95 and s["preferences"]["accuracy"] > s["preferences_before"]["accuracy"]
    assert s["preferences"]["loss"] < 0.2 < s["preferences_before"]["loss"]
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert "reward/margin" in steps[-2] or "reward/margin" in steps[-1]
    rm = load_reward_model(out / "model")
    tok = llmkit.load(tiny_dirs["tiny-llama"]).tokenizer
    short, long = rm.score_texts(tok, [("What is 2 + 2?", "4"),
                                       ("What is 2 + 2?", "Well, let me think about this carefully. 4, I believe.")])
    assert short > long


def test_align_reward_with_lora(tiny_dirs, tmp_path):
    train = write_pairs(tmp_path / "train.jsonl", builtin_preferences("train", ["arith"])[:64])
    out = tmp_path / "rm"
    assert main(["align", "reward", "--model", str(tiny_dirs["tiny-llama"]), "--data", str(train), "--method", "lora",
                 "--out", str(out), "train.steps=5", "train.eval_every=0"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["trainable"]["percent"] < 50
    assert load_reward_model(out / "model").score.weight.shape == (1, 64)
