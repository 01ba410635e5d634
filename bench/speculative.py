"""Speculative decoding speed: plain greedy decoding against prompt-lookup speculation (and a
draft model when given), batch 1, on the same model and prompt, in one run.

    python bench/speculative.py                                  # random GPT-2 124M shape, code continuation
    python bench/speculative.py --model runs/quickstart --draft runs/tiny --tokens 128

Prints tokens/s of each, the speed-up, the acceptance rate and tokens per target pass, and checks
that the greedy outputs are identical. Target (issue 7): >= 1.5x single-stream decode where the
draft agrees often (prompt lookup on code continuation).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CODE = '''def load_config(path):
    with open(path) as f:
        data = json.load(f)
    return Config(**data)


def save_config(config, path):
    with open(path, "w") as f:
        json.dump(config.to_dict(), f)


def load_'''


def main() -> None:
    import torch

    import llmkit
    from llmkit.infer import GenerationConfig
    from llmkit.infer.speculative import speculative_generate

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="target model (default: random GPT-2 124M shape)")
    ap.add_argument("--draft", default=None, help="a draft model too (same tokenizer)")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--k", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    tmp = tempfile.TemporaryDirectory()
    if args.model:
        llm = llmkit.load(args.model)
    else:
        from llmkit.pipelines.init import init_model

        llm = init_model("gpt2", Path(tmp.name) / "gpt2", seed=0)
    gen = GenerationConfig(max_new_tokens=args.tokens, temperature=0, ignore_eos=True)
    ids = llm.tokenize(CODE)
    llm.complete([ids], gen.replace(max_new_tokens=4))  # warm-up
    t0 = time.perf_counter()
    plain = llm.complete([ids], gen)[0]
    plain_s = time.perf_counter() - t0
    print(f"  plain greedy      {len(plain.token_ids) / plain_s:6.1f} tok/s")
    drafters = [("prompt-lookup", "prompt-lookup")]
    if args.draft:
        drafters.append((args.draft, llmkit.load(args.draft)))
    for name, draft in drafters:
        speculative_generate(llm, ids, gen.replace(max_new_tokens=4), draft=draft, k=args.k)  # warm-up
        t0 = time.perf_counter()
        r = speculative_generate(llm, ids, gen, draft=draft, k=args.k)
        s = time.perf_counter() - t0
        same = r.completion.token_ids == plain.token_ids
        print(f"  {name:17s} {len(r.completion.token_ids) / s:6.1f} tok/s  speed-up {plain_s / s:.2f}x  "
              f"acceptance {r.acceptance_rate:.0%}  {r.tokens_per_pass:.2f} tokens/pass  "
              f"identical output: {same}  (target >= 1.5x)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
