"""Multiple-choice scoring speed: llmkit against lm-eval's `hf` backend on the same random-weight
GPT-2-124M-shaped model and the same 200 four-choice questions, in one run.

    python bench/eval.py                    # 200 questions, batch 32
    python bench/eval.py --questions 50 --json out.json

Both sides are timed on scoring alone: the model is loaded before the clock starts (lm-eval gets
an `HFLM` object; its task is a local YAML read with the default task index turned off). Also
timed: the same task through lm-eval with the `llmkit` backend. Prints questions/s and the ratio,
and checks the two libraries pick the same answers. Target (issue 5): llmkit >= 1.5x lm-eval hf.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("system value process table model river light number garden signal memory engine letter market "
         "window theory paper forest music energy border field motion school figure return story metal").split()


def questions(n: int, seed: int = 0) -> list[dict]:
    """Deterministic four-choice questions with a ~60-word context and 1-4 word choices."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        context = " ".join(rng.choice(WORDS) for _ in range(60))
        choices = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for _ in range(4)]
        rows.append({"id": f"q{i}", "question": context, "choices": choices, "label": rng.randrange(4)})
    return rows


TASK_YAML = """task: bench_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
"""


def build_model(root: Path) -> Path:
    import transformers as tf

    from llmkit.data.corpus import stdlib_texts
    from llmkit.tokenizer import Tokenizer

    path = root / "gpt2-124m"
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024))
    model.save_pretrained(path)
    Tokenizer.train(stdlib_texts(2_000_000), vocab_size=4096, special_tokens=["<|endoftext|>"]).save(path)
    return path


def run_lm_eval(lm, task_dir: Path, batch_size: int) -> tuple[float, dict]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=["bench_mc"], task_manager=manager, batch_size=batch_size,
                                  log_samples=True, verbosity="ERROR")
    seconds = time.perf_counter() - start
    picks = {s["doc"]["id"]: max(range(4), key=lambda j: s["filtered_resps"][j][0]) for s in out["samples"]["bench_mc"]}
    return seconds, picks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the figures here too")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import llmkit
    from llmkit.eval.harness import run_multiple_choice
    from llmkit.data.tasks import TaskExample

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = build_model(root)
        rows = questions(args.questions)
        data = root / "bench_mc.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (root / "tasks").mkdir()
        (root / "tasks" / "bench_mc.yaml").write_text(TASK_YAML.format(data=data))

        from lm_eval.models.huggingface import HFLM

        hf = HFLM(pretrained=str(model_dir), batch_size=args.batch_size, device="cpu", dtype="float32")
        hf_seconds, hf_picks = run_lm_eval(hf, root / "tasks", args.batch_size)
        del hf

        llm = llmkit.load(model_dir, device="cpu")
        examples = [TaskExample(r["id"], f"Question: {r['question']}\nAnswer:", r["choices"][r["label"]],
                                tuple(r["choices"])) for r in rows]
        run_multiple_choice(llm, "warmup", examples[:2], batch_size=args.batch_size)
        start = time.perf_counter()
        ours = run_multiple_choice(llm, "bench_mc", examples, batch_size=args.batch_size)
        ours_seconds = time.perf_counter() - start
        our_picks = {s["id"]: s["choices"].index(s["prediction"]) for s in ours.samples}

        from llmkit.eval.lm_eval_backend import LLMKitLM

        backend = LLMKitLM(pretrained=str(model_dir), batch_size=args.batch_size, device="cpu")
        be_seconds, be_picks = run_lm_eval(backend, root / "tasks", args.batch_size)

    n = len(rows)
    figures = {
        "questions": n, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "lm_eval_hf_qps": n / hf_seconds, "llmkit_qps": n / ours_seconds, "lm_eval_llmkit_backend_qps": n / be_seconds,
        "ratio": hf_seconds / ours_seconds, "ratio_backend": hf_seconds / be_seconds,
        "same_picks": hf_picks == our_picks == be_picks,
    }
    print(f"{n} four-choice questions, GPT-2 124M shape, batch {args.batch_size}, {figures['threads']} threads")
    print(f"  lm-eval hf backend        {figures['lm_eval_hf_qps']:6.2f} questions/s")
    print(f"  llmkit harness            {figures['llmkit_qps']:6.2f} questions/s   {figures['ratio']:.2f}x  (target >= 1.5x)")
    print(f"  lm-eval + llmkit backend  {figures['lm_eval_llmkit_backend_qps']:6.2f} questions/s   "
          f"{figures['ratio_backend']:.2f}x")
    print(f"  same answers picked: {figures['same_picks']}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
