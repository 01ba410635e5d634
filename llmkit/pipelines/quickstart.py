"""`llmkit quickstart`: a real (tiny) language model trained from scratch on this machine in a
few minutes, with no download.

1. prepare the embedded corpus (the installed Python standard library) and train a BPE;
2. measure this machine's training throughput on a reference model (with all CPU threads, or one
   when that is faster: on a machine busy with other work it can be);
3. pick the compute-optimal model size for the time that is left (Chinchilla, `llmkit.scaling`);
4. pretrain with the one Trainer, which re-plans to fewer steps if training turns out slower than
   measured (so that the learning-rate schedule still ends in time) and stops on time; evaluate;
   generate samples;
5. compare the validation loss with two baselines fitted on the training tokens: the unigram
   entropy and a bigram model's cross-entropy; write everything to the run dir and report, with
   a verdict in words.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import DataConfig, PackedDataset, SourceConfig, prepare_data
from ..models.config import ModelConfig, preset
from ..models.transformer import Transformer
from ..scaling import choose_model_size
from ..train.config import TrainConfig
from ..train.objectives import CausalLM
from ..train.optim import build_optimizer
from ..train.precision import autocast, choose_precision
from .pretrain import ModelSection, PretrainRecipe, pretrain
from ..utils import write_json_atomic

log = logging.getLogger(__name__)

# (dim, layers, heads, kv heads, MLP width): a ladder of Llama-style sizes to choose from
LADDER = [(64, 2, 4, 2, 176), (96, 3, 4, 2, 256), (128, 4, 4, 2, 344), (192, 4, 6, 2, 512), (256, 6, 8, 4, 688),
          (384, 6, 6, 2, 1024), (512, 8, 8, 4, 1376), (768, 12, 12, 4, 2048)]


def candidates(vocab_size: int, seq_len: int) -> list[ModelConfig]:
    return [preset("tiny-llama", dim=d, n_layers=l, n_heads=h, n_kv_heads=kv, hidden_dim=f, vocab_size=vocab_size,
                   max_seq_len=seq_len) for d, l, h, kv, f in LADDER]


def measure_flops_rate(cfg: ModelConfig, micro_batch: int, seq_len: int, steps: int = 3,
                       precision: str = "fp32") -> float:
    """Achieved training FLOP/s of `cfg` (forward + backward + AdamW, on the CPU, under `precision`'s
    autocast), from the median of a few timed steps: not the fastest one, which on a machine shared
    with other work is not typical."""
    torch.manual_seed(0)
    model = Transformer(cfg)
    opt = build_optimizer(model, 1e-3)
    batch = torch.randint(0, cfg.vocab_size, (micro_batch, seq_len + 1))
    objective = CausalLM()
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with autocast(precision, torch.device("cpu")):
            loss, _ = objective.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    per_step = float(np.median(times[1:]))  # the first step warms up
    return cfg.flops_per_token(seq_len, training=True) * micro_batch * seq_len / per_step


def fastest_threads(cfg: ModelConfig, micro_batch: int, seq_len: int) -> int:
    """Set PyTorch's CPU threads to what trains `cfg` fastest now, all of them or one, and return
    it. On a machine busy with other work, threads that wait for each other at every operation
    made tiny models' steps 2-3x slower than one thread (and their times erratic)."""
    threads = torch.get_num_threads()
    if threads == 1:
        return 1
    rates = {}
    for n in (threads, 1):
        torch.set_num_threads(n)
        rates[n] = measure_flops_rate(cfg, micro_batch, seq_len)
    best = max(rates, key=rates.get)
    torch.set_num_threads(best)
    return best


def fastest_precision(cfg: ModelConfig, micro_batch: int, seq_len: int) -> tuple[str, float]:
    """The precision that trains `cfg` fastest on this CPU, fp32 or what train.precision=auto
    would pick, with its FLOP/s. "auto" judges bf16 by large matmuls; a tiny model's steps are
    dominated by the casts around small ones and measured 1.5x slower in bf16 than in fp32."""
    auto = choose_precision("auto", torch.device("cpu"))
    rates = {p: measure_flops_rate(cfg, micro_batch, seq_len, precision=p) for p in dict.fromkeys(("fp32", auto))}
    best = max(rates, key=rates.get)
    return best, rates[best]


