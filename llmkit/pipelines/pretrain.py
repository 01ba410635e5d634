"""`llmkit pretrain`: data → tokenizer → model → Trainer → run dir with `model/` in HF layout.

    llmkit pretrain --config recipes/pretrain-tiny.yaml train.steps=300 --out runs/p1
    llmkit pretrain --config recipes/bert-mlm-tiny.yaml              # an encoder, masked-LM objective
    torchrun --nproc_per_node 2 -m llmkit pretrain --config ... train.distributed=fsdp
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data import BatchLoader, DataConfig, PackedDataset, prepare_data
from ..models.config import preset
from ..models.resolve import load_local, local_path
from ..models.transformer import Transformer
from ..tokenizer import Tokenizer
from ..train import distributed as D
from ..train.config import TrainConfig
from ..train.objectives import CausalLM, MaskedLM, SpanCorruption
from ..train.trainer import Trainer
from .job import Job, RunDirError

log = logging.getLogger(__name__)


@dataclass
class ModelSection:
    preset: str = "tiny-llama"
    init: str | None = None  # start from these weights (HF dir or run dir) instead of random ones
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields, e.g. {dim: 128}


@dataclass
class PretrainRecipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    data_dir: str | None = None  # an already prepared data directory (skips preparation)
    train: TrainConfig = field(default_factory=TrainConfig)
    objective: str = "causal"  # causal (next token; decoders) | mlm (masked tokens; encoders) | span (T5)
    mask_rate: float = 0.15  # mlm: the share of tokens selected (80% masked, 10% random, 10% kept)
    out: str = "runs/pretrain"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective={self.objective!r} is not known: use one of {', '.join(OBJECTIVES)}")
        if not 0.0 < self.mask_rate < 1.0:
            raise ValueError(f"mask_rate={self.mask_rate} must be in (0, 1), e.g. 0.15")


OBJECTIVES = ("causal", "mlm", "span")


def check_objective(objective: str, cfg) -> None:
    """Refuse, before any data is prepared, an objective the model (`cfg`) cannot learn, or a
    model whose result could not be saved in Hugging Face layout."""
    from ..models.hf import config_to_hf

    if (objective == "span") != cfg.is_seq2seq:
        raise ValueError("objective=span (T5's span corruption) is for encoder-decoders and an encoder-decoder "
                         "trains with objective=span: use a preset such as tiny-t5 with objective=span")
    if objective == "causal" and cfg.is_encoder:
        raise ValueError("objective=causal with a bidirectional model (causal=false): every position would see "
                         "the token it predicts; use objective=mlm for an encoder, or a causal preset")
    if objective == "mlm" and not cfg.is_encoder:
        raise ValueError("objective=mlm with a causal model: masked-token prediction needs bidirectional attention; "
                         "use an encoder preset (e.g. model.preset=tiny-bert) or objective=causal")
    if objective == "mlm" and cfg.head != "lm":
        raise ValueError(f"objective=mlm needs an output head over the vocabulary, but the model has head={cfg.head!r}")
    config_to_hf(cfg)  # a ConfigError names the field that RUN/model could not be written with


def objective_for(recipe: PretrainRecipe, model: Transformer, tokenizer: Tokenizer):
    """The recipe's objective, refused where the model or tokenizer cannot learn it."""
    cfg = model.config
    check_objective(recipe.objective, cfg)
    if recipe.objective == "causal":
        return CausalLM()
    if recipe.objective == "span":
        sentinels = getattr(tokenizer, "sentinel_ids", None) or []
        if not sentinels or tokenizer.eos_token_id is None:
            raise ValueError("objective=span needs sentinel tokens (<extra_id_0>, ...) and an eos token, which the "
                             "tokenizer lacks: prepare the data with data.tokenizer_kind=unigram (T5's)")
        start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else tokenizer.padding_id
        return SpanCorruption(sentinels, tokenizer.eos_token_id, start, eval_seed=recipe.train.seed)
    if tokenizer.mask_token_id is None:
        raise ValueError("objective=mlm needs a mask token, and the tokenizer has none: prepare the data with "
                         "data.tokenizer_kind=wordpiece (BERT's [MASK]) or give a tokenizer with a mask_token")
    special = [i for i in (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id,
                           tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id) if i is not None]
    return MaskedLM(tokenizer.mask_token_id, cfg.vocab_size, special, recipe.mask_rate, eval_seed=recipe.train.seed)


