"""PPO and GRPO (`llmkit align ppo|grpo`) on a tiny model: the rollout pieces checked against a
direct computation, the properties that must hold at the start (ratio 1, KL 0), runs that raise
a learnable reward, adaptive KL, and every kind of bad input."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from llmkit.align.losses import group_advantages, sequence_logps
from llmkit.align.rewards import RewardError, parse_reward
from llmkit.align.policy import PolicyWithValue
from llmkit.align.prompts import Prompt, read_prompts
from llmkit.align.rollouts import Advantages, GroupRolloutSection, RolloutCollector
from llmkit.cli.main import main
from llmkit.data.dataset import DataError
from llmkit.models.logprobs import token_logprobs
from llmkit.models.hf import load_pretrained
from llmkit.tokenizer import Tokenizer

# reward functions the runs import by name (module:function)
sys.modules.setdefault("rl_test_rewards", sys.modules[__name__])

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def spaces(prompts, completions, references):
    """A reward a random tiny model can learn in a few dozen steps: the share of spaces."""
    return [c.count(" ") / max(1, len(c)) for c in completions]


def boom(prompts, completions, references):
    raise KeyError("no such key")


def one(prompts, completions, references):
    """The same reward for every completion: returns the policy cannot change, for the value head to fit."""
    return [1.0] * len(completions)


def nan_every_third(prompts, completions, references):
    return [float("nan") if i % 3 == 0 else 1.0 for i in range(len(completions))]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"reward"' in line]


def run(verb, model, out, *extra):
    code = main(["align", verb, "--model", str(model), "--out", str(out), "eval.limit=10", "eval.prompts=8",
                 "rollout.max_new_tokens=12", "train.precision=fp32", *extra])
    assert code == 0
    return json.loads((out / "summary.json").read_text())


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    a = group_advantages(r, eps=0.0)
    std = (4 * 0.25 / 3) ** 0.5  # unbiased std of 1, 0, 0, 1
    assert torch.allclose(a[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / std) and torch.all(a[1] == 0)
    valid = torch.tensor([[True, True, False, True], [True, False, False, False]])
    m = group_advantages(torch.tensor([[3.0, 1.0, float("nan"), 2.0], [5.0, 0.0, 0.0, 0.0]]), eps=0.0, valid=valid)
    assert torch.allclose(m[0], torch.tensor([1.0, -1.0, 0.0, 0.0])) and torch.all(m[1] == 0)  # mean 2, std 1


def test_response_logprobs_match_the_sequence_scoring(tiny_dirs):
    model = load_pretrained(tiny_dirs["tiny-llama"]).eval()
    torch.manual_seed(0)
    prompt, response = torch.randint(0, 500, (5,)).tolist(), torch.randint(0, 500, (4,)).tolist()
    ids = torch.tensor([prompt + response])
    logits = model(ids)
    index = torch.arange(len(prompt) - 1, len(prompt) + len(response) - 1)[None]
    lp, ent = token_logprobs(logits[:, index[0]], torch.tensor([response]), entropy=True)
    policy = PolicyWithValue(model, value_head=True)
    at, values = policy(ids, torch.ones_like(ids), index)  # the head on the response positions only
    assert torch.allclose(at, logits[:, index[0]], atol=1e-5) and values.shape == (1, 4) and torch.all(values == 0)
    labels = torch.full_like(ids, -100)
    labels[0, len(prompt) - 1:-1] = torch.tensor(response)  # labels[t] is the token after position t
    assert lp.sum().item() == pytest.approx(sequence_logps(logits, labels).item(), abs=1e-5)
    probs = torch.softmax(logits[0, len(prompt) - 1], -1)
    assert ent[0, 0].item() == pytest.approx(-(probs * probs.log()).sum().item(), abs=1e-4)
    half = token_logprobs(logits[:, index[0]], torch.tensor([response]), temperature=2.0)
    assert half[0, 0].item() == pytest.approx(torch.log_softmax(logits[0, len(prompt) - 1] / 2, -1)[response[0]].item(),
                                              abs=1e-5)


def test_rollouts_start_at_ratio_one_and_zero_kl(tiny_dirs):
    path = tiny_dirs["tiny-llama"]
    model, tok = load_pretrained(path), Tokenizer.from_dir(path)
    import copy

    rollout = GroupRolloutSection(prompts_per_batch=3, samples_per_prompt=4, max_new_tokens=10)
    policy = PolicyWithValue(model, value_head=False)
    ref = copy.deepcopy(model).eval()
    prompts = [Prompt((("user", f"Say {w}"),), None) for w in ("a", "bb", "ccc")]
    c = RolloutCollector(policy, ref, tok, prompts, parse_reward("length"), rollout, Advantages("grpo"), "fp32")
    ro = c.collect(0)
    assert ro.input_ids.shape[0] == 12 and ro.stats["kl"] == 0.0 and torch.equal(ro.old_logp, ro.ref_logp)
    # the policy scores its own rollout exactly as the collector did: every ratio starts at 1
    with torch.no_grad():
        logits, _ = policy(ro.input_ids, ro.attention_mask, ro.resp_index)
    lp = token_logprobs(logits, ro.resp_tokens)
    assert torch.allclose(lp * ro.resp_mask, ro.old_logp * ro.resp_mask, atol=1e-6)
    # advantages are constant along each completion and centred within each prompt's group
    per = ro.advantages.sum(-1) / ro.resp_mask.sum(-1).clamp_min(1)
    assert torch.allclose(ro.advantages, per[:, None] * ro.resp_mask)
    assert torch.allclose(per.view(3, 4).sum(-1), torch.zeros(3), atol=1e-4)
    # the same rollout index samples the same completions
    again = RolloutCollector(policy, ref, tok, prompts, parse_reward("length"), rollout, Advantages("grpo"),
                             "fp32").collect(0)
    assert torch.equal(again.resp_tokens, ro.resp_tokens)


def test_grpo_raises_a_learnable_reward(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "grpo"
    s = run("grpo", tiny_dirs["tiny-llama"], out, "--reward", "rl_test_rewards:spaces", "train.steps=30",
            "train.lr=1e-3", "rollout.prompts_per_batch=4", "rollout.samples_per_prompt=4")
    printed = capsys.readouterr().out
    assert "KL to the SFT model" in printed and "report:" in printed
    m = metrics(out)
    assert m[0]["kl"] == 0.0 and m[0]["policy/approx_kl"] == 0.0  # the policy starts as the reference
    first, last = sum(r["reward"] for r in m[:5]) / 5, sum(r["reward"] for r in m[-5:]) / 5
    assert last > first + 0.1, (first, last)
    assert m[-1]["kl"] > 0 and s["kl_to_sft"]["kl"] > 0 and s["rollouts"] == 30
    report = (out / "report.md").read_text()
    assert "Reward and KL over training" in report and (out / "reward_kl.png").stat().st_size > 1000
    assert (out / "model" / "config.json").is_file()


def test_ppo_raises_a_learnable_reward_with_a_value_head(tiny_dirs, tmp_path):
    out = tmp_path / "ppo"
    s = run("ppo", tiny_dirs["tiny-llama"], out, "--reward", "rl_test_rewards:spaces", "train.steps=40",
            "train.lr=1e-3", "train.micro_batch=8", "rollout.prompts_per_batch=16", "kl=0.01")
    m = metrics(out)
    assert m[0]["kl"] == 0.0 and m[0]["policy/approx_kl"] == 0.0
    assert all("value/loss" in r and "policy/clip_frac" in r and "policy/entropy" in r for r in m)
    first, last = sum(r["reward"] for r in m[:8]) / 8, sum(r["reward"] for r in m[-8:]) / 8
    assert last > first + 0.05, (first, last)
    # the second epoch over a rollout sees a moved policy: ratios leave 1
    assert any(r["policy/approx_kl"] > 0 for r in m)
    assert s["rollouts"] == 10  # 16 completions / micro-batch 8, two epochs: 4 steps per rollout
    # rewards are scaled by the first rollout's mean and std (the SFT model's samples)
    first_rewards = m[0]["reward"], m[0]["reward/std"]
    assert s["score_norm"] == pytest.approx(first_rewards, rel=1e-4)


def test_ppo_value_head_learns_the_returns(tiny_dirs, tmp_path):
    """The value head fits the returns. In the run above they climb with the reward faster than the
    head follows, so its loss cannot show it (mean of the first 8 -> last 8 of 40 steps, train.seed
    0-3: 0.23 -> 0.69, 0.35 -> 1.27, 0.41 -> 1.41, 0.34 -> 0.34). Here the reward is 1 for every
    completion, unscaled and without KL penalty: the returns stay put whatever the policy does, and
    the loss must fall from the zero-initialised head's. Measured, train.seed 0-5: step 1 0.303-0.309,
    mean of the last 4 of 12 steps 0.061-0.121 (0.20-0.40 of step 1); with vf_coef=0 it stays at 0.30."""
    out = tmp_path / "ppo"
    run("ppo", tiny_dirs["tiny-llama"], out, "--reward", "rl_test_rewards:one", "normalize_scores=false", "kl=0",
        "train.lr=1e-2", "train.steps=12", "rollout.prompts_per_batch=8", "train.micro_batch=8", "eval.tasks=[]",
        "eval.prompts=0")
    loss = [r["value/loss"] for r in metrics(out)]
    assert len(loss) == 12 and loss[0] > 0.2, loss  # values start at 0, returns near 1
    assert sum(loss[-4:]) / 4 < 0.5 * loss[0], loss


def test_adaptive_kl_moves_towards_its_target(tiny_dirs, tmp_path):
    # the first rollouts' KL is ~0, far under a target of 5: the coefficient must fall, step by step
    out = tmp_path / "ppo"
    s = run("ppo", tiny_dirs["tiny-llama"], out, "--reward", "length", "train.steps=6", "rollout.prompts_per_batch=8",
            "train.micro_batch=8", "rollout.epochs=1", "kl=0.1", "kl_target=5", "kl_horizon=100")
    coefs = [r["kl_coef"] for r in metrics(out)]
    assert coefs[0] == pytest.approx(0.1) and all(b < a for a, b in zip(coefs, coefs[1:]))
    assert s["kl_coef"] < coefs[-1]  # and after the last rollout (0.1 * 0.984 ** 6)


@pytest.mark.parametrize("verb,method", [("grpo", "lora"), ("ppo", "qlora")])
def test_lora_and_qlora_run_and_save_the_merged_model(tiny_dirs, tmp_path, verb, method):
    out = tmp_path / method
    s = run(verb, tiny_dirs["tiny-llama"], out, "--method", method, "--reward", "length*-0.1", "train.steps=2",
            "rollout.prompts_per_batch=2", "rollout.samples_per_prompt=2", "train.micro_batch=4")
    assert s["trainable"]["percent"] < 60 and (out / "adapter" / "adapter_config.json").is_file()
    # RUN/model is the base plus the trained adapter, merged (QLoRA's into the full-precision base)
    from llmkit.peft import load_adapter, merge_and_unload

    x = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    base = load_pretrained(tiny_dirs["tiny-llama"]).eval()
    with torch.no_grad():
        plain = base(x)
        load_adapter(base, out / "adapter")
        adapted = base(x)
        merged = merge_and_unload(base)(x)
        saved = load_pretrained(out / "model").eval()(x)
    moved, unmerged, off = ((t - adapted).abs().max().item() for t in (plain, merged, saved))
    assert moved > 1e-3 and unmerged < 1e-4 and off < 1e-4, (moved, unmerged, off)  # moved: the adapter trained


def test_built_in_rewards():
    exact = parse_reward("arith-exact")
    assert exact(["q"] * 3, ["It is 12.", "11", "no idea"], ["12", "12", "12"]) == [1.0, 0.0, 0.0]
    both = parse_reward("arith-exact+format*0.5+length*-0.01")
    assert both(["q"], ["7"], ["7"]) == [pytest.approx(1.5 - 0.01)]
    assert parse_reward("sorting-exact")(["q"], ["1 2 3\nmore"], ["1 2 3"]) == [1.0]
    with pytest.raises(RewardError, match="needs a reference answer"):
        exact(["q"], ["1"], [None])
    with pytest.raises(RewardError, match="multiple_choice task"):
        parse_reward("sentiment-exact")
    with pytest.raises(RewardError, match="weight after"):
        parse_reward("length*x")
    with pytest.raises(RewardError, match="cannot import"):
        parse_reward("no_such_module_xyz:f")


def test_prompt_files(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "What is 2 + 2?", "answer": 4}\n'
                 '{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}\n'
                 '{"prompt": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}\n'
                 '{"text": "no prompt"}\n')
    with pytest.raises(DataError, match=r"2 bad row\(s\): line 3: .*must be the user's.*line 4: .*'prompt' is missing"):
        read_prompts(str(f))
    rows, bad = read_prompts(str(f), skip_bad_rows=True)
    assert bad == 2 and rows[0].answer == "4" and rows[1].text == "Hi" and rows[1].messages[0] == ("system", "Be brief.")
    built, _ = read_prompts("builtin:sorting", train_size=50)
    assert len(built) == 50 and all(p.answer and p.task == "sorting" for p in built)


def test_bad_input_is_named(tiny_dirs, tmp_path, capsys):
    model = str(tiny_dirs["tiny-llama"])
    base = ["--model", model, "train.steps=2", "rollout.prompts_per_batch=3", "rollout.samples_per_prompt=2",
            "rollout.max_new_tokens=6", "eval.limit=4", "eval.prompts=4"]
    # a reward function that raises: an error naming it, the run stops
    assert main(["align", "grpo", *base, "--reward", "rl_test_rewards:boom", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "reward function boom raised KeyError" in err and "first prompt" in err
    # NaN rewards: counted and left out of the update, the run goes on
    s = run("grpo", model, tmp_path / "b", "--reward", "rl_test_rewards:nan_every_third", "train.steps=2",
            "rollout.prompts_per_batch=3", "rollout.samples_per_prompt=2")
    assert all(r["reward/skipped"] == 2.0 for r in metrics(tmp_path / "b")) and s["steps"] == 2
    # prompts longer than the context: counted skips; none left is an error
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "word " * 400}) + "\n" + json.dumps({"prompt": "short one"}) + "\n" * 1)
    s = run("grpo", model, tmp_path / "c", "--prompts", str(long), "--reward", "length", "prompts.val_fraction=0",
            "prompts.val_path=" + str(long), "train.steps=1", "rollout.prompts_per_batch=1",
            "rollout.samples_per_prompt=2")
    assert s["data"]["too_long"] == 1 and s["data"]["train"] == 1
    long.write_text(json.dumps({"prompt": "word " * 400}) + "\n")
    assert main(["align", "grpo", *base, "--prompts", str(long), "--reward", "length", "prompts.val_path=" + str(long),
                 "--out", str(tmp_path / "d")]) == 2
    assert "no prompt fits in the context window" in capsys.readouterr().err and not (tmp_path / "d").exists()
    # a reference model with another tokenizer
    from llmkit.data.corpus import stdlib_texts
    from llmkit.pipelines.init import INIT_SPECIAL_TOKENS, init_model

    other = Tokenizer.train(stdlib_texts(50_000), vocab_size=300, special_tokens=INIT_SPECIAL_TOKENS)
    init_model("tiny-llama", tmp_path / "other", tokenizer=other, seed=0)
    assert main(["align", "ppo", *base, "--reward", "length", "--reference", str(tmp_path / "other"),
                 "--out", str(tmp_path / "e")]) == 2
    assert "tokenizer differs" in capsys.readouterr().err
    # a directory that is not a reward model; unknown rewards; GRPO groups of one
    for reward, needle in ((model, "not a reward model"), ("nosuch", "'nosuch' is not known")):
        assert main(["align", "ppo", *base, "--reward", reward, "--out", str(tmp_path / "f")]) == 2
        assert needle in capsys.readouterr().err
    assert main(["align", "grpo", *base, "--reward", "length", "rollout.samples_per_prompt=1",
                 "--out", str(tmp_path / "g")]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_resume_continues_after_the_last_rollout(tiny_dirs, tmp_path):
    out = tmp_path / "r"
    args = ["--reward", "length", "rollout.prompts_per_batch=2", "rollout.samples_per_prompt=2"]
    run("grpo", tiny_dirs["tiny-llama"], out, *args, "train.steps=2")
    code = main(["align", "grpo", "--model", str(tiny_dirs["tiny-llama"]), "--out", str(out), "--resume",
                 "eval.limit=10", "eval.prompts=8", "rollout.max_new_tokens=12", "train.precision=fp32", *args,
                 "train.steps=4"])
    assert code == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 4 and s["rollouts"] == 4
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4] and [r["rollouts"] for r in metrics(out)] == [1, 2, 3, 4]


@pytest.mark.parametrize("name", ["align-ppo", "align-grpo"])
def test_shipped_recipes_load(name):
    from pathlib import Path

    from llmkit.pipelines.rl import GRPORecipe, PPORecipe
    from llmkit.recipe import load_recipe

    cls = PPORecipe if name == "align-ppo" else GRPORecipe
    r = load_recipe(cls, Path(__file__).parents[2] / "recipes" / f"{name}.yaml", ["model=runs/sft"])
    assert r.reward == "arith-exact" and r.prompts.path == "builtin:arith" and r.train.steps >= 1000
    parse_reward(r.reward)  # and the reward resolves


def test_ppo_under_torchrun_with_two_processes(tiny_dirs, tmp_path):
    """2 CPU processes (gloo): each rank samples its own prompts (rank 0 the same ones as a single
    process), the update is all-reduced, rank 0 writes the result; after step 1 both ranks hold the
    same weights (tests/run_with_callback.py writes each rank's), moved from the starting ones."""
    import subprocess

    from safetensors.torch import load_file

    from tests.processes import with_callback

    model = tiny_dirs["tiny-llama"]
    common = ["--model", str(model), "--reward", "length", "train.steps=4", "rollout.prompts_per_batch=4",
              "rollout.max_new_tokens=8", "train.micro_batch=4", "eval.limit=4", "eval.prompts=4",
              "train.precision=fp32", "train.device=cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    # one intra-op thread per process, as torchrun gives each of its two (and as the other process tests run)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "llmkit", "align", "ppo", *common, "--out", str(one)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run(with_callback("weights=1", "align ppo", *common, "--out", str(two), nproc=2),
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = metrics(one), metrics(two)
    assert [m["step"] for m in b] == [1, 2, 3, 4] and (two / "model" / "model.safetensors").is_file()
    assert b[0]["reward"] == pytest.approx(a[0]["reward"]) and b[0]["kl"] == 0.0  # rank 0's first rollout
    # after the first update the loss is the mean over both ranks' rollouts (at step 1 PPO's loss with
    # whitened advantages and zero values depends on the rollout's shape only)
    assert [m["loss"] for m in b[1:]] != pytest.approx([m["loss"] for m in a[1:]])
    # the two ranks sampled different rollouts but stepped with the all-reduced gradient: equal weights
    w0, w1 = (load_file(two / f"rank{r}-step1.safetensors") for r in (0, 1))
    assert w0.keys() == w1.keys() and w0
    assert not [k for k in w0 if not torch.equal(w0[k], w1[k])], "the ranks' weights differ after step 1"
    start = {f"lm.{k}": v for k, v in load_pretrained(model).state_dict().items()}
    lm = [k for k in w0 if k.startswith("lm.")]
    assert lm and all(w0[k].shape == start[k].shape for k in lm)
    moved = [k for k in lm if not torch.equal(w0[k], start[k])]
    assert len(moved) == len(lm), sorted(set(lm) - set(moved))  # every LM tensor took a step
    assert w0["value_head.weight"].abs().sum() > 0  # and the value head left its zeros


@pytest.mark.parametrize("name", ["ppo", "grpo"])
def test_shipped_recipes_carry_the_align_recipes_settings(name):
    """recipes/align-<name>.yaml is what `llmkit align recipe` runs for that stage (its settings are
    the measured ones): they must not drift apart again (PPO's YAML once kept kl 0.05 at temperature 1)."""
    from pathlib import Path

    from llmkit.pipelines.rl import GRPORecipe, PPORecipe
    from llmkit.pipelines.align import DEFAULTS
    from llmkit.recipe import load_recipe

    cls = PPORecipe if name == "ppo" else GRPORecipe
    shipped = load_recipe(cls, Path(__file__).parents[2] / "recipes" / f"align-{name}.yaml", ["model=runs/sft"])
    chain = load_recipe(cls, None, ["model=runs/sft", "reward=arith-exact", *DEFAULTS[name]])
    assert shipped.rollout == chain.rollout
    assert shipped.prompts.builtin_train_size == chain.prompts.builtin_train_size
    for key in ("lr", "steps", "micro_batch", "grad_accum"):
        assert getattr(shipped.train, key) == getattr(chain.train, key), key
    penalty = "kl" if name == "ppo" else "beta"
    assert getattr(shipped, penalty) == getattr(chain, penalty)
