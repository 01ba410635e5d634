"""Weight-only quantisation: batch-1 greedy decode speed, Linear weight bytes and perplexity of
fp32 against int8 (fused batch-1 kernel) and int4, same model, one run.

    python bench/quant.py                         # random GPT-2 124M shape
    python bench/quant.py --model runs/quickstart --tokens 128

Target (issue 7): int8 batch-1 decode >= 1.5x llmkit's own fp32 decode, with the perplexity change
reported (llama.cpp's q8_0 runs about 2x its f32 on this CPU).
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
    ap.add_argument("--batches", default="1,8", help="decode batch sizes to time (default 1,8)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
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
        speeds = []
        for b in batches:
            prompts = [f"def main{i}():" for i in range(b)]
            llm.complete(prompts, max_new_tokens=4, temperature=0)  # warm-up (and compile)
            t0 = time.perf_counter()
            outs = llm.complete(prompts, max_new_tokens=args.tokens, temperature=0, ignore_eos=True)
            speeds.append(sum(len(o.token_ids) for o in outs) / (time.perf_counter() - t0))
        if base is None:
            base = (speeds, ppl)
            print(f"  fp32   {'   '.join(f'batch {b}: {tps:6.1f} tok/s' for b, tps in zip(batches, speeds))}"
                  f"   perplexity {ppl:.3f}")
        else:
            print(f"  {method}   " + "   ".join(f"batch {b}: {tps:6.1f} tok/s = {tps / ref:.2f}x fp32"
                                           for b, tps, ref in zip(batches, speeds, base[0]))
                  + f"   Linear bytes {sizes['after'] / 2**20:.0f} MiB ({sizes['after'] / sizes['before']:.0%} of fp32)"
                  f"   perplexity {ppl:.3f} ({ppl / base[1] - 1:+.2%})")
    tmp.cleanup()


if __name__ == "__main__":
    main()