def baselines(data_dir: Path) -> dict[str, float]:
    """Unigram entropy of the training tokens and the validation cross-entropy of a bigram model
    fitted on them (add-k smoothing, the best k of a few: the strongest such baseline), in nats."""
    train, val = PackedDataset(data_dir, "train"), PackedDataset(data_dir, "val")
    v = train.vocab_size
    tokens = np.concatenate([np.asarray(train[i][:-1]) for i in range(len(train))] + [np.asarray(train[len(train) - 1][-1:])])
    unigram = np.bincount(tokens, minlength=v).astype(np.float64)
    p = unigram / unigram.sum()
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    pairs = np.zeros((v, v), dtype=np.float64)
    np.add.at(pairs, (tokens[:-1], tokens[1:]), 1.0)
    val_seqs = np.stack([np.asarray(val[i]) for i in range(len(val))]) if len(val) else np.zeros((0, 2), dtype=np.int64)
    prev, nxt = val_seqs[:, :-1].ravel(), val_seqs[:, 1:].ravel()
    best = math.inf
    for k in (1e-3, 1e-2, 0.1, 1.0):
        probs = (pairs[prev, nxt] + k) / (pairs[prev].sum(axis=1) + k * v)
        best = min(best, float(-np.log(probs).mean()))
    return {"unigram_entropy": entropy, "bigram_cross_entropy": best}


def verdict(summary: dict[str, Any], minutes: float) -> str:
    """The run's result in words: whether the model beat the bigram baseline (a model that learned
    more than which token follows which), with both losses, or how to do better."""
    val, bigram = summary.get("final_val_loss"), summary["bigram_cross_entropy"]
    if val is not None and val < bigram:
        return f"beats the bigram baseline: {val:.2f} vs {bigram:.2f} nats/token"
    more = 5 if minutes < 5 else math.ceil(2 * minutes)
    got = f" ({val:.2f} vs {bigram:.2f} nats/token)" if val is not None else ""
    return f"did not beat the bigram baseline{got}: try --minutes {more:g}"


