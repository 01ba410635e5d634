"""The README's learning claims, each checked on a tiny model in the default suite: fine-tuning
learns a held-out task, and DPO, PPO and GRPO each gain over the SFT model they start from.

Every claim is one check (`claim_check`: the paired bootstrap 95% interval of the per-item change
on held-out items, `llmkit.eval.runner.score_change`, must lie above 0) applied twice: to a real
run, which must pass it, and to a negative control run through the same job and the same check,
which must fail it -- a learning rate so small that the weights stay bit for bit what they were
(train.lr=0 means "the method's default", so it cannot be spelled), or the preferences flipped.
Held-out items are never training items (checked). The per-item scores are measured here, with
the model's own log-likelihoods or greedy answers, not read from the job's summary:

1. fine-tuning (full, on arith's train split) from a random tiny model: the log-likelihood of
   each held-out (test split) question's answer (the answers' form and digits; that the model
   learns the arithmetic itself is the slow test's to show);
2. DPO from that SFT model (arith train pairs): on held-out (dev split) pairs, the policy's
   log-probability margin of the chosen answer over the rejected one;
3. PPO and 4. GRPO from that SFT model, with a reward a tiny model can learn quickly
   (`even_digits`): the reward of the greedy answer to each held-out (test split) prompt. Two
   controls each: no learning (the tiny learning rate), and training on the reward negated, which
   must come out a regression.

The full-size proofs stay `slow`: tests/train/test_finetune.py::
test_lora_on_the_quickstart_model_learns_a_held_out_task and tests/pipelines/test_align_recipe.py::
test_aligned_models_beat_sft_on_held_out_arithmetic. LEARNING_CLAIMS_SEED (default 0) sets every
run's train.seed, to check the claims across seeds (the README gives the figures).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import llmkit
from llmkit.align.prefs import Pair, builtin_preferences
from llmkit.align.prompts import Prompt, builtin_prompts
from llmkit.data.instruct import builtin_instructions
from llmkit.eval.runner import score_change
from llmkit.recipe import load_recipe

SEED = int(os.environ.get("LEARNING_CLAIMS_SEED", "0"))
# train.lr=0 is "the method's default": this is the control's "learning rate 0". AdamW's step is
# then ~1e-29, under the rounding of every weight; each control checks its weights are unchanged
NO_LR = "1e-30"
COMMON = ["train.precision=fp32", "train.device=cpu", f"train.seed={SEED}", "eval.tasks=[]"]

# the reward functions PPO and GRPO import by name (module:function)
sys.modules.setdefault("learning_claims_rewards", sys.modules[__name__])


def even_digits(prompts, completions, references):
    """Even digits minus odd digits, per character of the completion: a reward a tiny model learns
    in a few dozen steps. The SFT model's answers (numbers) score around 0, in the middle of the
    range, so that a run that does not learn has no floor to drift up from (with the share of spaces,
    at 0 for every SFT answer, PPO with its advantages negated still "gained" +0.04 [+0.02, +0.06])."""
    return [(sum(ch in "02468" for ch in c) - sum(ch in "13579" for ch in c)) / max(1, len(c)) for c in completions]


def odd_digits(prompts, completions, references):
    """`even_digits` negated: the reward of the control that learns the wrong thing."""
    return [-r for r in even_digits(prompts, completions, references)]


# ------------------------------------------------------------------------------- the one check
@dataclass
class Change:
    delta: float  # mean per-item change, after minus before
    ci: tuple[float, float]
    verdict: str

    def __str__(self) -> str:
        return f"{self.delta:+.4f} [{self.ci[0]:+.4f}, {self.ci[1]:+.4f}] {self.verdict}"


def claim_check(before: dict[str, float], after: dict[str, float]) -> Change:
    """The change of per-item scores on the same held-out items, with its paired bootstrap interval."""
    assert before.keys() == after.keys() and len(before) >= 50
    ci, verdict, paired = score_change(before, after, higher_is_better=True, seed=SEED)
    assert paired
    return Change(sum(after[k] - before[k] for k in before) / len(before), ci, verdict)


def passes(change: Change) -> bool:
    return change.verdict == "improvement" and change.ci[0] > 0


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------------------- held-out scores
def answer_loglik(model: Path, rows: list[list[dict]]) -> dict[str, float]:
    """log p(reference answer | chat prompt) of each conversation's last (assistant) turn."""
    llm = llmkit.load(model)
    pairs = [(llm.chat_prompt(m[:-1]), llm.tokenize(m[-1]["content"], add_special_tokens=False)) for m in rows]
    return {f"{i}": r.logprob for i, r in enumerate(llm.loglikelihood_tokens(pairs))}


