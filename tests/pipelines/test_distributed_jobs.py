"""Every training job under `torchrun --nproc_per_node 2` (CPU, gloo; DDP, and FSDP for LoRA, whose
final save gathers the shards into a rebuilt model) trains as one process does at the same global
batch, and the model it saves is the model it trained: transformers loads RUN/model and computes
the logits (rewards) of the final checkpoint's weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from llmkit.align.reward import RewardModel
from llmkit.cli.main import main
from llmkit.data.instruct import builtin_instructions
from llmkit.models.hf import load_pretrained
from llmkit.peft import LoRAConfig, apply_lora, merge_and_unload
from tests.peers import peer
from tests.processes import losses

COMMON = ["train.steps=3", "train.eval_every=0", "train.precision=fp32", "train.device=cpu", "train.lr=1e-3",
          "eval.tasks=[]", "eval.perplexity=false", "data.max_len=48"]
JOBS = {  # verb args, the global micro-batch split over two ranks, and how it is split
    "finetune-full": (["finetune", "--method", "full"], 8, "ddp"),
    "finetune-lora-fsdp": (["finetune", "--method", "lora"], 8, "fsdp"),
    "dpo": (["align", "dpo", "--method", "full"], 4, "ddp"),
    "reward": (["align", "reward", "--method", "full"], 4, "ddp"),
}

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    path = tmp_path_factory.mktemp("chats") / "chats.jsonl"
    rows = [{"messages": m} for m in builtin_instructions("train", ["arith"])[:64]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """The data args of the preference jobs: the first 64 training and 32 dev pairs of the embedded
    arith set (builtin:arith's 4000 + 400 pairs would each be encoded and scored by the reference in
    every process, for 3 steps that read 12)."""
    from llmkit.align.prefs import builtin_preferences

    root = tmp_path_factory.mktemp("pairs")
    for split, n in (("train", 64), ("dev", 32)):
        rows = [{"prompt": p.messages, "chosen": p.chosen, "rejected": p.rejected}
                for p in builtin_preferences(split, ["arith"])[:n]]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ["--data", str(root / "train.jsonl"), f"data.val_path={root / 'dev.jsonl'}"]


def run(args: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + ["-m", "llmkit", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def checkpoint_weights(run_dir) -> dict[str, torch.Tensor]:
    """The trained weights as the Trainer held them at the end (its last checkpoint)."""
    ckpt = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        aliases = json.loads(f.metadata().get("aliases", "{}"))
    return {**tensors, **{alias: tensors[name] for alias, name in aliases.items()}}


@pytest.mark.parametrize("job", list(JOBS))
def test_two_processes_match_one_and_save_what_they_trained(tiny_dir, chats, pairs, tmp_path, job):
    verb, batch, strategy = JOBS[job]
    data = pairs if verb[0] == "align" else ["--data", str(chats)]
    base = [*verb, "--model", str(tiny_dir), *data, *COMMON]
    one, two = tmp_path / "one", tmp_path / "two"
    # the one-process reference run in this process (on one thread, as each torchrun rank): a new
    # interpreter would cost more than its three steps
    assert main([*base, "--out", str(one), f"train.micro_batch={batch}"]) == 0
    port = 29500 + os.getpid() % 1000 + 11 + list(JOBS).index(job)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    # under FSDP the main rank evaluates the gathered model after training (held-out task, perplexity)
    evaluate = ["eval.tasks=[arith]", "eval.limit=2", "eval.perplexity=true"] if strategy == "fsdp" else []
    r = run([*base, "--out", str(two), f"train.micro_batch={batch // 2}", f"train.distributed={strategy}", *evaluate],
            launcher)
    assert r.returncode == 0, r.stderr[-3000:]
    # the same tolerances as pretraining's (tests/train/test_pretrain.py): step 1 equal to fp32
    # rounding, later steps drift by AdamW amplifying the ranks' different summation order
    a, b = losses(one), losses(two)
    assert list(a) == list(b) == [1, 2, 3]
    assert abs(a[1] - b[1]) <= 1e-5, (a, b)
    assert all(abs(a[s] - b[s]) <= 2e-3 for s in a), (a, b)
    norm_a, norm_b = losses(one, "grad_norm")[1], losses(two, "grad_norm")[1]
    assert abs(norm_a - norm_b) <= 1e-3 * norm_a, (norm_a, norm_b)
    if evaluate:
        after = json.loads((two / "summary.json").read_text())["after"]
        assert set(after) == {"arith", "perplexity"} and after["perplexity"]["value"] > 1

    transformers = peer("transformers")
    ids = torch.tensor([[5, 17, 99, 3, 42, 7, 300, 11]])
    trained = checkpoint_weights(two)
    if job == "reward":
        model = RewardModel(load_pretrained(tiny_dir))
        model.load_state_dict(trained)
        hf = transformers.AutoModelForSequenceClassification.from_pretrained(two / "model").eval()
        with torch.no_grad():
            assert torch.allclose(hf(ids).logits[:, 0], model.eval()(ids), atol=1e-5)
        return
    model = load_pretrained(tiny_dir)
    if job == "finetune-lora-fsdp":
        apply_lora(model, LoRAConfig())
        model.load_state_dict(trained)
        model = merge_and_unload(model)
    else:
        model.load_state_dict(trained)
    hf = transformers.AutoModelForCausalLM.from_pretrained(two / "model").eval()
    with torch.no_grad():
        assert (hf(ids).logits - model.eval()(ids)).abs().max() <= 1e-4
        assert (hf(ids).logits - load_pretrained(tiny_dir)(ids)).abs().max() > 1e-3  # it did train
