"""Tool-call generation against plain chat on SmolLM2-135M-Instruct, in one run: batch-1 greedy
decode tokens/s of `LocalLLM.chat` with tools under each `tool_choice` (the grammar is an xgrammar
structural tag: "required" and a named function constrain every token, "auto" and "none" constrain
free text only at call markers) against the same conversations without tools.

    python bench/tool_calls.py                 # pulls smollm2-135m-instruct into the model cache
    python bench/tool_calls.py --repeats 3

Answers differ in length (a forced call is short, free text runs to max_tokens), so what is compared
is decode tokens/s: the tokens after the first over the time after the first. Modes run interleaved,
question by question, so a noisy neighbour slows them alike. Target (the tools issue): every mode
>= 0.8x plain chat.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmkit.infer.generate import Timings  # noqa: E402

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The current weather of a city",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string"},
                                          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                                          "required": ["city", "unit"]}}},
    {"type": "function", "function": {"name": "multiply", "description": "Multiply two integers",
                                      "parameters": {"type": "object", "properties": {
                                          "a": {"type": "integer"}, "b": {"type": "integer"}},
                                          "required": ["a", "b"]}}},
]
QUESTIONS = ["What's the weather like in Paris right now?", "How much is 12 times 7?",
             "Is it cold in Oslo today, in fahrenheit?", "Multiply 3 by 14, please."]
MODES = {"plain": None, "none": "none", "auto": "auto", "required": "required",
         "named": {"type": "function", "function": {"name": "multiply"}}}


def run(llm, question: str, choice, max_tokens: int) -> tuple[int, float]:
    """(decode steps, decode seconds) of one greedy streamed reply."""
    t = Timings()
    messages = [{"role": "user", "content": question}]
    options = {} if choice is None else {"tools": TOOLS, "tool_choice": choice, "parallel_tool_calls": False}
    for _ in llm.chat(messages, stream=True, timings=t, temperature=0, max_new_tokens=max_tokens, **options):
        pass
    return max(0, t.generated_tokens - 1), t.decode_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    import llmkit

    torch.set_num_threads(args.threads)
    llm = llmkit.load(args.model)
    for question in QUESTIONS[:1]:  # warm-up: grammar compilers and the first prefills
        for choice in MODES.values():
            run(llm, question, choice, 4)
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(args.repeats):
        steps = {m: 0 for m in MODES}
        seconds = {m: 0.0 for m in MODES}
        for i, question in enumerate(QUESTIONS):
            order = list(MODES) if (i + r) % 2 == 0 else list(reversed(MODES))
            for mode in order:
                n, s = run(llm, question, MODES[mode], args.max_tokens)
                steps[mode] += n
                seconds[mode] += s
        for mode in MODES:
            rates[mode].append(steps[mode] / seconds[mode] if seconds[mode] else 0.0)
    plain = statistics.median(rates["plain"])
    print(f"SmolLM2-135M-Instruct, fp32, {args.threads} threads, batch 1, greedy, {len(QUESTIONS)} questions x "
          f"{args.repeats} repeats (median)")
    print(f"{'mode':<10} {'decode tok/s':>13} {'vs plain':>9}")
    for mode in MODES:
        rate = statistics.median(rates[mode])
        print(f"{mode:<10} {rate:>13.1f} {rate / plain:>8.2f}x")


if __name__ == "__main__":
    main()