def pair_margins(model: Path, pairs: list[Pair]) -> dict[str, float]:
    """log p(chosen) - log p(rejected) of each pair, both given its chat prompt."""
    llm = llmkit.load(model)
    requests = []
    for p in pairs:
        context = llm.chat_prompt([{"role": r, "content": c} for r, c in p.prompt])
        requests += [(context, llm.tokenize(answer, add_special_tokens=False)) for answer in (p.chosen, p.rejected)]
    scores = [r.logprob for r in llm.loglikelihood_tokens(requests)]
    return {f"{i}": scores[2 * i] - scores[2 * i + 1] for i in range(len(pairs))}


RL_NEW_TOKENS = 8


def greedy_reward(model: Path, prompts: list[Prompt]) -> dict[str, float]:
    """The reward of the greedy answer to each prompt."""
    llm = llmkit.load(model)
    done = llm.complete([llm.chat_prompt(p.as_messages()) for p in prompts], max_new_tokens=RL_NEW_TOKENS,
                        temperature=0)
    return {f"{i}": r for i, r in enumerate(even_digits(None, [c.text for c in done], None))}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these models are tiny, and on a busy 2-core machine two threads wait on
    each other (5x slower here), as the subprocess tests' OMP_NUM_THREADS=1 avoids too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("claims")


SFT_TRAIN = builtin_instructions("train", ["arith"])[:800]
SFT_HELD_OUT = builtin_instructions("test", ["arith"])[:100]


def finetune(base: Path, data: Path, out: Path, lr: str) -> Path:
    recipe = load_recipe(llmkit.FinetuneRecipe, None, [
        f"model={base}", f"data.path={data}", "method=full", f"out={out}", "data.max_len=64", "train.steps=100",
        f"train.lr={lr}", "train.micro_batch=16", "train.eval_every=0", "eval.perplexity=false", *COMMON])
    llmkit.finetune(recipe)
    return out / "model"


@pytest.fixture(scope="module")
def sft_data(work) -> Path:
    return write_jsonl(work / "sft.jsonl", [{"messages": m} for m in SFT_TRAIN])


@pytest.fixture(scope="module")
def sft(tiny_dir, sft_data, work) -> Path:
    """The SFT model every alignment claim starts from: full fine-tuning of the random tiny model."""
    return finetune(tiny_dir, sft_data, work / "sft", "1e-3")


# ------------------------------------------------------------------------------- 1. fine-tuning
@pytest.fixture(scope="module")
def untuned_logliks(tiny_dir) -> dict[str, float]:
    return answer_loglik(tiny_dir, SFT_HELD_OUT)


def test_fine_tuning_learns_a_held_out_task(sft, untuned_logliks):
    real = claim_check(untuned_logliks, answer_loglik(sft, SFT_HELD_OUT))
    print(f"fine-tuning: real {real}")
    assert passes(real), real


def test_fine_tuning_without_learning_fails_the_check(tiny_dir, sft_data, untuned_logliks, work):
    model = finetune(tiny_dir, sft_data, work / "sft-lr0", NO_LR)
    assert same_weights(tiny_dir, model)  # the control is what it claims: nothing learnt
    control = claim_check(untuned_logliks, answer_loglik(model, SFT_HELD_OUT))
    print(f"fine-tuning: control (lr {NO_LR}) {control}")
    assert not passes(control), control


# ------------------------------------------------------------------------------- 2. DPO
DPO_TRAIN = builtin_preferences("train", ["arith"])[:240]
DPO_HELD_OUT = builtin_preferences("dev", ["arith"])[:100]
DPO_VAL = builtin_preferences("dev", ["arith"])[100:108]  # the job's own validation pairs, unused here


def dpo(base: Path, work: Path, name: str, flip: bool) -> Path:
    def rows(pairs, flip=False):
        return [{"prompt": p.prompt[0][1], "chosen": p.rejected if flip else p.chosen,
                 "rejected": p.chosen if flip else p.rejected} for p in pairs]

    data = write_jsonl(work / f"{name}.jsonl", rows(DPO_TRAIN, flip))
    val = write_jsonl(work / f"{name}-val.jsonl", rows(DPO_VAL))
    recipe = load_recipe(llmkit.DPORecipe, None, [
        f"model={base}", f"data.path={data}", f"data.val_path={val}", f"out={work / name}", "data.max_len=64",
        "train.steps=30", "train.lr=1e-3", "train.micro_batch=8", "train.eval_every=0", "eval.perplexity=false",
        *COMMON])
    llmkit.dpo(recipe)
    return work / name / "model"


