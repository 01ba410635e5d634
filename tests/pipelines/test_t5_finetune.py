"""Fine-tuning an encoder-decoder (T5) through the one finetune job: prompt/completion pairs become
source and target; a tiny T5 learns the built-in sorting task beyond the copy-the-input baseline
on held-out questions, and `evaluate` asks it as it was trained (the task prompt as its source);
a LoRA's saved adapter loads back in llmkit, and in PEFT on transformers' T5 with the same logits;
what does not apply to an encoder-decoder is refused before any work."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import llmkit
from llmkit.data.corpus import stdlib_texts
from llmkit.data.instruct import collate_pairs, encode_pairs
from llmkit.data.tasks import load_task
from llmkit.models.config import preset
from llmkit.models.hf import save_pretrained
from llmkit.models.transformer import Transformer
from llmkit.pipelines.finetune import FinetuneRecipe, finetune
from llmkit.recipe import from_dict
from llmkit.tokenizer import Tokenizer
from tests.peers import peer

RECIPE = Path(__file__).parents[2] / "recipes" / "t5-sft-tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def llmkit_cli(*args: str, threads: str = "1", timeout: int = 600) -> None:
    """Run `llmkit ARGS` on one thread by default (a tiny model's steps gain nothing from more, and
    lose much when other work shares the cores)."""
    r = subprocess.run([sys.executable, "-m", "llmkit", *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "OMP_NUM_THREADS": threads})
    assert r.returncode == 0, r.stderr[-3000:]


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of hits / n (written out here, apart from llmkit's)."""
    p = hits / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A random tiny T5 with a T5 Unigram tokenizer trained on the built-in arith and sorting
    questions and some standard-library text: the numbers 0-99 become single pieces (a small model
    learns to order 100 tokens much sooner than numbers spelt in digits) and the question's words
    whole ones (a short source: twice the training steps in the same time)."""
    path = tmp_path_factory.mktemp("t5")
    texts = [ex.prompt + " " + ex.answer for task in ("sorting", "arith") for ex in load_task(task, "train")]
    tok = Tokenizer.train(texts + list(stdlib_texts(100_000)), vocab_size=600, kind="unigram")
    assert len(tok.encode("56", add_special_tokens=False)) == 1 and len(tok.encode(texts[0])) < 30  # its purpose
    cfg = preset("tiny-t5", dim=64, n_layers=2, n_encoder_layers=2, n_heads=4, hidden_dim=192,
                 vocab_size=tok.vocab_size, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                 decoder_start_token_id=tok.padding_id, max_seq_len=128)
    torch.manual_seed(0)
    save_pretrained(Transformer(cfg), path)
    tok.save(path)
    return path


# two rows whose sources differ in length, so that a batch of them pads one
ROWS = [[{"role": "user", "content": "Sort these numbers in ascending order: 9 2 40 17 3 88\nAnswer:"},
         {"role": "assistant", "content": "2 3 9 17 40 88"}],
        [{"role": "user", "content": "Question: What is 3 + 4?\nAnswer:"}, {"role": "assistant", "content": "7"}]]


def test_pairs_become_sources_targets_and_shifted_decoder_inputs(t5_dir):
    tok = llmkit.load(t5_dir).tokenizer
    rows = ROWS
    examples, dropped = encode_pairs(tok, rows, max_len=64)
    start, eos, pad = 0, tok.eos_token_id, tok.padding_id
    batch = collate_pairs(examples, pad_id=pad, start_id=start)
    assert dropped == 0 and set(batch) == {"encoder_input_ids", "encoder_attention_mask", "input_ids", "labels"}
    for r, (user, assistant) in enumerate(rows):
        source = tok.encode(user["content"])  # what generation encodes: T5 appends </s>
        target = tok.encode(assistant["content"], add_special_tokens=False) + [eos]
        assert source[-1] == eos
        n, m = len(source), len(target)
        assert batch["encoder_input_ids"][r, :n].tolist() == source
        assert batch["encoder_attention_mask"][r].tolist() == [1] * n + [0] * (batch["encoder_input_ids"].shape[1] - n)
        assert (batch["encoder_input_ids"][r, n:] == pad).all()
        assert batch["labels"][r, :m].tolist() == target and (batch["labels"][r, m:] == -100).all()
        assert batch["input_ids"][r, :m].tolist() == [start] + target[:-1]


def test_a_padded_batch_loses_what_each_pair_scores_alone(t5_dir):
    from llmkit.train.objectives import Seq2SeqLM

    llm = llmkit.load(t5_dir)
    tok = llm.tokenizer
    examples, _ = encode_pairs(tok, ROWS, max_len=64)
    assert len({len(e.source) for e in examples}) == 2  # the shorter source is padded in the batch
    batch = collate_pairs(examples, pad_id=tok.padding_id, start_id=0)
    with torch.no_grad():
        loss, _ = Seq2SeqLM().loss(llm.model, batch)
    alone = [llm.loglikelihood_tokens([(e.source.tolist(), e.target.tolist())])[0] for e in examples]
    expected = -sum(s.logprob for s in alone) / sum(s.n_tokens for s in alone)
    assert abs(float(loss) - expected) < 1e-5


def test_each_assistant_turn_is_a_target_given_the_source_chat_would_give(t5_dir):
    llm = llmkit.load(t5_dir)
    chat = [{"role": "system", "content": "Sort."}, {"role": "user", "content": "3 1"},
            {"role": "assistant", "content": "1 3"}, {"role": "user", "content": "9 4 7"},
            {"role": "assistant", "content": "4 7 9"}]
    examples, _ = encode_pairs(llm.tokenizer, [chat], max_len=64)
    assert len(examples) == 2
    for example, turn in zip(examples, (2, 4)):
        assert example.source.tolist() == llm.chat_prompt(chat[:turn])  # the turns, one per line, without a template
        assert llm.detokenize(example.target) == chat[turn]["content"]


def test_sources_match_chat_with_a_template_and_long_rows_are_fitted_not_cut(t5_dir):
    llm = llmkit.load(t5_dir)
    tok = llm.tokenizer
    from llmkit.tokenizer.chat import DEFAULT_CHAT_TEMPLATE

    tok.chat_template = DEFAULT_CHAT_TEMPLATE  # (a copy: llmkit.load gives each caller its own tokenizer)
    chat = [{"role": "user", "content": "once upon a time " * 60}, {"role": "assistant", "content": "1 3"},
            {"role": "user", "content": "9 4 7"}, {"role": "assistant", "content": "4 7 9"}]
    examples, dropped = encode_pairs(tok, [chat], max_len=100)
    assert len(llm.chat_prompt(chat[:3])) > 100 >= len(llm.chat_prompt(chat[2:3]))
    # the oldest exchange went first, as chat fits a history
    assert dropped == 0 and examples[1].source.tolist() == llm.chat_prompt(chat[2:3])
    assert len(examples[0].source) == 100 and examples[0].source[-1] == tok.eos_token_id  # first tokens and </s>
    long = [{"role": "user", "content": "count"}, {"role": "assistant", "content": " ".join(map(str, range(150)))}]
    kept, dropped = encode_pairs(tok, [long, chat[2:]], max_len=100)
    assert dropped == 1 and len(kept) == 1  # a target cut short would teach the model to stop mid-answer


def count_sorted(examples) -> int:
    """How many sorting questions give their numbers already in ascending order: exactly those the
    copy-the-input baseline (the given numbers, in the given order) answers right."""
    given = [[int(x) for x in ex.prompt.split(":")[1].split("\n")[0].split()] for ex in examples]
    return sum(nums == sorted(nums) for nums in given)


def test_a_fine_tuned_t5_sorts_beyond_copying_its_input(t5_dir, tmp_path):
    from llmkit.eval.runner import evaluate

    out = tmp_path / "sft"
    # recipes/t5-sft-tiny.yaml (full fine-tuning on 30000 fresh sorting questions) made short for a
    # model trained from scratch; eval.perplexity=true: skipped for an encoder-decoder, not an error
    llmkit_cli("finetune", "--config", str(RECIPE), "--model", str(t5_dir), "--out", str(out), "eval.limit=100",
               "eval.perplexity=true", "train.steps=1000", "train.lr=3e-3", "train.warmup_steps=20",
               "train.eval_every=0", "train.device=cpu", "train.precision=fp32")
    summary = json.loads((out / "summary.json").read_text())
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses[-1] < losses[0] / 3, (losses[0], losses[-1])

    test = load_task("sorting", "test")[:100]
    llm = llmkit.load(out)
    outputs = llm.generate([ex.prompt for ex in test], max_new_tokens=24, temperature=0)
    hits, copied = sum(o.strip() == ex.answer for o, ex in zip(outputs, test)), count_sorted(test)
    low, _ = wilson(hits, len(test))
    _, high = wilson(copied, len(test))
    assert low > high, (hits, copied, list(zip(outputs, [ex.answer for ex in test]))[:5])

    # the job's held-out score and baseline: the same questions asked as plain sources
    after, base = summary["after"]["sorting"], summary["baselines"]["sorting"]
    assert abs(after["value"] - hits / len(test)) <= 0.03 and base["copy"] == copied / len(test)
    assert "perplexity" not in summary["after"]
    assert "copy input" in (out / "report.md").read_text()

    run = evaluate(llm, ["sorting"], limit=100, batch_size=32)
    rec = run.tasks["sorting"]
    assert [s["prompt"] for s in rec.samples] == [ex.prompt for ex in test]  # zero-shot, no chat wrapping
    assert abs(rec.value - hits / len(test)) <= 0.03
    copy = rec.baselines["copy"]
    assert copy["exact_match"] == copied / len(test) and copy["ci"] == pytest.approx(wilson(copied, len(test)))


@pytest.mark.parametrize("setting, error", [
    ({"data": {"path": "builtin:sorting", "packing": True}},
     r"data.packing=true .* encoder-decoder.*data.packing=false"),
    ({"method": "prefix", "data": {"path": "builtin:sorting"}}, r"method=prefix is not supported .* encoder-decoder"),
    ({"method": "prompt", "data": {"path": "builtin:sorting"}}, r"method=prompt is not supported .* encoder-decoder"),
    ({"method": "lora", "lora": {"train_embeddings": True}, "data": {"path": "builtin:sorting"}},
     r"lora.train_embeddings=true: an encoder-decoder's shared embeddings"),
    ({"objective": "classify", "data": {"path": "builtin:sentiment"}},
     r"objective=classify does not train encoder-decoders"),
])
def test_what_does_not_apply_to_an_encoder_decoder_is_refused(t5_dir, tmp_path, setting, error):
    recipe = from_dict(FinetuneRecipe, {"model": str(t5_dir), "out": str(tmp_path / "run"), **setting})
    with pytest.raises(ValueError, match=error):
        finetune(recipe)
    assert not (tmp_path / "run").exists()  # refused before any work


def test_an_encoder_decoder_is_not_scored_on_perplexity_nor_chat_wrapped_without_a_template(t5_dir):
    from llmkit.eval.runner import evaluate

    llm = llmkit.load(t5_dir)
    with pytest.raises(ValueError, match="encoder-decoder.*perplexity tasks out"):
        evaluate(llm, ["sorting", "perplexity"])
    with pytest.raises(ValueError, match="--chat: .* without a chat template"):
        evaluate(llm, ["sorting"], chat=True)


@pytest.fixture(scope="module")
def lora_run(t5_dir, tmp_path_factory):
    """`llmkit finetune --method lora` on prompt/completion rows of a JSONL file (six steps: run in
    this process, where starting an interpreter and importing PyTorch would be most of the work)."""
    from llmkit.cli.main import main

    root = tmp_path_factory.mktemp("lora")
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": ex.prompt, "completion": ex.answer}) + "\n"
                            for ex in load_task("sorting", "train")[:64]))
    assert main(["finetune", "--model", str(t5_dir), "--data", str(data), "--method", "lora", "--out",
                 str(root / "run"), "lora.targets=[q_proj,v_proj,down_proj]", "train.steps=6", "train.lr=3e-2",
                 "train.micro_batch=8", "train.eval_every=0", "eval.perplexity=false", "train.device=cpu"]) == 0
    return root / "run"


def _logits(model, tokenizer):
    """Logits of two padded sources, each with a decoder input starting from the pad token."""
    sources = [tokenizer.encode("Sort these numbers in ascending order: 5 3 9\nAnswer:"), tokenizer.encode("7 1")]
    src = torch.zeros(2, len(sources[0]), dtype=torch.long)
    mask = torch.zeros_like(src)
    for r, s in enumerate(sources):
        src[r, :len(s)], mask[r, :len(s)] = torch.tensor(s), 1
    dec = torch.tensor([[0] + tokenizer.encode("3 5 9", add_special_tokens=False)] * 2)
    return src, mask, dec


def test_a_t5_lora_adapter_loads_back_in_llmkit(t5_dir, lora_run):
    conf = json.loads((lora_run / "adapter" / "adapter_config.json").read_text())
    assert conf["task_type"] == "SEQ_2_SEQ_LM"
    tuned = llmkit.load_with_adapters(str(t5_dir), [str(lora_run / "adapter")])
    merged, base = llmkit.load(lora_run), llmkit.load(t5_dir)
    src, mask, dec = _logits(base.model, base.tokenizer)
    with torch.no_grad():
        got = [m.model(dec, encoder_input_ids=src, encoder_attention_mask=mask) for m in (tuned, merged, base)]
    assert (got[0] - got[1]).abs().max() < 1e-4  # the adapter on the base computes the saved merged model
    assert (got[0] - got[2]).abs().max() > 1e-3  # and it changed the model


def test_a_t5_lora_adapter_computes_the_same_in_peft(t5_dir, lora_run):
    transformers, peft = peer("transformers"), peer("peft")
    tuned = llmkit.load_with_adapters(str(t5_dir), [str(lora_run / "adapter")])
    hf = peft.PeftModel.from_pretrained(transformers.T5ForConditionalGeneration.from_pretrained(t5_dir),
                                        lora_run / "adapter").eval()
    src, mask, dec = _logits(tuned.model, tuned.tokenizer)
    with torch.no_grad():
        ours = tuned.model(dec, encoder_input_ids=src, encoder_attention_mask=mask)
        theirs = hf(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits
    assert (ours - theirs).abs().max() < 1e-4


@pytest.mark.slow
def test_the_shipped_t5_recipes_pretrain_then_sort_beyond_copying(tmp_path):
    """The full-size proof: recipes/t5-span-tiny.yaml then recipes/t5-sft-tiny.yaml as shipped (but
    for their output folders), scored on the whole test split."""
    span, sft = tmp_path / "t5", tmp_path / "t5-sft"
    cores = str(os.cpu_count() or 1)
    llmkit_cli("pretrain", "--config", str(RECIPE.parent / "t5-span-tiny.yaml"), "--out", str(span), threads=cores,
               timeout=1800)
    llmkit_cli("finetune", "--config", str(RECIPE), "--model", str(span), "--out", str(sft), threads=cores,
               timeout=3600)
    test = load_task("sorting", "test")
    outputs = llmkit.load(sft).generate([ex.prompt for ex in test], max_new_tokens=32, temperature=0)
    hits, copied = sum(o.strip() == ex.answer for o, ex in zip(outputs, test)), count_sorted(test)
    low, _ = wilson(hits, len(test))
    _, high = wilson(copied, len(test))
    print(f"sorting test split: exact match {hits}/{len(test)}, Wilson low {low:.3f}; copy {copied}/{len(test)}, "
          f"Wilson high {high:.3f}")
    assert low > high
