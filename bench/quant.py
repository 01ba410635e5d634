"""Weight-only quantisation: batch-1 greedy decode speed, Linear weight bytes and perplexity of
fp32 against int8 (fused batch-1 kernel) and int4, same model, one run.

    python bench/quant.py                         # random GPT-2 124M shape
    python bench/quant.py --model runs/quickstart --tokens 128

Target (issue 7): int8 batch-1 decode >= 1.5x llmkit's own fp32 decode, with the perplexity change
reported (llama.cpp's q8_0 runs about 2x its f32 on this CPU, ../shared/PEERS.md).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEXT = Path(__file__).read_text() * 2  # held-out text for perplexity: this file


def main() -> None:
    import llmkit
    from llmkit.quant.weight_only import quantize_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    path = args.model
    if path is None:
        from llmkit.pipelines.init import init_model

        path = Path(tmp.name) / "gpt2"
        init_model("gpt2", path, seed=0)
    base = None
    for method in ("fp32", "int8", "int4"):
        llm = llmkit.load(path)
        sizes = {"before": 0, "after": 0}
        if method != "fp32":
            sizes = quantize_model(llm.model, method)
        (lp, n), = llm.loglikelihood_rolling([TEXT])
        ppl = math.exp(-lp / n)
        llm.complete(["def main():"], max_new_tokens=4, temperature=0)  # warm-up (and compile)
        t0 = time.perf_counter()
        out = llm.complete(["def main():"], max_new_tokens=args.tokens, temperature=0, ignore_eos=True)[0]
        tps = len(out.token_ids) / (time.perf_counter() - t0)
        if base is None:
            base = (tps, ppl)
            print(f"  fp32   {tps:6.1f} tok/s   perplexity {ppl:.3f}")
        else:
            print(f"  {method}   {tps:6.1f} tok/s = {tps / base[0]:.2f}x fp32   Linear bytes {sizes['after'] / 2**20:.0f} MiB "
                  f"({sizes['after'] / sizes['before']:.0%} of fp32)   perplexity {ppl:.3f} "
                  f"({ppl / base[1] - 1:+.2%})")
    tmp.cleanup()


if __name__ == "__main__":
    main()
