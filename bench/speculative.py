"""Speculative decoding speed: plain greedy decoding against prompt-lookup speculation (and a
draft model when given), batch 1, on the same model and prompt, in one run.

    python bench/speculative.py                                  # random GPT-2 124M shape, code continuation
    python bench/speculative.py --model runs/quickstart --draft runs/tiny --tokens 128

Prints tokens/s of each, the speed-up, the acceptance rate and tokens per target pass, and checks
that the greedy outputs are identical. Target (issue 7): >= 1.5x single-stream decode where the
draft agrees often (prompt lookup on code continuation).

    python bench/speculative.py --served --model smollm2-135m-instruct

--served measures it behind the API instead: `llmkit serve` with and without `--draft prompt-lookup`,
both up at once, one client sending each of the shipped input-grounded chat requests
(llmkit/data/builtin/grounded: quote, extract, reformat, edit) at temperature 0 to one and then the
other; it prints output tokens/s of each, the speed-up, the acceptance rate from /metrics and whether
every answer is identical. Target (issue 33):
>= 1.5x at one client.
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


GROUNDED = Path(__file__).resolve().parents[1] / "llmkit" / "data" / "builtin" / "grounded" / "prompts.jsonl"


def served(args) -> None:
    """One client, the grounded prompts in turn, each sent to a server without a draft and then to one with
    prompt lookup (both up at once, requests alternating, so that a noisy machine's drift hits both alike)."""
    import json
    import os
    import urllib.request

    from bench.serve import free_port, start_server, stop_server

    prompts = [json.loads(line)["prompt"] for line in GROUNDED.read_text().splitlines() if line.strip()]
    sides = {"plain": [], "prompt-lookup": ["--draft", "prompt-lookup", "--speculate", str(args.k)]}
    ports = {name: free_port() for name in sides}
    servers = []
    try:
        for name, extra in sides.items():
            servers.append(start_server(Path(args.model), ports[name], {**os.environ}, 1, extra))

        def ask(name: str, prompt: str, tokens: int) -> tuple[dict, float]:
            body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
                    "temperature": 0}
            req = urllib.request.Request(f"http://127.0.0.1:{ports[name]}/v1/chat/completions",
                                         json.dumps(body).encode(), {"Content-Type": "application/json"})
            t0 = time.perf_counter()
            reply = json.loads(urllib.request.urlopen(req, timeout=600).read())
            return reply, time.perf_counter() - t0

        for name in sides:
            ask(name, prompts[0], 4)  # warm-up
        runs = {name: {"seconds": 0.0, "tokens": 0, "texts": []} for name in sides}
        for prompt in prompts:
            for name in sides:
                reply, seconds = ask(name, prompt, args.tokens)
                runs[name]["seconds"] += seconds
                runs[name]["tokens"] += reply["usage"]["completion_tokens"]
                runs[name]["texts"].append(reply["choices"][0]["message"]["content"])
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{ports['prompt-lookup']}/metrics", timeout=30).read().decode()
        rate = next(float(line.split()[-1]) for line in metrics.splitlines()
                    if line.startswith("llmkit_draft_acceptance_rate"))
    finally:
        for server in servers:
            stop_server(server)
    for name, r in runs.items():
        print(f"  {name:14s} {len(prompts)} requests, {r['tokens']} output tokens in {r['seconds']:.1f} s: "
              f"{r['tokens'] / r['seconds']:.1f} tok/s", flush=True)
    plain, spec = runs["plain"], runs["prompt-lookup"]
    same = sum(a == b for a, b in zip(plain["texts"], spec["texts"]))
    speedup = (spec["tokens"] / spec["seconds"]) / (plain["tokens"] / plain["seconds"])
    print(f"  served speed-up at one client: {speedup:.2f}x (target >= 1.5), draft acceptance {rate:.0%}; identical "
          f"answers {same}/{len(prompts)}")


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
    ap.add_argument("--served", action="store_true",
                    help="measure behind `llmkit serve` on the shipped grounded prompts (give --model)")
    args = ap.parse_args()
    if args.served:
        if not args.model:
            ap.error("--served needs --model (e.g. smollm2-135m-instruct)")
        return served(args)
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
