"""DPO step time and peak memory: llmkit against trl's DPOTrainer, on the same random-weight
GPT-2-124M-shaped model and the same pairs, in one run.

    python bench/align.py                      # 4 pairs x 128 tokens, 3 timed steps each
    python bench/align.py --steps 2 --json out.json

Each configuration runs in a fresh process: one warm-up step, then the median of the timed AdamW
steps (forward of policy and reference, DPO loss, backward, optimizer step); peak RSS is the
high-water mark over the steps. trl's loss is its own `DPOTrainer._compute_loss` (fp32, no
gradient checkpointing, reference model given: PEERS.md), driven by the same loop as ours so that
only the DPO work is compared. `llmkit-dpo` scores the reference every step as trl does;
`llmkit-dpo-precomputed` is llmkit's default (reference log-probs once before training).
Target (issue 8): llmkit's step time <= 1.0x trl's.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from finetune import build_model, run_worker, timed_steps  # noqa: E402

CONFIGS = ["llmkit-dpo", "llmkit-dpo-precomputed", "trl-dpo"]


def pairs(n_pairs: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """2n rows (n chosen, then n rejected) of `seq` tokens; the answer is the second half."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50257, (2 * n_pairs, seq), generator=g)
    ids[n_pairs:, : seq // 2] = ids[:n_pairs, : seq // 2]  # each pair shares its prompt
    completion = torch.zeros_like(ids)
    completion[:, seq // 2:] = 1
    return ids, completion


def worker(config: str, model_dir: str, n_pairs: int, seq: int, steps: int) -> dict:
    ids, completion = pairs(n_pairs, seq)
    if config == "trl-dpo":
        import datasets
        import transformers as tf
        import trl

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = tf.AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
            ref = tf.AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
            args = trl.DPOConfig(output_dir=tempfile.mkdtemp(), bf16=False, use_cpu=True, report_to=[],
                                 gradient_checkpointing=False, beta=0.1)
            ds = datasets.Dataset.from_dict({"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]})
            trainer = _trl_trainer(trl, model, ref, args, ds)
        model = trainer.model.train()
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": completion}
        params = [p for p in model.parameters() if p.requires_grad]

        def loss_fn():
            return trainer._compute_loss(model, inputs, return_outputs=False)
    else:
        from llmkit.align.dpo import DPOObjective, disable_dropout
        from llmkit.models.hf import load_pretrained

        model = load_pretrained(model_dir)
        disable_dropout(model)
        labels = ids.masked_fill(completion == 0, -100)[:, 1:]
        batch = {"input_ids": ids[:, :-1], "labels": labels, "attention_mask": torch.ones_like(ids[:, :-1])}
        if config == "llmkit-dpo-precomputed":
            ref = copy.deepcopy(model).eval()
            with torch.no_grad():
                batch["ref_logps"] = DPOObjective().logps(ref, batch).double()
            del ref
            objective = DPOObjective()
        else:
            objective = DPOObjective(reference=copy.deepcopy(model).eval().requires_grad_(False))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]

        def loss_fn():
            return objective.loss(model, batch)[0]
    return {"config": config, **timed_steps(loss_fn, torch.optim.AdamW(params, lr=1e-6), steps)}


def _trl_trainer(trl, model, ref, args, ds):
    """A tokenizer only to satisfy the constructor: the inputs are token ids already."""
    import transformers as tf
    from tokenizers import Tokenizer, models

    backend = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", eos_token="[PAD]")
    return trl.DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.pairs, args.seq, args.steps)))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp))
        for config in args.configs.split(","):
            results[config] = row = run_worker(__file__, config, model_dir, "--pairs", str(args.pairs),
                                               "--seq", str(args.seq), "--steps", str(args.steps))
            print(f"  {config:24s} {row['step_s']:6.2f} s/step   peak RSS {row['peak_rss_gb']:5.2f} GB   "
                  f"loss {row['loss']:.4f}", flush=True)
    print(f"GPT-2 124M shape, {args.pairs} pairs x {args.seq} tokens, {torch.get_num_threads()} threads")
    if "trl-dpo" in results:
        for mine in ("llmkit-dpo", "llmkit-dpo-precomputed"):
            if mine in results:
                ratio = results[mine]["step_s"] / results["trl-dpo"]["step_s"]
                mem = results[mine]["peak_rss_gb"] / results["trl-dpo"]["peak_rss_gb"]
                print(f"  {mine} / trl: step time {ratio:.2f}x (target <= 1.0), peak memory {mem:.2f}x")
                results[f"{mine}_speed_ratio"] = ratio
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
