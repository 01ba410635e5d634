"""Training speed: llmkit against transformers on the same random-init models, in one run.

    python bench/train.py                   # GPT-2-style 6x384 (vocab 8192) and GPT-2 124M, seq 256
    python bench/train.py --models small --steps 5

Each step is forward, cross-entropy, backward and AdamW (fp32, dropout 0), on the same batches:
transformers with torch's default AdamW (what its Trainer uses), llmkit with its own training path
(`CausalLM` objective, `build_optimizer`: the fused AdamW kernel).
Prints training tokens/s and MFU (6·N + attention FLOPs per token, against this machine's fp32
matmul peak measured in the same run) for both libraries and the ratio. Target (issue 4): llmkit
>= 1.2x transformers on this CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmkit.models.hf import load_pretrained  # noqa: E402
from llmkit.train.objectives import CausalLM  # noqa: E402
from llmkit.train.optim import build_optimizer  # noqa: E402
from llmkit.train.precision import matmul_flops  # noqa: E402

SHAPES = {"small": dict(n_embd=384, n_layer=6, n_head=6, vocab_size=8192, batch=8),
          "gpt2": dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, batch=4)}


def time_steps(step, n: int) -> float:
    step()  # warm-up
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t)
    return best


def bench(name: str, args) -> dict:
    import transformers as tf

    shape = dict(SHAPES[name])
    batch = shape.pop("batch")
    seq = args.seq_len
    cfg = tf.GPT2Config(**shape, n_positions=max(1024, seq), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    hf = tf.GPT2LMHeadModel(cfg).train()
    hf.config._attn_implementation = "sdpa"
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = load_pretrained(d).train()
    data = torch.randint(0, shape["vocab_size"], (batch, seq + 1))
    x, y = data[:, :-1], data[:, 1:]
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.0)  # torch's default, as HF's Trainer uses
    our_opt = build_optimizer(ours, lr=1e-4, weight_decay=0.0)  # what llmkit's Trainer uses
    objective = CausalLM()

    def hf_step():
        logits = hf(x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)

    def our_step():
        loss, _ = objective.loss(ours, data)
        loss.backward()
        our_opt.step()
        our_opt.zero_grad(set_to_none=True)

    with torch.no_grad():  # same weights, same function
        diff = (hf(x).logits - ours(x)).abs().max().item()
    flops_per_token = ours.config.flops_per_token(seq, training=True)
    res = {"model": name, "params": ours.num_parameters(), "max_logit_diff": diff}
    for label, step in (("hf", hf_step), ("ours", our_step)):
        t = time_steps(step, args.steps)
        res[f"{label}_tok_s"] = batch * seq / t
        res[f"{label}_mfu"] = flops_per_token * batch * seq / t / args.peak
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="small,gpt2")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per library (best is kept)")
    args = ap.parse_args()
    args.peak = max(matmul_flops("cpu", torch.float32, n) for n in (1024, 2048))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 matmul peak {args.peak / 1e9:.0f} GFLOP/s")
    print(f"{'model':<8}{'params':>10}{'transformers tok/s':>20}{'MFU':>7}{'llmkit tok/s':>14}{'MFU':>7}{'ratio':>8}")
    for name in args.models.split(","):
        r = bench(name, args)
        print(f"{name:<8}{r['params'] / 1e6:>9.1f}M{r['hf_tok_s']:>20.0f}{r['hf_mfu']:>7.0%}{r['ours_tok_s']:>14.0f}"
              f"{r['ours_mfu']:>7.0%}{r['ours_tok_s'] / r['hf_tok_s']:>7.2f}x   (max logit diff {r['max_logit_diff']:.1e})")


if __name__ == "__main__":
    main()
