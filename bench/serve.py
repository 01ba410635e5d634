"""Serving under load: `llmkit serve` on loopback, N concurrent streaming clients.

    python bench/serve.py                          # GPT-2 124M shape, 1 vs 16 clients, then 500 requests
    python bench/serve.py --model runs/quickstart --clients 1,4,16 --requests 200 --json out.json

For each client count it runs the clients for a bounded time (each sends streaming chat requests
back to back) and prints request throughput, output tokens/s, time to first token (TTFT) and time
per output token (TPOT) at p50/p99, and errors. Then it sends `--requests` short requests from 16
clients and counts errors. Targets (issue 7): 16 clients reach >= 4x the output tokens/s of one
client; 500 requests with 0 errors.
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


def one_request(port: int, model: str, prompt: str, max_tokens: int) -> dict:
    """One streaming chat request: TTFT, TPOT, output tokens, or the error."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.8, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    start = time.perf_counter()
    first = None
    tokens = 0
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
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter()
        conn.close()
    except Exception as e:  # a benchmark counts errors, it does not stop at them
        return {"error": repr(e)}
    end = time.perf_counter()
    first = first or end
    return {"ttft": first - start, "tpot": (end - first) / max(tokens - 1, 1), "tokens": tokens, "latency": end - start}


def load(port: int, model: str, clients: int, seconds: float, max_tokens: int, total: int | None = None) -> dict:
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
            r = one_request(port, model, PROMPTS[n % len(PROMPTS)], max_tokens)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model to serve (default: a random GPT-2 124M-shaped model)")
    ap.add_argument("--clients", default="1,16", help="client counts to measure, comma-separated")
    ap.add_argument("--seconds", type=float, default=60.0, help="time per client count")
    ap.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    ap.add_argument("--requests", type=int, default=500, help="requests of the error run (0: skip it)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    model = Path(args.model) if args.model else build_model(Path(tmp.name))
    port = free_port()
    env = {**os.environ, "LLMKIT_HOME": tmp.name}
    server = subprocess.Popen([sys.executable, "-m", "llmkit", "serve", "--model", str(model), "--name", "bench",
                               "--port", str(port), "--max-batch", str(args.max_batch), "--no-request-log"],
                              env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"the server did not start: {server.stderr.read()[-2000:]}")
                time.sleep(0.5)
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
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        tmp.cleanup()


if __name__ == "__main__":
    main()
