"""Serving under load: `llmkit serve` on loopback, N concurrent streaming clients.

    python bench/serve.py                          # GPT-2 124M shape, 1 vs 16 clients, then 500 requests
    python bench/serve.py --model runs/quickstart --clients 1,4,16 --requests 200 --json out.json

For each client count it runs the clients for a bounded time (each sends streaming chat requests
back to back) and prints request throughput, output tokens/s, time to first token (TTFT) and time
per output token (TPOT) at p50/p99, and errors. Then it sends `--requests` short requests from 16
clients and counts errors. Targets (issue 7): 16 clients reach >= 4x the output tokens/s of one
client; 500 requests with 0 errors.

    python bench/serve.py --model smollm2-135m-instruct --shared-prefix 1024   # prefix caching, on vs off
    python bench/serve.py --model smollm2-135m-instruct --mixed                # chunked vs serial prefill

With --shared-prefix N every request carries the same system prompt of about N tokens and its own short
question; the server runs twice in one process tree, with the prefix cache and with --no-prefix-cache,
16 clients each, and the TTFT p50 ratio and the hit rate (from /metrics) are printed. Target (issue 33):
TTFT p50 >= 5x lower with the cache. With --mixed the prompts run from 20 to 1,500 tokens (no shared
prefix, the prefix cache off) and the server runs with chunked and with serial prefill; target (issue 33):
chunked TTFT p50 <= 1/3 of serial, output tokens/s not lower.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = ["Write a Python function that reverses a list.", "Explain what a hash table is.",
           "def fibonacci(n):", "List three uses of the os module.", "What does `yield` do in Python?",
           "import json\n# read a config file", "Describe a binary search.", "class Stack:"]


def build_model(root: Path) -> Path:
    """A random-weight model of GPT-2 124M's shape with a small trained tokenizer (vocab kept at 50257)."""
    from llmkit.pipelines.init import init_model

    path = root / "gpt2-124m"
    init_model("gpt2", path, seed=0)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def one_request(port: int, model: str, prompt: str, max_tokens: int, system: str | None = None) -> dict:
    """One streaming chat request: TTFT, TPOT, output and prompt tokens, or the error."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    body = {"model": model, "messages": messages, "max_tokens": max_tokens,
            "temperature": 0.8, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    start = time.perf_counter()
    first = None
    tokens = prompt_tokens = 0
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            return {"error": f"HTTP {resp.status}: {resp.read()[:200]!r}"}
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens, prompt_tokens = chunk["usage"]["completion_tokens"], chunk["usage"]["prompt_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter()
        conn.close()
    except Exception as e:  # a benchmark counts errors, it does not stop at them
        return {"error": repr(e)}
    end = time.perf_counter()
    first = first or end
    return {"ttft": first - start, "tpot": (end - first) / max(tokens - 1, 1), "tokens": tokens, "latency": end - start,
            "prompt_tokens": prompt_tokens}


def load(port: int, model: str, clients: int, seconds: float, max_tokens: int, total: int | None = None,
         system: str | None = None, prompt_of=None) -> dict:
    """`clients` threads sending requests back to back for `seconds` (or until `total` are done)."""
    results: list[dict] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    def client(i: int) -> None:
        while time.perf_counter() < deadline:
            n = next(counter)
            if total is not None and n >= total:
                return
            question = prompt_of(n) if prompt_of else PROMPTS[n % len(PROMPTS)] + (f" (request {n})" if system else "")
            r = one_request(port, model, question, max_tokens, system)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    return {"clients": clients, "requests": len(results), "errors": len(results) - len(ok),
            "error_examples": [r["error"] for r in results if "error" in r][:3], "seconds": elapsed,
            "requests_per_s": len(ok) / elapsed, "output_tokens_per_s": sum(r["tokens"] for r in ok) / elapsed,
            "ttft_p50": percentile([r["ttft"] for r in ok], 50), "ttft_p99": percentile([r["ttft"] for r in ok], 99),
            "tpot_p50": percentile([r["tpot"] for r in ok], 50), "tpot_p99": percentile([r["tpot"] for r in ok], 99)}


def shared_system_prompt(tokens: int) -> str:
    """A system prompt of roughly `tokens` tokens (numbered house rules, about 26 tokens each in SmolLM2's tokenizer)."""
    rules = [f"Rule {i}: visitors to berth {i % 40 + 1} sign the harbour log before boarding and keep to the "
             f"marked walkway." for i in range(1, tokens // 26 + 1)]
    return "You are the harbour office assistant. " + " ".join(rules)


def start_server(model: Path, port: int, env: dict, max_batch: int, extra: list[str]) -> subprocess.Popen:
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe nobody reads, which could fill and stall it
    server = subprocess.Popen([sys.executable, "-m", "llmkit", "serve", "--model", str(model), "--name", "bench",
                               "--port", str(port), "--max-batch", str(max_batch), "--no-request-log", *extra],
                              env=env, stderr=log, text=True)
    deadline = time.time() + 300
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
            return server
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                log.seek(0)
                raise SystemExit(f"the server did not start: {log.read()[-2000:]}")
            time.sleep(0.5)


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def hit_rate(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("llmkit_prefix_cache_hit_rate"))


def shared_prefix_run(model: Path, env: dict, args: argparse.Namespace) -> dict:
    """16 clients, one long shared system prompt: the server with the prefix cache, then without."""
    system = shared_system_prompt(args.shared_prefix)
    out: dict = {}
    for name, extra in (("cache", []), ("no_cache", ["--no-prefix-cache"])):
        port = free_port()
        server = start_server(model, port, env, args.max_batch, extra)
        try:
            warm = one_request(port, "bench", "Hello", 4, system)  # also fills the cache, as a first user would
            r = load(port, "bench", 16, args.seconds, args.max_tokens, system=system)
            r["system_prompt_tokens"], r["hit_rate"] = warm.get("prompt_tokens"), hit_rate(port)
            out[name] = r
            print(f"  {name:8s}: prompt {r['system_prompt_tokens']} tokens, {r['requests']} requests "
                  f"({r['errors']} errors), {r['output_tokens_per_s']:.1f} output tok/s, TTFT p50 "
                  f"{r['ttft_p50'] * 1000:.0f} ms p99 {r['ttft_p99'] * 1000:.0f} ms, hit rate {r['hit_rate']:.3f}",
                  flush=True)
        finally:
            stop_server(server)
    out["ttft_p50_ratio"] = out["no_cache"]["ttft_p50"] / out["cache"]["ttft_p50"]
    print(f"  TTFT p50 without / with the prefix cache: {out['ttft_p50_ratio']:.1f}x  (target >= 5)")
    return out


MIXED_LENGTHS = (20, 60, 150, 300, 600, 1000, 1500)  # prompt tokens, cycled over the requests


def mixed_prompt(n: int) -> str:
    """Request `n`'s prompt: unique from its first words (so no prefix is shared) and about
    MIXED_LENGTHS[n % 7] tokens long in SmolLM2's tokenizer."""
    target = MIXED_LENGTHS[n % len(MIXED_LENGTHS)]
    words = [f"Request {n}: summarise this log."] + [f"line {i}: job {n}-{i} finished in {i % 9 + 1} s."
                                                      for i in range(max(0, target // 16))]
    return " ".join(words)


def mixed_run(model: Path, env: dict, args: argparse.Namespace) -> dict:
    """16 clients, prompts from 20 to 1,500 tokens: chunked prefill, then the serial one, same prompts."""
    out: dict = {}
    for name in ("chunked", "serial"):
        port = free_port()
        server = start_server(model, port, env, args.max_batch, ["--prefill", name, "--no-prefix-cache",
                                                                  "--prefill-chunk", str(args.prefill_chunk)])
        try:
            one_request(port, "bench", "Hello", 4)
            r = load(port, "bench", 16, args.seconds, args.max_tokens, prompt_of=mixed_prompt)
            out[name] = r
            print(f"  {name:8s}: {r['requests']} requests ({r['errors']} errors), {r['output_tokens_per_s']:.1f} output "
                  f"tok/s, TTFT p50 {r['ttft_p50'] * 1000:.0f} ms p99 {r['ttft_p99'] * 1000:.0f} ms, TPOT p50 "
                  f"{r['tpot_p50'] * 1000:.0f} ms p99 {r['tpot_p99'] * 1000:.0f} ms", flush=True)
        finally:
            stop_server(server)
    out["ttft_p50_ratio"] = out["chunked"]["ttft_p50"] / out["serial"]["ttft_p50"]
    out["tokens_per_s_ratio"] = out["chunked"]["output_tokens_per_s"] / out["serial"]["output_tokens_per_s"]
    print(f"  chunked / serial: TTFT p50 {out['ttft_p50_ratio']:.2f} (target <= 0.33), output tok/s "
          f"{out['tokens_per_s_ratio']:.2f} (target >= 1)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model to serve (default: a random GPT-2 124M-shaped model)")
    ap.add_argument("--clients", default="1,16", help="client counts to measure, comma-separated")
    ap.add_argument("--seconds", type=float, default=60.0, help="time per client count")
    ap.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    ap.add_argument("--requests", type=int, default=500, help="requests of the error run (0: skip it)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--shared-prefix", type=int, default=0, metavar="N",
                    help="instead: 16 clients sharing an N-token system prompt, prefix cache on vs off")
    ap.add_argument("--mixed", action="store_true",
                    help="instead: 16 clients with prompts of 20 to 1,500 tokens, chunked vs serial prefill")
    ap.add_argument("--prefill-chunk", type=int, default=2048, help="with --mixed: the server's --prefill-chunk")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    model = Path(args.model) if args.model else build_model(Path(tmp.name))
    # a named model is found in the user's model cache; the built one needs none
    env = {**os.environ, "LLMKIT_HOME": os.environ.get("LLMKIT_HOME", tmp.name) if args.model else tmp.name}
    if args.shared_prefix or args.mixed:
        try:
            out = shared_prefix_run(model, env, args) if args.shared_prefix else mixed_run(model, env, args)
            if args.json:
                Path(args.json).write_text(json.dumps(out, indent=2))
        finally:
            tmp.cleanup()
        return
    port = free_port()
    server = start_server(model, port, env, args.max_batch, [])
    try:
        one_request(port, "bench", PROMPTS[0], 4)  # warm-up
        out: dict = {"runs": []}
        for n in [int(c) for c in args.clients.split(",")]:
            r = load(port, "bench", n, args.seconds, args.max_tokens)
            out["runs"].append(r)
            print(f"  {n:3d} clients: {r['requests']:4d} requests ({r['errors']} errors), "
                  f"{r['requests_per_s']:.2f} req/s, {r['output_tokens_per_s']:7.1f} output tok/s, "
                  f"TTFT p50 {r['ttft_p50'] * 1000:.0f} ms p99 {r['ttft_p99'] * 1000:.0f} ms, "
                  f"TPOT p50 {r['tpot_p50'] * 1000:.0f} ms p99 {r['tpot_p99'] * 1000:.0f} ms", flush=True)
        if args.requests:
            r = load(port, "bench", 16, 3600, 8, total=args.requests)
            out["error_run"] = r
            print(f"  error run: {r['requests']} requests from 16 clients in {r['seconds']:.0f} s, "
                  f"{r['errors']} errors {r['error_examples']}", flush=True)
        runs = {r["clients"]: r for r in out["runs"]}
        if 1 in runs and max(runs) > 1:
            top = max(runs)
            out["scaling"] = runs[top]["output_tokens_per_s"] / runs[1]["output_tokens_per_s"]
            print(f"  {top} clients / 1 client output tokens/s: {out['scaling']:.2f}  (target >= 4)")
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
    finally:
        stop_server(server)
        tmp.cleanup()


if __name__ == "__main__":
    main()
