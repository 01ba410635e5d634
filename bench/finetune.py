"""Fine-tuning speed and memory: llmkit's methods against transformers + peft LoRA, on the same
random-weight GPT-2-124M-shaped model and the same batch, in one run.

    python bench/finetune.py                      # batch 4 x 256, 3 timed steps each
    python bench/finetune.py --steps 2 --json out.json

Every configuration runs in a fresh process: one warm-up step, then the median of the timed AdamW
steps; peak RSS is the process's high-water mark over the training steps (reset after loading, so a
loader's transient copies do not count; the load peak is printed too). LoRA is r=16 on the attention input projections in both
libraries (llmkit: q_proj, k_proj, v_proj; peft: GPT-2's fused c_attn). Targets (issue 6): llmkit
LoRA peak memory <= 60% of full fine-tuning, and llmkit LoRA step time <= 0.8x transformers + peft.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS = ["llmkit-full", "llmkit-lora", "llmkit-qlora", "llmkit-adapter", "llmkit-prefix", "peft-lora"]


def build_model(root: Path) -> Path:
    import transformers as tf

    path = root / "gpt2-124m"
    torch.manual_seed(0)
    tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=768, n_layer=12, n_head=12, vocab_size=50257,
                                     n_positions=1024)).save_pretrained(path)
    return path


def batch(batch_size: int, seq: int) -> torch.Tensor:
    return torch.randint(0, 50257, (batch_size, seq + 1), generator=torch.Generator().manual_seed(0))


def worker(config: str, model_dir: str, batch_size: int, seq: int, steps: int) -> dict:
    """Train `steps` + 1 steps of one configuration; step times and this process's peak RSS."""
    x = batch(batch_size, seq)
    if config == "peft-lora":
        import peft
        import transformers as tf

        model = tf.AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
        model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, target_modules=["c_attn"],
                                                           fan_in_fan_out=True, task_type="CAUSAL_LM"))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)

        def loss_fn():
            return model(input_ids=x[:, :-1], labels=x[:, :-1]).loss
    else:
        from llmkit.models.hf import load_pretrained
        from llmkit.peft import apply_bottleneck, apply_lora, apply_prefix_tuning, apply_qlora
        from llmkit.train.objectives import CausalLM
        from llmkit.train.optim import build_optimizer

        model = load_pretrained(model_dir)
        method = config.split("-", 1)[1]
        if method == "lora":
            apply_lora(model, r=16, alpha=32, targets=["q_proj", "k_proj", "v_proj"])
        elif method == "qlora":
            apply_qlora(model, r=16, alpha=32, targets=["q_proj", "k_proj", "v_proj"])
        elif method == "adapter":
            apply_bottleneck(model, size=64)
        elif method == "prefix":
            apply_prefix_tuning(model, 16)
        model.train()
        optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.0)
        objective = CausalLM()

        def loss_fn():
            return objective.loss(model, x)[0]
    load_peak = _peak_rss_gb()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"config": config, **timed_steps(loss_fn, optimizer, steps), "load_peak_rss_gb": load_peak,
            "trainable": trainable}


def timed_steps(loss_fn, optimizer, steps: int) -> dict:
    """One warm-up and `steps` timed optimizer steps: the median step time, the peak RSS over the
    steps (reset first, so loading does not count) and the last loss."""
    _reset_peak_rss()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times[1:]), "peak_rss_gb": _peak_rss_gb(), "loss": float(loss)}


def run_worker(script: str, config: str, model_dir: Path, *args: str) -> dict:
    """`script --worker config --model model_dir args...` in a fresh process; its JSON result."""
    r = subprocess.run([sys.executable, script, "--worker", config, "--model", str(model_dir), *args],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{config} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _reset_peak_rss() -> None:
    """Reset the kernel's high-water mark of this process's RSS (Linux: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_gb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.batch_size, args.seq, args.steps)))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp))
        for config in args.configs.split(","):
            results[config] = row = run_worker(__file__, config, model_dir, "--batch-size", str(args.batch_size),
                                               "--seq", str(args.seq), "--steps", str(args.steps))
            print(f"  {config:16s} {row['step_s']:6.2f} s/step   peak RSS {row['peak_rss_gb']:5.2f} GB "
                  f"(loading {row['load_peak_rss_gb']:4.2f})   trainable {row['trainable']:,}", flush=True)
    print(f"GPT-2 124M shape, batch {args.batch_size} x {args.seq}, {torch.get_num_threads()} threads")
    if "llmkit-lora" in results and "llmkit-full" in results:
        ratio = results["llmkit-lora"]["peak_rss_gb"] / results["llmkit-full"]["peak_rss_gb"]
        print(f"  LoRA peak memory / full fine-tuning: {ratio:.2f}  (target <= 0.60)")
        results["memory_ratio"] = ratio
    if "llmkit-lora" in results and "peft-lora" in results:
        ratio = results["llmkit-lora"]["step_s"] / results["peft-lora"]["step_s"]
        print(f"  llmkit LoRA step time / transformers + peft: {ratio:.2f}  (target <= 0.80)")
        results["speed_ratio"] = ratio
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
