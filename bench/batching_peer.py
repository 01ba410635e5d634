"""Continuous batching against transformers' own, same weights, same prompts, same load, in one run:
llmkit's serving engine and transformers' continuous-batching manager (`generate_batch`, paged SDPA
attention), each given the same chat requests with `--clients` of them in flight at once, greedy, a fixed
number of new tokens each (end-of-text ignored), in this process (no HTTP on either side).

    python bench/batching_peer.py                                   # SmolLM2-135M-Instruct, 16 in flight
    python bench/batching_peer.py --model smollm2-135m-instruct --clients 16 --requests 32 --tokens 64

Prints output tokens/s of each (after a warm-up call on each side), the ratio, and on how many requests
the two agree token for token. Target (issue 33): llmkit >= 1.5x transformers at 16 clients.

With `--llama-server PATH` llama.cpp's own server (a `llama-server` binary built from llama.cpp's source;
llama-cpp-python's server has no parallel slots) runs too, over loopback HTTP, with `--clients` parallel
slots and continuous batching, on llmkit's F32 GGUF export of the same weights and the same token ids
(its /completion endpoint, greedy, end-of-text ignored). One way to build it: from the llama.cpp source in
llama-cpp-python's sdist (`pip download --no-deps --no-binary :all: llama-cpp-python`, unpacked),
    cmake -S vendor/llama.cpp -B build -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF
    cmake --build build --target llama-server -j2          # ~15 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTIONS = ["Write a Python function that reverses a list.", "Explain what a hash table is.",
             "List three uses of the os module.", "What does `yield` do in Python?", "Describe a binary search.",
             "How do I read a JSON file in Python?", "What is the difference between a list and a tuple?",
             "Give two tips for writing clear commit messages."]


def llama_server(binary: str, gguf: Path, prompts: list[list[int]], clients: int, tokens: int) -> tuple[float, list]:
    """Output tokens/s of llama.cpp's server given `prompts` (token ids) with `clients` in flight, and its tokens."""
    from bench.serve import free_port

    port = free_port()
    ctx = max(len(p) for p in prompts) + tokens + 16
    threads = str(os.cpu_count() or 1)
    cmd = [binary, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", str(clients),
           "-c", str(clients * ctx), "-t", threads, "-tb", threads, "--no-webui", "-cb"]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log, subprocess.Popen(cmd, stdout=log, stderr=log) as proc:
        try:
            for _ in range(600):
                try:
                    with urllib.request.urlopen(url + "/health", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.2)
            else:
                log.seek(0)
                raise RuntimeError(f"llama-server did not start: {log.read()[-2000:].decode(errors='replace')}")

            def ask(ids: list[int], n: int = tokens) -> list[int]:
                body = {"prompt": ids, "n_predict": n, "temperature": 0, "top_k": 1, "ignore_eos": True,
                        "cache_prompt": False, "return_tokens": True}
                req = urllib.request.Request(url + "/completion", json.dumps(body).encode(),
                                             {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=600) as r:
                    return json.load(r)["tokens"]

            ask(prompts[0], 4)  # warm-up
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                outs = list(pool.map(ask, prompts))
            return sum(len(o) for o in outs) / (time.perf_counter() - t0), outs
        finally:
            proc.terminate()


def compare_transformers(args, path: Path, prompts: list, ours: list[list[int]], ours_tps: float) -> None:
    """transformers' continuous-batching manager on the same weights and prompts, `args.clients` at a time."""
    import torch
    import transformers

    kw = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
    where = str(path.parent) if path.suffix == ".gguf" else str(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, attn_implementation="paged|sdpa",
                                                           **kw).eval()
    hf_gen = transformers.GenerationConfig(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                                           eos_token_id=None, pad_token_id=0, max_batch_tokens=args.clients * 64,
                                           scheduler="fifo")
    with torch.inference_mode():
        hf.generate_batch(inputs=prompts[:2], generation_config=hf_gen, progress_bar=False)  # warm-up
        theirs: list[list[int]] = []
        t0 = time.perf_counter()
        for i in range(0, len(prompts), args.clients):  # `clients` requests handed to the manager at a time
            out = hf.generate_batch(inputs=prompts[i:i + args.clients], generation_config=hf_gen, progress_bar=False)
            theirs += [list(o.generated_tokens) for o in sorted(out.values(), key=lambda o: int(o.request_id[4:]))]
        theirs_s = time.perf_counter() - t0
    theirs_tps = sum(len(t) for t in theirs) / theirs_s
    print(f"  transformers generate_batch ({args.clients} at a time): {sum(len(t) for t in theirs)} tokens in "
          f"{theirs_s:.1f} s, {theirs_tps:.1f} output tok/s", flush=True)
    same = sum(a == b for a, b in zip(ours, theirs))
    print(f"  llmkit / transformers output tokens/s: {ours_tps / theirs_tps:.2f}x (target >= 1.5); identical greedy "
          f"outputs {same}/{len(prompts)}")


def main() -> None:
    import llmkit
    from llmkit.infer import GenerationConfig
    from llmkit.infer.engine import Engine
    from llmkit.models.resolve import resolve_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a GGUF file or a model name (default SmolLM2)")
    ap.add_argument("--clients", type=int, default=16, help="requests in flight at once (default 16)")
    ap.add_argument("--requests", type=int, default=32, help="requests in all (default 32)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per request (default 64)")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--llama-server", default=None, metavar="PATH",
                    help="a llama-server binary: also measure llama.cpp's server (see above)")
    args = ap.parse_args()
    path = Path(resolve_model(args.model))
    llm = llmkit.load(path)
    prompts = [llm.chat_prompt([{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"}])
               for i in range(args.requests)]
    gen = GenerationConfig(max_new_tokens=args.tokens, temperature=0, ignore_eos=True)

    engine = Engine(llm, max_batch=args.clients)
    engine.generate(prompts[:2], gen.replace(max_new_tokens=4))  # warm-up
    t0 = time.perf_counter()
    ours = [c.token_ids for c in engine.generate(prompts, gen)]
    ours_s = time.perf_counter() - t0
    ours_tps = sum(len(t) for t in ours) / ours_s
    print(f"  llmkit engine (max_batch {args.clients}): {sum(len(t) for t in ours)} tokens in {ours_s:.1f} s, "
          f"{ours_tps:.1f} output tok/s", flush=True)

    if not args.skip_transformers:
        compare_transformers(args, path, prompts, ours, ours_tps)
    if args.llama_server:
        from llmkit.models.gguf import save_gguf

        with tempfile.TemporaryDirectory() as tmp:
            gguf = save_gguf(llm.model, llm.tokenizer, Path(tmp) / "model-f32.gguf", type="f32")
            cpp_tps, cpp = llama_server(args.llama_server, gguf, [list(p) for p in prompts], args.clients, args.tokens)
        same = sum(a == b for a, b in zip(ours, cpp))
        print(f"  llama.cpp server ({args.clients} parallel slots, HTTP, F32 export): {cpp_tps:.1f} output tok/s; "
              f"llmkit / llama.cpp {ours_tps / cpp_tps:.2f}x; identical greedy outputs {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