def quickstart(minutes: float = 5.0, out: str | Path = "runs/quickstart", seed: int = 0, vocab_size: int = 2048,
               seq_len: int = 128, micro_batch: int = 16, overwrite: bool = False) -> dict[str, Any]:
    """Run the whole job in about `minutes`; returns the summary (also RUN/summary.json). Each
    stage is logged (INFO, `llmkit.pipelines.quickstart`) as it begins; the CLI shows those lines."""
    if minutes <= 0:
        raise ValueError(f"--minutes={minutes} must be positive")
    t0 = time.perf_counter()
    budget = minutes * 60.0
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} already holds a run: pass --overwrite or choose another --out")
        shutil.rmtree(out)

    threads_before = torch.get_num_threads()
    try:  # the probe may set fewer CPU threads for this job (`fastest_threads`): the caller's come back after
        # 1. data: enough text for the budget (about 30 KB a second of training), a tokenizer
        data_dir = out / "data"
        max_bytes = int(min(3e7, max(1e6, budget * 3e4)))
        corpus = DataConfig(sources=[SourceConfig(path="stdlib", max_bytes=max_bytes)],
                            seq_len=seq_len, vocab_size=vocab_size, seed=seed, workers=2)
        log.info("preparing data: %.1f MB of the Python standard library (clean, dedup, split, then a %d-token BPE "
                 "tokenizer)", max_bytes / 1e6, vocab_size)
        prepare_data(corpus, data_dir)
        train_set = PackedDataset(data_dir, "train")
        vocab = train_set.vocab_size
        log.info("data ready: %s training sequences of %d tokens, vocabulary %d (%.0f s)", f"{len(train_set):,}",
                 seq_len, vocab, time.perf_counter() - t0)

        # 2. throughput, measured on a mid-sized model and assumed constant in FLOP/s across sizes,
        # with the number of CPU threads that trains fastest now
        log.info("measuring this machine's training speed (a few steps of small models)")
        ladder = candidates(vocab, seq_len)
        threads = fastest_threads(ladder[0], micro_batch, seq_len)
        rate = measure_flops_rate(ladder[3], micro_batch, seq_len)

        # 3. the time left for training, and the compute-optimal size for it
        reserve = 0.08 * budget + 5.0  # final evaluation, samples, saving, baselines, report
        train_seconds = max(10.0, budget - (time.perf_counter() - t0) - reserve)
        choice = choose_model_size(train_seconds, lambda c: rate / c.flops_per_token(seq_len, training=True), ladder,
                                   embeddings=False)
        cfg: ModelConfig = choice.candidate
        tokens_per_step = micro_batch * seq_len
        # small models reach fewer FLOP/s than the reference: time the chosen one itself, in the
        # precision that trains it fastest, so that the learning-rate schedule ends when the time does
        # (the Trainer re-plans if training turns out slower); 0.9 leaves room for the periodic evaluations
        if torch.cuda.is_available():  # the Trainer's own choice of precision stands: the probe times the CPU only
            precision, chosen_rate = "auto", measure_flops_rate(cfg, micro_batch, seq_len)
        else:
            precision, chosen_rate = fastest_precision(cfg, micro_batch, seq_len)
        tokens_per_s = chosen_rate / cfg.flops_per_token(seq_len, training=True)
        steps = max(20, int(0.9 * train_seconds * tokens_per_s // tokens_per_step))
        log.info("plan: %.0f s of training, a model of dim %d x %d layers (%s parameters), %d steps at the %s tok/s "
                 "the probe measured (%s, %d CPU thread%s)", train_seconds, cfg.dim, cfg.n_layers,
                 f"{cfg.num_parameters():,}", steps, f"{tokens_per_s:,.0f}", precision, threads,
                 "s" if threads > 1 else "")

        # 4. pretrain (the Trainer re-plans to fewer steps when training is slower than measured, and
        # stops when the time is up, whatever the estimate said)
        overrides = {k: getattr(cfg, k) for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim")}
        overrides["max_seq_len"] = seq_len  # the context it is trained on, which is what `llmkit info` should report
        recipe = PretrainRecipe(
            model=ModelSection(preset="tiny-llama", overrides=overrides), data=corpus, data_dir=str(data_dir),
            train=TrainConfig(micro_batch=micro_batch, steps=steps, lr=3e-3, warmup_steps=max(10, steps // 20),
                              eval_every=max(50, steps // 4), eval_batches=16, save_every=max(100, steps // 2),
                              seed=seed, time_budget_s=round(train_seconds, 1), precision=precision,
                              sample_prompts=["def ", "import ", "class "], sample_tokens=64),
            out=str(out),
        )
        log.info("training for up to %.0f s", train_seconds)
        summary = pretrain(recipe, resume=(out / "checkpoints").exists())

        # 5. baselines and report
        log.info("fitting the unigram and bigram baselines on the training tokens")
        summary.update(baselines(data_dir))
        summary.update(budget_s=budget, total_s=time.perf_counter() - t0, measured_flops_per_s=rate,
                       probe_tokens_per_s=tokens_per_s, cpu_threads=threads, chinchilla_params=choice.optimal.params,
                       chinchilla_tokens=choice.optimal.tokens)
        val = summary.get("final_val_loss")
        summary["beats_bigram"] = val is not None and val < summary["bigram_cross_entropy"]
        summary["verdict"] = verdict(summary, minutes)
        write_json_atomic(out / "summary.json", summary)
        from .report import write_report

        extra = [("unigram entropy of the training tokens", summary["unigram_entropy"]),
                 ("bigram cross-entropy (fitted on the training tokens)", summary["bigram_cross_entropy"]),
                 ("beats both baselines", str(val is not None and val < min(summary["unigram_entropy"],
                                                                            summary["bigram_cross_entropy"]))),
                 ("verdict", summary["verdict"]),
                 ("time budget (s)", budget), ("total time (s)", summary["total_s"]),
                 ("measured training FLOP/s", rate), ("CPU threads", threads),
                 ("Chinchilla-optimal parameters for the budget", choice.optimal.params)]
        write_report(out, "llmkit quickstart", summary, extra,
                     loss_baselines={"unigram entropy": summary["unigram_entropy"],
                                     "bigram cross-entropy": summary["bigram_cross_entropy"]})
        return summary
    finally:
        torch.set_num_threads(threads_before)
