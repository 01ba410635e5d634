"""Generation speed: llmkit against transformers on the same random weights, in one run.

    python bench/generate.py                 # GPT-2-124M and a Llama-shaped 124M with GQA
    python bench/generate.py --models gpt2 --new-tokens 64 --json out.json

For each model it prints prefill tokens/s on 512 tokens and greedy decode tokens/s at batch 1
and batch 8 (128 new tokens after a 16-token prompt) for both libraries, the ratio, and the
memory-bandwidth bound of batch-1 decode (weight bytes / measured copy bandwidth).
Targets (issue 3): decode at batch 1 >= 1.3x transformers, prefill >= 1.0x.
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

from llmkit.infer.generate import TokenGeneration  # noqa: E402
from llmkit.infer.sampling import GenerationConfig  # noqa: E402
from llmkit.models.hf import load_pretrained  # noqa: E402


def hf_config(name: str):
    import transformers as tf

    if name == "gpt2":  # GPT-2 124M
        return tf.GPT2Config(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024)
    if name == "llama":  # Llama-shaped 124M: GQA with 4 KV heads, 32k vocabulary
        return tf.LlamaConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                              intermediate_size=2048, vocab_size=32000, max_position_embeddings=2048)
    raise SystemExit(f"unknown model {name!r}: use gpt2 or llama")


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def copy_bandwidth(nbytes: int = 512 * 2**20) -> float:
    """Bytes per second of a large tensor copy (each byte read once and written once)."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    return nbytes / best_time(lambda: dst.copy_(src), 5)


def bench_model(name: str, args) -> dict:
    import transformers as tf

    torch.manual_seed(0)
    hf = tf.AutoModelForCausalLM.from_config(hf_config(name), attn_implementation="sdpa").eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = load_pretrained(d)
    vocab = hf.config.vocab_size
    g = torch.Generator().manual_seed(0)
    long_prompt = torch.randint(0, vocab, (1, args.prefill_tokens), generator=g)
    prompt = torch.randint(0, vocab, (8, args.prompt_tokens), generator=g)
    new = args.new_tokens
    res: dict = {"model": name, "params": ours.num_parameters()}

    # ---- prefill: one forward over the long prompt (the first token's logits)
    with torch.inference_mode():
        hf(long_prompt, logits_to_keep=1)
        ours(long_prompt, logits_to_keep=1)
        res["hf_prefill"] = args.prefill_tokens / best_time(lambda: hf(long_prompt, logits_to_keep=1), args.repeats)
        res["ours_prefill"] = args.prefill_tokens / best_time(lambda: ours(long_prompt, logits_to_keep=1), args.repeats)

    # ---- greedy decode; both generate exactly `new` tokens
    gen = GenerationConfig(max_new_tokens=new, temperature=0, ignore_eos=True)
    for batch in (1, 8):
        p = prompt[:batch]

        def run_hf():
            with torch.inference_mode():
                out = hf.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=new, eos_token_id=None,
                                  do_sample=False, pad_token_id=0)
            assert out.shape[1] == p.shape[1] + new

        def run_ours():
            steps = sum(1 for _ in TokenGeneration(ours, p.tolist(), gen))
            assert steps == new

        res[f"hf_decode_b{batch}"] = batch * new / best_time(run_hf, args.repeats)
        res[f"ours_decode_b{batch}"] = batch * new / best_time(run_ours, args.repeats)

    # ---- same tokens? (greedy, batch 1)
    with torch.inference_mode():
        hf_tokens = hf.generate(prompt[:1], attention_mask=torch.ones_like(prompt[:1]), max_new_tokens=32,
                                eos_token_id=None, do_sample=False, pad_token_id=0)[0, args.prompt_tokens:].tolist()
    run = TokenGeneration(ours, prompt[:1].tolist(), gen.replace(max_new_tokens=32))
    for _ in run:
        pass
    res["same_greedy_tokens"] = run.generated[0] == hf_tokens
    res["weight_bytes"] = sum(p.numel() * p.element_size() for p in {id(p): p for p in ours.parameters()}.values())
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gpt2,llama")
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bw = copy_bandwidth()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, copy bandwidth {bw / 1e9:.1f} GB/s")
    results = []
    for name in args.models.split(","):
        r = bench_model(name, args)
        r["bandwidth_bound_b1"] = bw / r["weight_bytes"]
        results.append(r)
        print(f"\n{name}: {r['params'] / 1e6:.1f}M parameters, {r['weight_bytes'] / 1e6:.0f} MB of fp32 weights, "
              f"greedy tokens identical to transformers: {r['same_greedy_tokens']}")
        print(f"  {'work':<22}{'transformers':>14}{'llmkit':>10}{'ratio':>8}")
        for key, label in (("prefill", f"prefill {args.prefill_tokens} tok/s"), ("decode_b1", "decode b1 tok/s"),
                           ("decode_b8", "decode b8 tok/s")):
            h, o = r[f"hf_{key}"], r[f"ours_{key}"]
            print(f"  {label:<22}{h:>14.1f}{o:>10.1f}{o / h:>7.2f}x")
        bound = r["bandwidth_bound_b1"]
        print(f"  bandwidth bound b1: {bound:.1f} tok/s; llmkit reaches {r['ours_decode_b1'] / bound:.0%} of it")
    if args.json:
        Path(args.json).write_text(json.dumps({"copy_bandwidth": bw, "results": results}, indent=2))


if __name__ == "__main__":
    main()
