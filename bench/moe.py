"""Training speed of a mixture of experts against the dense model of equal active parameters, in one run.

    python bench/moe.py                       # the shapes of recipes/moe-vs-dense-tiny.yaml, and a larger pair
    python bench/moe.py --shapes tiny --repeats 9 --profile

Each step is what llmkit's Trainer does for a MoE model: forward with the routers recording, the
`CausalLM` loss plus the router losses (load balancing weighted 0.01), backward, and the fused AdamW
step (`build_optimizer`); fp32, dropout 0, on the same random batch for both models. The two models
are timed in interleaved repeats (the order alternating), so that a noisy neighbour slows both alike;
the figures are medians, and the ratio is the median of the per-repeat ratios. Target (the MoE issue):
MoE training tokens/s >= 0.7x the dense model's. `--profile` prints where a MoE step spends its time
(torch.profiler, by operator, self CPU time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmkit.models.config import preset  # noqa: E402
from llmkit.models.moe import record_router, router_losses  # noqa: E402
from llmkit.models.transformer import Transformer  # noqa: E402
from llmkit.train.objectives import CausalLM  # noqa: E402
from llmkit.train.optim import build_optimizer  # noqa: E402

# dense: a SwiGLU MLP of width H; moe: E experts of width H/k, so that the k a token passes through add up to H
SHAPES = {
    "tiny": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=4096, hidden=344, experts=4, k=2,
                 batch=16, seq=128),  # recipes/moe-vs-dense-tiny.yaml
    "tiny8": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=4096, hidden=344, experts=8, k=2,
                  batch=16, seq=128),
    "small": dict(dim=384, n_layers=6, n_heads=6, n_kv_heads=2, vocab_size=8192, hidden=1024, experts=8, k=2,
                  batch=8, seq=256),
}


def models(shape: dict) -> dict[str, Transformer]:
    s = dict(shape)
    hidden, experts, k = s.pop("hidden"), s.pop("experts"), s.pop("k")
    s.pop("batch"), s.pop("seq")
    dense = preset("tiny-llama", **s, hidden_dim=hidden, max_seq_len=1024, dropout=0.0)
    moe = preset("tiny-mixtral", **s, hidden_dim=hidden // k, expert_hidden_dim=hidden // k, n_experts=experts,
                 experts_per_token=k, max_seq_len=1024, dropout=0.0, router_aux_loss_coef=0.01)
    torch.manual_seed(0)
    return {"dense": Transformer(dense).train(), "moe": Transformer(moe).train()}


def train_step(model: Transformer, data: torch.Tensor):
    objective = CausalLM()
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.0)
    moe = record_router(model)

    def step() -> None:
        loss, _ = objective.loss(model, data)
        if moe:  # as the Trainer: the router losses join the objective's, and their statistics are read
            router = router_losses(model)
            if router.penalty is not None:
                loss = loss + router.penalty
            router.metrics()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench(name: str, args) -> dict:
    shape = SHAPES[name]
    ms = models(shape)
    data = torch.randint(0, shape["vocab_size"], (shape["batch"], shape["seq"] + 1))
    steps = {label: train_step(m, data) for label, m in ms.items()}
    for step in steps.values():  # warm-up: allocator, kernels, AdamW state
        step()
        step()
    tok = shape["batch"] * shape["seq"] * args.steps
    speeds: dict[str, list[float]] = {label: [] for label in steps}
    for r in range(args.repeats):
        for label in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            t = time.perf_counter()
            for _ in range(args.steps):
                steps[label]()
            speeds[label].append(tok / (time.perf_counter() - t))
    cfgs = {label: m.config for label, m in ms.items()}
    return {"shape": name, "speeds": speeds,
            "ratio": statistics.median(m / d for m, d in zip(speeds["moe"], speeds["dense"])),
            "params": {label: (c.num_parameters(), c.num_parameters(active=True)) for label, c in cfgs.items()},
            "models": ms, "data": data}


def profile(result: dict, steps: int = 5) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    for label in ("dense", "moe"):
        step = train_step(result["models"][label], result["data"])
        step()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        print(f"\n{result['shape']} {label}: {steps} steps, by self CPU time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="tiny,tiny8,small")
    ap.add_argument("--steps", type=int, default=5, help="training steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved repeats per model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="profile both models' steps (torch.profiler)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32; target: moe >= 0.7x dense tokens/s")
    print(f"{'shape':<7}{'dense params':>14}{'moe total / active':>22}{'dense tok/s':>13}{'moe tok/s':>11}"
          f"{'ratio':>8}{'  per-repeat ratios'}")
    results = []
    for name in args.shapes.split(","):
        r = bench(name, args)
        results.append(r)
        (dt, _), (mt, ma) = r["params"]["dense"], r["params"]["moe"]
        d, m = statistics.median(r["speeds"]["dense"]), statistics.median(r["speeds"]["moe"])
        each = " ".join(f"{a / b:.2f}" for a, b in zip(r["speeds"]["moe"], r["speeds"]["dense"]))
        print(f"{name:<7}{dt / 1e6:>13.2f}M{mt / 1e6:>11.2f}M / {ma / 1e6:.2f}M{d:>13,.0f}{m:>11,.0f}"
              f"{r['ratio']:>7.2f}x  {each}   {'ok' if r['ratio'] >= 0.7 else 'BELOW TARGET'}", flush=True)
    if args.profile:
        for r in results:
            profile(r)


if __name__ == "__main__":
    main()
