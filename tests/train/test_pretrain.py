"""Pretraining through the real `llmkit pretrain` command: run dir, exact resume after kill -9,
distributed runs that match a single process, and refusal of mismatched checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import llmkit
from llmkit.data import DataConfig, SourceConfig, prepare_data
from llmkit.data.corpus import stdlib_texts
from llmkit.train.logger import read_metrics
from tests.peers import peer
from tests.processes import kill_at_checkpoint, losses, paused_at_checkpoints

COMMON = ["model.preset=tiny-llama", "model.overrides={dim: 64, n_layers: 2, n_heads: 4, n_kv_heads: 2, hidden_dim: 128}",
          "train.micro_batch=8", "train.lr=1e-2", "train.warmup_steps=2", "train.eval_every=5", "train.eval_batches=2",
          "train.sample_prompts=[]", "train.device=cpu"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "prepared"
    prepare_data(DataConfig(sources=[SourceConfig(path="stdlib", max_bytes=300_000)], seq_len=32, vocab_size=512),
                 out)
    return out


def pretrain(*args: str, env: dict | None = None, launcher: list[str] | None = None, wait: bool = True):
    cmd = (launcher or [sys.executable]) + ["-m", "llmkit", "pretrain", *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=environment, capture_output=True, text=True, timeout=600)


def here(*args: str) -> int:
    """`llmkit ARGS` run in this process (one intra-op thread here, see one_thread): its exit code."""
    from llmkit.cli.main import main

    return main(list(args))


def refused(capsys, *args: str) -> str:
    """`llmkit pretrain ARGS` run in this process (no interpreter to start, no PyTorch to import: a
    refusal takes a fraction of a second), which must exit with code 2; what it wrote to stderr."""
    from llmkit.cli.main import main

    capsys.readouterr()
    assert main(["pretrain", *args]) == 2
    return capsys.readouterr().err


def test_run_dir_and_final_model(data_dir, tmp_path):
    out = tmp_path / "run"
    r = pretrain("--data", str(data_dir), "--out", str(out), *COMMON, "train.steps=12", "train.save_every=6")
    assert r.returncode == 0, r.stderr
    for name in ("config.yaml", "metrics.jsonl", "report.md", "loss.png", "summary.json", "model/config.json",
                 "model/model.safetensors", "model/tokenizer.json"):
        assert (out / name).exists(), name
    assert list((out / "tb").glob("events.out.tfevents.*"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["tokens"] == 12 * 8 * 32
    rows = read_metrics(out)
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 13))
    assert any("val_loss" in r for r in rows)
    train = losses(out)
    assert train[12] < train[1]  # it learns
    # the final model is a normal HF directory: llmkit and transformers load it
    llm = llmkit.load(out)
    transformers = peer("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out / "model")
    import torch

    ids = torch.tensor([llm.tokenize("def main():")])
    with torch.no_grad():
        assert (hf(ids).logits - llm.model(ids)).abs().max() <= 1e-4


def test_kill_9_and_resume_is_bit_identical(data_dir, tmp_path):
    args = ["--data", str(data_dir), *COMMON, "train.steps=20", "train.save_every=10", "train.grad_accum=2",
            "model.overrides.dropout=0.1"]
    straight = tmp_path / "straight"
    r = pretrain(*args, "--out", str(straight))
    assert r.returncode == 0, r.stderr

    crashed = tmp_path / "crashed"
    proc = paused_at_checkpoints("pretrain", *args, "--out", str(crashed))
    kill_at_checkpoint(proc, crashed, 10)
    assert not (crashed / "model").exists()

    r = pretrain(*args, "--out", str(crashed), "--resume")
    assert r.returncode == 0, r.stderr
    a, b = losses(straight), losses(crashed)
    assert list(a) == list(b) == list(range(1, 21))
    assert a == b  # every step's loss, bit for bit


def test_resume_refuses_a_different_model_or_damaged_checkpoint(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert here("pretrain", "--data", str(data_dir), "--out", str(out), *COMMON, "train.steps=4",
                "train.save_every=2") == 0
    err = refused(capsys, "--data", str(data_dir), "--out", str(out), *COMMON, "train.steps=8",
                  "model.overrides.dim=128", "--resume")
    assert "does not match this run" in err and "model" in err
    ckpt = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 3])
    assert "truncated" in refused(capsys, "--data", str(data_dir), "--out", str(out), *COMMON, "train.steps=8",
                                  "--resume")
    # starting afresh into an existing run dir is refused too
    assert "--resume" in refused(capsys, "--data", str(data_dir), "--out", str(out), *COMMON, "train.steps=8")


def test_bad_input_leaves_no_run_dir(tmp_path, capsys):
    out = tmp_path / "run"
    assert "missing.txt" in refused(capsys, "--data", str(tmp_path / "missing.txt"), "--out", str(out), *COMMON)
    assert not out.exists()
    assert "unknown preset" in refused(capsys, "--out", str(out), *COMMON, "model.preset=nope") and not out.exists()
    assert "train.lrr" in refused(capsys, "--out", str(out), *COMMON, "train.lrr=3") and not out.exists()
    # a failure while the Trainer is built, after RUN/data was prepared, leaves nothing either
    text = tmp_path / "text.txt"
    text.write_text("".join(stdlib_texts(60_000)), encoding="utf-8")
    assert "fp16" in refused(capsys, "--data", str(text), "--out", str(out), *COMMON, "data.seq_len=32",
                             "data.vocab_size=512", "train.precision=fp16")
    assert not out.exists()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(data_dir, tmp_path, strategy):
    """torchrun with 2 CPU processes (gloo) and micro-batch 4 each = 1 process with micro-batch 8.

    Step 1 (same weights, same rows) must agree: the loss to 1e-5, the gradient norm (the all-reduce
    at work; half a batch alone gives a norm ~40% off) to 1e-3 relative (5e-5 seen). Later steps drift by fp32 rounding amplified by AdamW (its first
    updates are nearly sign(gradient), and the summation order differs between 1 and 2 ranks):
    ~2e-4 seen on AVX-512, so they are held to 2e-3, far below what unsynchronised ranks give. fp32
    pinned: on a CPU with native bf16 (AMX) precision=auto picks bf16, whose rounding drifts 3.5e-3."""
    base = ["--data", str(data_dir), *COMMON, "train.steps=6", "train.save_every=0", "train.eval_every=0",
            "train.precision=fp32"]
    one = tmp_path / "one"  # the one-process run in this process, on one thread as each torchrun rank
    assert here("pretrain", *base, "--out", str(one)) == 0
    two = tmp_path / "two"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(29500 + os.getpid() % 1000 + (7 if strategy == "fsdp" else 0))]
    r = pretrain(*base, "--out", str(two), "train.micro_batch=4", f"train.distributed={strategy}", launcher=launcher)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = losses(one), losses(two)
    assert list(a) == list(b) == list(range(1, 7))
    assert abs(a[1] - b[1]) <= 1e-5, (a[1], b[1])
    norm_a, norm_b = losses(one, "grad_norm")[1], losses(two, "grad_norm")[1]
    assert abs(norm_a - norm_b) <= 1e-3 * norm_a, (norm_a, norm_b)
    for step in a:
        assert abs(a[step] - b[step]) <= 2e-3, (step, a[step], b[step])
    assert (two / "model" / "model.safetensors").exists()


def test_two_processes_train_a_mixture_of_experts(data_dir, tmp_path):
    """DDP with a mixture of experts whose experts are often idle on a rank (16 experts, top 1, one
    row of 32 tokens per rank): every expert must still hand DDP a gradient, and step 1's loss (the
    objective's, without the per-rank router losses) equals one process reading both rows."""
    moe = ["model.preset=tiny-mixtral", "model.overrides={dim: 64, n_layers: 2, n_heads: 4, n_kv_heads: 2, "
           "hidden_dim: 32, n_experts: 16, experts_per_token: 1, router_aux_loss_coef: 0.01}",
           "train.lr=1e-2", "train.warmup_steps=1", "train.sample_prompts=[]", "train.device=cpu",
           "train.steps=3", "train.save_every=0", "train.eval_every=0", "train.precision=fp32"]
    one = tmp_path / "one"  # in this process, as in test_two_processes_match_one
    assert here("pretrain", "--data", str(data_dir), *moe, "train.micro_batch=2", "--out", str(one)) == 0
    two = tmp_path / "two"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(29500 + os.getpid() % 1000 + 13)]
    r = pretrain("--data", str(data_dir), *moe, "train.micro_batch=1", "train.distributed=ddp", "--out", str(two),
                 launcher=launcher)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = losses(one), losses(two)
    assert list(a) == list(b) == [1, 2, 3]
    assert abs(a[1] - b[1]) <= 1e-5, (a[1], b[1])
    assert "moe_tokens_per_expert" in read_metrics(two)[0]


def test_a_micro_batch_that_cannot_fit_is_refused(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    err = refused(capsys, "--data", str(data_dir), "--out", str(out), *COMMON, "train.micro_batch=2000000")
    assert "micro-batch of 2000000" in err and "train.micro_batch=" in err and "GiB" in err
    assert not out.exists() or not (out / "config.yaml").exists()