def prepare_or_reuse_data(recipe: PretrainRecipe, run_dir: Path, info: D.DistInfo) -> Path:
    """The prepared data directory: the recipe's `data_dir`, or `RUN/data` made now (rank 0)."""
    if recipe.data_dir:
        path = Path(recipe.data_dir)
        if not (path / "index.json").exists():
            raise FileNotFoundError(f"data_dir={path} is not a prepared data directory (no index.json): "
                                    "make one with `llmkit data prepare`, or leave data_dir unset")
        return path
    path = run_dir / "data"
    if not (path / "index.json").exists():
        if info.is_main:
            tokenizer = None
            if recipe.model.init:
                tokenizer = Tokenizer.from_dir(local_path(recipe.model.init, "model.init="))
            prepare_data(recipe.data, path, tokenizer=tokenizer)
        D.barrier()
    return path


def data_as_prepared(recipe: PretrainRecipe, data_dir: Path) -> PretrainRecipe:
    """The recipe with its `data` section as the data in `data_dir` was actually prepared (its
    stats.json and index.json), so that RUN/config.yaml records what the run used: with a
    `data_dir`, the section would otherwise show defaults that played no part."""
    from ..data.dataset import STATS_FILE, read_index
    from ..recipe import from_dict

    index = read_index(data_dir)
    data = recipe.data
    stats_file = data_dir / STATS_FILE
    if stats_file.is_file():
        try:
            data = from_dict(DataConfig, json.loads(stats_file.read_text(encoding="utf-8"))["config"])
        except (ValueError, KeyError, TypeError) as e:  # written by another version: keep the recipe's
            log.warning("%s: cannot read the data recipe it was prepared with (%s)", stats_file, e)
    # the index holds the truth where the recipe may not (a tokenizer given instead of trained)
    data = dataclasses.replace(data, seq_len=index["seq_len"], vocab_size=index["vocab_size"])
    return dataclasses.replace(recipe, data=data)


