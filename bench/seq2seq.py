"""Encoder-decoder generation speed: llmkit against transformers' `generate` on the same T5, in one
run — greedy at batch 1 and batch 8, and beam search (4 beams) at batch 1.

    python bench/seq2seq.py                     # t5-small's shape, random weights, 64 new tokens
    python bench/seq2seq.py --new-tokens 32 --repeats 2 --json out.json

The model is built from transformers' T5Config with t5-small's sizes (60M parameters; gated-GELU
v1.1 feed-forward) and random weights, saved, and loaded by llmkit: nothing is downloaded. Both run
fp32 on the CPU with the same thread count, each warmed up first; the passes alternate between the
two and the best of `--repeats` counts. Every row generates exactly `--new-tokens` tokens (the end
token is suppressed on both sides: transformers' `min_new_tokens`, llmkit's `ignore_eos`); greedy
outputs are checked equal before anything is timed. The beam case is timed only: transformers masks
the end token after the log-softmax, llmkit's `ignore_eos` lets it be chosen and run on, so the two
searches may differ in a token (their equality with the end token allowed is
`tests/infer/test_seq2seq_generation.py`'s). Prints new tokens/s and the ratio (llmkit / transformers).

Run it on a quiet machine: on 2 cores a busy neighbour stalls both libraries' threads.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--source-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    import transformers

    from llmkit.infer.beam import beam_search
    from llmkit.infer.generate import TokenGeneration
    from llmkit.infer.sampling import GenerationConfig
    from llmkit.models.hf import load_pretrained

    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8,
                                   num_decoder_layers=8, num_heads=6, feed_forward_proj="gated-gelu",
                                   decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, dropout_rate=0.0)
    hf = transformers.T5ForConditionalGeneration(config).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = load_pretrained(d).eval()
    n = args.new_tokens
    g = torch.Generator().manual_seed(1)
    sources = torch.randint(2, 32000, (8, args.source_tokens), generator=g)

    def hf_run(batch: int, beams: int) -> list[list[int]]:
        with torch.inference_mode():
            out = hf.generate(input_ids=sources[:batch], max_new_tokens=n, min_new_tokens=n, num_beams=beams,
                              do_sample=False)
        return out[:, 1:].tolist()

    def ours_run(batch: int, beams: int) -> list[list[int]]:
        if beams > 1:
            gen = GenerationConfig(max_new_tokens=n, num_beams=beams, ignore_eos=True)
            return [beam_search(ours, sources[0].tolist(), gen, {1}, 0)[0].token_ids]
        run = TokenGeneration(ours, sources[:batch].tolist(), GenerationConfig(max_new_tokens=n, temperature=0,
                                                                                ignore_eos=True), {1}, 0)
        for _ in run:
            pass
        return run.generated

    rows = []
    for name, batch, beams in (("greedy, batch 1", 1, 1), ("greedy, batch 8", 8, 1), ("beam 4, batch 1", 1, 4)):
        a, b = hf_run(batch, beams), ours_run(batch, beams)  # warm-up, and the outputs must agree
        if beams == 1 and a != b:
            raise SystemExit(f"{name}: the outputs differ; timing them would compare different work")
        best = {"transformers": float("inf"), "llmkit": float("inf")}
        for _ in range(args.repeats):
            for lib, fn in (("transformers", hf_run), ("llmkit", ours_run)):
                t = time.perf_counter()
                fn(batch, beams)
                best[lib] = min(best[lib], time.perf_counter() - t)
        tokens = batch * n
        row = {"case": name, "transformers_tok_s": tokens / best["transformers"], "llmkit_tok_s": tokens / best["llmkit"]}
        row["ratio"] = row["llmkit_tok_s"] / row["transformers_tok_s"]
        rows.append(row)
        print(f"{name:16s}  transformers {row['transformers_tok_s']:7.1f} tok/s   llmkit {row['llmkit_tok_s']:7.1f} "
              f"tok/s   ratio {row['ratio']:.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
