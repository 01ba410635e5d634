"""`llmkit align recipe`: SFT -> reward model -> PPO, DPO, GRPO, each compared with SFT on the
dev and test splits. Fast: the wiring on a tiny random model (every stage a few steps). Slow: the real
claim on the quickstart model: the aligned models beat SFT by more than the noise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit.cli.main import main

QUICK = ["sft.train.steps=4", "sft.data.builtin_train_size=200", "sft.eval.limit=4", "rm.train.steps=2",
         "ppo.train.steps=2", "ppo.rollout.prompts_per_batch=4", "ppo.train.micro_batch=4", "ppo.eval.limit=4",
         "ppo.eval.prompts=4", "pairs.judge=length", "pairs.train_size=8", "pairs.samples=2",
         "pairs.max_new_tokens=6", "dpo.train.steps=2", "dpo.data.val_fraction=0.2", "dpo.eval.limit=4", "grpo.train.steps=2",
         "grpo.rollout.prompts_per_batch=2", "grpo.rollout.samples_per_prompt=2", "grpo.eval.limit=4",
         "grpo.eval.prompts=4", "ppo.prompts.builtin_train_size=50", "grpo.prompts.builtin_train_size=50"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def test_the_recipe_runs_every_stage_and_compares_with_sft(tiny_dirs, tmp_path, capsys, caplog):
    out = tmp_path / "align"
    assert main(["align", "recipe", "--model", str(tiny_dirs["tiny-llama"]), "--out", str(out), "--limit", "6",
                 *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "on bases this weak" in caplog.text  # a random model's SFT answers nothing: the recipe says so
    s = json.loads((out / "summary.json").read_text())
    assert set(s["models"]) == {"sft", "ppo", "dpo", "grpo"} and s["examples"] == 18  # 6 each of dev, test and heldout
    for name in ("ppo", "dpo", "grpo"):
        m = s["models"][name]
        assert m["delta"] == pytest.approx(m["value"] - s["models"]["sft"]["value"])
        assert m["delta_ci"][0] <= m["delta"] <= m["delta_ci"][1] and m["verdict"] in (
            "improvement", "within noise", "regression")
        assert 0 <= m["win_rate"]["win_rate"] <= 1 and m["kl_to_sft"]["prompts"] == 6
        assert f"  {name}" in printed
    report = (out / "report.md").read_text()
    assert "| model | exact match" in report and "ppo/report.md" in report and "grpo reward and KL" in report
    for stage in ("sft", "rm", "ppo", "pairs", "dpo", "grpo"):
        assert (out / stage / "summary.json").is_file()
    # a finished stage is reused, not retrained; stage overrides must name their stage
    before = (out / "ppo" / "summary.json").stat().st_mtime_ns
    assert main(["align", "recipe", "--model", str(tiny_dirs["tiny-llama"]), "--out", str(out), "--limit", "6",
                 "--stages", "ppo", *QUICK]) == 0
    assert (out / "ppo" / "summary.json").stat().st_mtime_ns == before
    assert main(["align", "recipe", "--model", str(tiny_dirs["tiny-llama"]), "--out", str(out), "kl=0.1"]) == 2
    assert "name the stage first" in capsys.readouterr().err


def test_an_interrupted_stage_resumes_and_grpo_needs_no_reward_model(tiny_dirs, tmp_path, caplog):
    import shutil

    out = tmp_path / "align"
    args = ["align", "recipe", "--model", str(tiny_dirs["tiny-llama"]), "--out", str(out), "--limit", "4",
            "--stages", "sft,grpo", *QUICK, "grpo.train.save_every=1"]
    assert main(args) == 0  # no rm stage: the comparison has no win rate rather than failing on a missing model
    s = json.loads((out / "summary.json").read_text())
    assert set(s["models"]) == {"sft", "grpo"} and "win_rate" not in s["models"]["grpo"] and not (out / "rm").exists()
    grpo = out / "grpo"

    def drop(*names):
        for n in names:
            (shutil.rmtree if (grpo / n).is_dir() else Path.unlink)(grpo / n)

    drop("summary.json", "model", "checkpoints/step_000002")  # stopped after step 1's checkpoint: resumed
    sft_before = (out / "sft" / "summary.json").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(args) == 0
    assert "resuming the interrupted run" in caplog.text and "(step 1)" in caplog.text
    assert json.loads((grpo / "summary.json").read_text())["steps"] == 2
    assert (out / "sft" / "summary.json").stat().st_mtime_ns == sft_before  # finished stages are reused
    # a stage dir stopped before any checkpoint is started again, not refused
    drop("summary.json", "model", "checkpoints")
    caplog.clear()
    assert main(args) == 0
    assert "starting it again" in caplog.text and (grpo / "summary.json").is_file()


@pytest.mark.slow
def test_aligned_models_beat_sft_on_held_out_arithmetic(tmp_path):
    """The claim of the recipe: on a quickstart model, SFT on arith, then each aligned model beats
    the SFT model on the 2000 held-out dev, test and heldout questions by more than the noise (the
    paired bootstrap interval of the change lies above 0), with its KL to SFT and the reward model's
    win rate reported. With the recipe's defaults all three cleared on three 3-minute bases of an
    AVX-512 CPU (SFT 0.256, 0.338 — this test's base — and 0.429), every lower bound +0.013 or more,
    and on a seed-3 base of another CPU (SFT 0.540; GRPO then at its earlier settings). Bases under SFT
    0.2, and the two where earlier settings fell short (SFT 0.293 and 0.200 on 400 questions), were not
    rerun with these defaults (the recipe warns under 0.2). The base gets 3 minutes, for
    slower CPUs. About 25 minutes."""
    import subprocess
    import sys

    qs = tmp_path / "qs"
    r = subprocess.run([sys.executable, "-m", "llmkit", "quickstart", "--minutes", "3", "--out", str(qs)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "align"
    assert main(["align", "recipe", "--model", str(qs), "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["examples"] == 2000  # dev, test and heldout
    assert s["models"]["sft"]["value"] >= 0.2, ("the base is too weak for the claim", s["models"]["sft"])
    for name in ("ppo", "dpo", "grpo"):
        m = s["models"][name]
        assert m["verdict"] == "improvement" and m["delta_ci"][0] > 0, (name, m, s["models"]["sft"])
        assert m["kl_to_sft"]["kl"] > 0 and "win_rate" in m
    report = (out / "report.md").read_text()
    assert "improvement" in report and (out / "grpo" / "reward_kl.png").is_file()