def build_model(recipe: PretrainRecipe, tokenizer: Tokenizer, seq_len: int) -> Transformer:
    if recipe.model.init:
        model = load_local(recipe.model.init, purpose="model.init=")[1]
        if model.config.vocab_size < tokenizer.vocab_size:
            raise ValueError(f"model.init has vocab_size {model.config.vocab_size} but the data's tokenizer has "
                             f"{tokenizer.vocab_size} tokens: prepare the data with the model's tokenizer")
        return model
    cfg = preset(recipe.model.preset, **recipe.model.overrides)
    cfg = cfg.replace(vocab_size=tokenizer.vocab_size, max_seq_len=max(cfg.max_seq_len, seq_len),
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id,
                      decoder_start_token_id=tokenizer.padding_id if cfg.is_seq2seq else cfg.decoder_start_token_id)
    torch.manual_seed(recipe.train.seed)
    return Transformer(cfg)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a new job on `device` (None when unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(model: Transformer, recipe: PretrainRecipe, seq_len: int, info: D.DistInfo) -> None:
    """Refuse, before training starts, a micro-batch whose estimated training memory (weights,
    gradients, AdamW state, activations; `llmkit.scaling.estimate_memory`) exceeds what is free."""
    from ..scaling import estimate_memory

    free = available_memory(info.device)
    if free is None:
        return
    mb = recipe.train.micro_batch
    est = estimate_memory(model.config, method="full", dtype="fp32", batch_size=mb, seq_len=seq_len,
                          activation_checkpointing=recipe.train.activation_checkpointing)
    if est.total > free:
        per_seq = est.activations / mb
        fits = int((free - (est.total - est.activations)) // per_seq) if per_seq else 0
        hint = f"train.micro_batch={max(1, fits)} (with train.grad_accum to keep the batch)" if fits >= 1 else \
            "a smaller model or sequence length"
        raise MemoryError(f"a micro-batch of {mb} x {seq_len} tokens needs about {est.total / 2**30:.1f} GiB to train "
                          f"but {free / 2**30:.1f} GiB are free on {info.device}: try {hint}, or "
                          "train.activation_checkpointing=true")


def pretrain(recipe: PretrainRecipe, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Run (or resume) a pretraining job; returns its summary (also in RUN/summary.json)."""
    cfg = preset(recipe.model.preset, **recipe.model.overrides)  # fail on a bad model section before writing
    if not recipe.model.init:  # ... or on one the objective cannot train
        check_objective(recipe.objective, cfg)
    job = Job(recipe, resume, None, callbacks)
    with job.setting_up():
        data_dir = prepare_or_reuse_data(recipe, job.run_dir, job.info)
        job.recipe = data_as_prepared(recipe, data_dir)  # what config.yaml records
        train_set, val_set = PackedDataset(data_dir, "train"), PackedDataset(data_dir, "val")
        tokenizer = Tokenizer.from_dir(data_dir / "tokenizer")
        model = build_model(recipe, tokenizer, train_set.seq_len)
        objective = objective_for(recipe, model, tokenizer)
        check_memory(model, recipe, train_set.seq_len, job.info)
        loader = BatchLoader(train_set, recipe.train.micro_batch, seed=recipe.train.seed, rank=job.info.rank,
                             world_size=job.info.world_size)
        compat = {"model": model.config.to_dict(), "seq_len": train_set.seq_len}
        trainer = Trainer(model, objective, loader, recipe.train, job.run_dir, val_data=val_set, tokenizer=tokenizer,
                          compat=compat, flops_per_token=model.config.flops_per_token(train_set.seq_len, training=True),
                          info=job.info, callbacks=job.callbacks)
    summary = trainer.fit(resume=resume)
    summary["params"] = model.config.num_parameters(embeddings=False)
    summary["params_total"] = model.config.num_parameters()
    summary["params_active"] = model.config.num_parameters(embeddings=False, active=True)  # = params when dense
    summary["seq_len"] = train_set.seq_len
    final = job.final_model(trainer, lambda: Transformer(model.config))
    rows = []
    if isinstance(objective, MaskedLM) and job.is_main:
        summary["masked_lm"] = masked_lm_scores(final, objective, train_set, val_set, tokenizer, recipe)
        m = summary["masked_lm"]
        rows = [("masked-token accuracy (val)", f"{m['accuracy']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]"),
                ("most-frequent-token baseline", f"{m['baseline']['accuracy']:.3f} "
                 f"[{m['baseline']['ci'][0]:.3f}, {m['baseline']['ci'][1]:.3f}]"),
                ("beats the baseline", "yes" if m["beats_baseline"] else "no")]
    return job.finish(summary, f"Pretraining run {job.run_dir.name}", rows,
                      save=lambda: job.save_model(final, tokenizer))


def masked_lm_scores(model: Transformer, objective: MaskedLM, train_set: PackedDataset, val_set: PackedDataset,
                     tokenizer: Tokenizer, recipe: PretrainRecipe, max_rows: int = 512) -> dict[str, Any]:
    """Masked-token accuracy on (at most `max_rows` of) the validation split against always
    answering the training split's most frequent token (`llmkit.eval.encoders`)."""
    import numpy as np

    from ..eval.encoders import masked_token_accuracy, most_frequent_token

    sample = np.concatenate([train_set[i] for i in range(min(len(train_set), 2048))])
    baseline = most_frequent_token(sample, objective.special_ids)
    rows = min(len(val_set), max_rows)
    size = recipe.train.micro_batch
    batches = (torch.stack([torch.as_tensor(val_set[i]) for i in range(s, min(rows, s + size))])
               for s in range(0, rows, size))
    out = masked_token_accuracy(model, batches, objective, baseline, seed=recipe.train.seed)
    out["baseline"]["text"] = tokenizer.decode([baseline])
    return out


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "summary.json").read_text())


__all__ = ["PretrainRecipe", "RunDirError", "pretrain", "read_summary"]