@pytest.fixture(scope="module")
def sft_margins(sft) -> dict[str, float]:
    return pair_margins(sft, DPO_HELD_OUT)


def test_dpo_gains_over_sft(sft, sft_margins, work):
    real = claim_check(sft_margins, pair_margins(dpo(sft, work, "dpo", flip=False), DPO_HELD_OUT))
    print(f"DPO: real {real}")
    assert passes(real), real


def test_dpo_on_flipped_preferences_fails_the_check(sft, sft_margins, work):
    control = claim_check(sft_margins, pair_margins(dpo(sft, work, "dpo-flipped", flip=True), DPO_HELD_OUT))
    print(f"DPO: control (flipped) {control}")
    assert not passes(control), control
    assert control.verdict == "regression"  # it learns the other way


# ------------------------------------------------------------------------------- 3, 4. PPO, GRPO
RL_TRAIN = builtin_prompts("train", ["arith"])[:400]
RL_HELD_OUT = builtin_prompts("test", ["arith"])[:64]
RL_LR = "3e-4"
RL_SETTINGS = {
    "ppo": ["train.steps=30", "rollout.prompts_per_batch=8", "train.micro_batch=8"],
    "grpo": ["train.steps=30", "rollout.prompts_per_batch=4", "rollout.samples_per_prompt=4"],
}


def rl(kind: str, base: Path, work: Path, lr: str = RL_LR, reward: str = "even_digits") -> Path:
    name = f"{kind}-{reward}-lr{lr}"
    prompts = write_jsonl(work / f"{name}.jsonl", [{"prompt": p.text, "answer": p.answer} for p in RL_TRAIN])
    cls = llmkit.PPORecipe if kind == "ppo" else llmkit.GRPORecipe
    recipe = load_recipe(cls, None, [
        f"model={base}", f"reward=learning_claims_rewards:{reward}", f"prompts.path={prompts}", f"out={work / name}",
        f"rollout.max_new_tokens={RL_NEW_TOKENS}", f"train.lr={lr}", "eval.prompts=0", *RL_SETTINGS[kind], *COMMON])
    getattr(llmkit, kind)(recipe)
    return work / name / "model"


@pytest.fixture(scope="module")
def sft_rewards(sft) -> dict[str, float]:
    return greedy_reward(sft, RL_HELD_OUT)


@pytest.mark.parametrize("kind", ["ppo", "grpo"])
def test_rl_gains_over_sft(kind, sft, sft_rewards, work):
    real = claim_check(sft_rewards, greedy_reward(rl(kind, sft, work), RL_HELD_OUT))
    print(f"{kind}: real {real}")
    assert passes(real), real


@pytest.mark.parametrize("kind", ["ppo", "grpo"])
def test_rl_without_learning_fails_the_check(kind, sft, sft_rewards, work):
    model = rl(kind, sft, work, lr=NO_LR)
    assert same_weights(sft, model)
    control = claim_check(sft_rewards, greedy_reward(model, RL_HELD_OUT))
    print(f"{kind}: control (lr {NO_LR}) {control}")
    assert not passes(control), control


@pytest.mark.parametrize("kind", ["ppo", "grpo"])
def test_rl_on_the_reward_negated_fails_the_check(kind, sft, sft_rewards, work):
    control = claim_check(sft_rewards, greedy_reward(rl(kind, sft, work, reward="odd_digits"), RL_HELD_OUT))
    print(f"{kind}: control (reward negated) {control}")
    assert not passes(control), control
    assert control.verdict == "regression"  # it learns the other way


def test_held_out_items_are_not_training_items():
    questions = [({m[0]["content"] for m in SFT_TRAIN}, {m[0]["content"] for m in SFT_HELD_OUT}),
                 ({p.prompt for p in DPO_TRAIN}, {p.prompt for p in DPO_HELD_OUT}),
                 ({p.text for p in RL_TRAIN}, {p.text for p in RL_HELD_OUT})]
    for train, held_out in questions:
        assert len(held_out) >= 50 and not train & held_out
