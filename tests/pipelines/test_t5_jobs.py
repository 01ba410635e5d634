"""T5 end to end through the one job runner: span-corruption pretraining with llmkit's own T5
Unigram tokenizer learns, and the run's model and tokenizer are what transformers reads."""

from __future__ import annotations

import json

import pytest
import torch

import llmkit
from llmkit.pipelines.pretrain import PretrainRecipe, pretrain
from llmkit.recipe import from_dict
from tests.peers import peer

transformers = peer("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def test_span_corruption_pretraining_learns_and_saves_a_t5(tmp_path):
    recipe = from_dict(PretrainRecipe, {
        "model": {"preset": "tiny-t5", "overrides": {"dim": 32, "n_layers": 1, "n_encoder_layers": 1, "n_heads": 2,
                                                     "hidden_dim": 64}},
        "objective": "span",
        "data": {"sources": [{"path": "stdlib", "max_bytes": 150_000}], "seq_len": 64, "vocab_size": 400,
                 "tokenizer_kind": "unigram", "val_fraction": 0.1},
        "train": {"steps": 40, "micro_batch": 8, "lr": 3e-3, "warmup_steps": 4, "eval_every": 20, "save_every": 0},
        "out": str(tmp_path / "run")})
    pretrain(recipe)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = next(r["loss"] for r in rows if "loss" in r)  # step 1: the untrained model
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(val) == 2 and val[-1] < val[0] < first - 1.0, (first, val)  # held-out spans predicted better
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "run" / "model").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "run" / "model")
    ours = llmkit.load(tmp_path / "run")
    text = "def add(a, b): <extra_id_0> a + b"
    ids = tok(text, return_tensors="pt").input_ids
    assert ids[0].tolist() == ours.tokenize(text) and ids[0, -1] == tok.eos_token_id
    assert ours.tokenizer.sentinel_ids[0] == tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1
    decoder = torch.tensor([[0, 5, 6, 7]])
    with torch.no_grad():
        assert (hf(input_ids=ids, decoder_input_ids=decoder).logits - ours.model(decoder, encoder_input_ids=ids)) \
            .abs().max() < 1e-4


def test_span_corruption_needs_an_encoder_decoder_and_sentinels(tmp_path):
    with pytest.raises(ValueError, match="objective=span .* is for encoder-decoders"):
        pretrain(from_dict(PretrainRecipe, {"model": {"preset": "tiny-llama"}, "objective": "span",
                                            "out": str(tmp_path / "a")}))
    with pytest.raises(ValueError, match="an encoder-decoder trains with objective=span"):
        pretrain(from_dict(PretrainRecipe, {"model": {"preset": "tiny-t5"}, "out": str(tmp_path / "b")}))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before any work


@pytest.mark.parametrize("job", ["dpo", "reward", "grpo"])
def test_decoder_only_jobs_refuse_an_encoder_decoder_before_any_work(tiny_t5_dir, tmp_path, job):
    from llmkit.pipelines import dpo, reward, rl

    run, cls, section, name = {
        "dpo": (dpo.dpo, dpo.DPORecipe, {"data": {"path": "builtin:arith"}}, "DPO"),
        "reward": (reward.reward, reward.RewardRecipe, {"data": {"path": "builtin:arith"}}, "reward modelling"),
        "grpo": (rl.grpo, rl.GRPORecipe, {"prompts": {"path": "builtin:arith"}, "reward": "builtin"}, "GRPO"),
    }[job]
    with pytest.raises(ValueError, match=f"{name} does not train encoder-decoders, and .* is one"):
        run(from_dict(cls, {"model": str(tiny_t5_dir), **section, "out": str(tmp_path / job)}))
    assert not (tmp_path / job).exists()


def test_the_alignment_recipe_refuses_an_encoder_decoder_before_its_sft_stage(tiny_t5_dir, tmp_path):
    from llmkit.pipelines.align import align_recipe

    with pytest.raises(ValueError, match="alignment stages do not train encoder-decoders"):
        align_recipe(str(tiny_t5_dir), out=tmp_path / "align", stages=("sft", "rm"))
    assert not (tmp_path / "align").exists()
