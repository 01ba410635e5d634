"""`llmkit finetune`: supervised fine-tuning with any method of `llmkit.peft`, on the one Trainer.

    llmkit finetune --model runs/quickstart --data data/chats.jsonl --method lora lora.r=16 lora.alpha=32
    llmkit finetune --model M --data builtin --method qlora          # the embedded instruction set

The run dir holds config.yaml, metrics.jsonl, checkpoints/, report.md with the curves and the
before/after table, summary.json, and the result: `adapter/` (PEFT files) for the PEFT methods,
and `model/` (HF layout) for full fine-tuning and for LoRA / QLoRA (merged into the base).

An encoder-decoder (T5) learns the same rows as targets given sources: a row's prompt is the
encoder's input and its completion the decoder's target (a chat: each assistant turn given the
turns before it), through the same loader and Trainer with the `Seq2SeqLM` objective
(`llmkit.data.instruct.encode_pairs`); the held-out tasks ask it their prompts as sources.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..data.instruct import (BUILTIN_INSTRUCT_TASKS, SFTLoader, SFTValidation, builtin_instructions, builtin_tasks,
                             collate_pairs, encode_all, encode_pairs, is_builtin, read_instructions, split_validation)
from ..data.tasks import get_task
from ..peft import METHODS, LoRAConfig
from ..infer.generate import decoder_start
from ..train.config import TrainConfig
from ..train.objectives import CausalLM, Seq2SeqLM
from ..train.trainer import Trainer
from .job import EvalSection, Job, RunDirError, eval_tasks, rebuild_with_method
from .report import task_table

log = logging.getLogger(__name__)

# learning rates that work for each method when train.lr is left at 0
DEFAULT_LR = {"full": 1e-4, "lora": 1e-3, "qlora": 1e-3, "adapter": 1e-3, "prefix": 1e-2, "prompt": 3e-2}


@dataclass
class FinetuneTrain(TrainConfig):
    """The `train:` section with fine-tuning defaults; lr 0 means the method's default."""

    lr: float = 0.0
    steps: int = 300
    warmup_steps: int = 10
    weight_decay: float = 0.0
    micro_batch: int = 16
    eval_every: int = 50
    save_every: int = 0
    sample_prompts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        lr, self.lr = self.lr, self.lr or 1.0
        super().__post_init__()
        if lr < 0:
            raise ValueError(f"train.lr={lr} must be positive (or 0 for the method's default)")
        self.lr = lr


@dataclass
class DataSection:
    path: str = "builtin"  # a JSONL file, or builtin[:arith,sorting,...] (the embedded instruction set)
    val_path: str | None = None  # held-out conversations; default: builtin's dev split, or val_fraction of the file
    val_fraction: float = 0.05
    max_len: int = 256  # tokens per example (longer ones are cut)
    packing: bool = False  # pack short examples into rows of max_len (attention stays within each)
    skip_bad_rows: bool = False
    # builtin only: this many fresh training examples per generated task (arith, sorting; never
    # one of their dev/test questions) instead of the shipped train split (1000-2000 examples,
    # which a small model memorises within a few epochs rather than learning the skill)
    builtin_train_size: int | None = None

    def __post_init__(self) -> None:
        if self.builtin_train_size is not None and self.builtin_train_size < 1:
            raise ValueError(f"data.builtin_train_size={self.builtin_train_size} must be at least 1 (or unset)")


@dataclass
class AdapterSection:
    size: int = 64
    activation: str = "gelu"
    placement: list[str] = field(default_factory=lambda: ["attn", "mlp"])


@dataclass
class VirtualSection:
    num_tokens: int = 16
    init_text: str | None = None  # prompt tuning: start from the embeddings of this text


@dataclass
class FinetuneRecipe:
    model: str = ""  # base model: HF dir, run dir, or cached name
    method: str = "lora"  # full | lora | qlora | adapter | prefix | prompt
    data: DataSection = field(default_factory=DataSection)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    qlora_double_quant: bool = True
    adapter: AdapterSection = field(default_factory=AdapterSection)
    prefix: VirtualSection = field(default_factory=VirtualSection)
    prompt: VirtualSection = field(default_factory=VirtualSection)
    eval: EvalSection = field(default_factory=EvalSection)
    train: FinetuneTrain = field(default_factory=FinetuneTrain)
    objective: str = "sft"  # sft (next token on the assistant's turns) | classify (a label per text)
    out: str = "runs/finetune"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not known: use one of {', '.join(METHODS)}")
        if self.objective not in ("sft", "classify"):
            raise ValueError(f"objective={self.objective!r} is not known: use sft or classify")


def read_data(recipe: FinetuneRecipe, seed: int):
    """(train conversations, validation conversations, bad rows)."""
    d = recipe.data
    builtin = is_builtin(d.path)
    if d.builtin_train_size is not None and not builtin:  # a recipe's setting, with --data FILE given
        log.warning("data.builtin_train_size=%d is for data.path=builtin[:tasks]; ignored for %s",
                    d.builtin_train_size, d.path)
    train, bad = read_instructions(d.path, d.skip_bad_rows, builtin_train_size=d.builtin_train_size)
    if d.val_path:
        val, _ = read_instructions(d.val_path, d.skip_bad_rows)
    elif builtin:
        val = builtin_instructions("dev", builtin_tasks(d.path))
    else:
        train, val = split_validation(train, d.val_fraction, seed)
    return train, val, bad


# what an encoder-decoder can be fine-tuned with: the methods that are module surgery on its Linear
# layers (prefix and prompt tuning prepend to the decoder alone here, unlike PEFT's T5, so their
# adapters would not mean the same there)
SEQ2SEQ_METHODS = ("full", "lora", "qlora", "adapter")


def check_seq2seq(recipe: FinetuneRecipe) -> None:
    """Refuse, before any work, what an encoder-decoder's fine-tuning does not do."""
    if recipe.method not in SEQ2SEQ_METHODS:
        raise ValueError(f"method={recipe.method} is not supported on {recipe.model}, an encoder-decoder: use one of "
                         f"{', '.join(SEQ2SEQ_METHODS)}")
    if recipe.method in ("lora", "qlora") and recipe.lora.train_embeddings:
        raise ValueError(f"lora.train_embeddings=true: an encoder-decoder's shared embeddings cannot be saved in "
                         f"PEFT's format here yet; set lora.train_embeddings=false for {recipe.model}")
    if recipe.data.packing:
        raise ValueError(f"data.packing=true packs decoder-only rows; {recipe.model} is an encoder-decoder, whose "
                         "examples are (source, target) pairs padded per batch: set data.packing=false")


def virtual_tokens(recipe: FinetuneRecipe) -> int:
    """Positions a prefix or prompt takes from the context window."""
    return {"prefix": recipe.prefix.num_tokens, "prompt": recipe.prompt.num_tokens}.get(recipe.method, 0)


def finetune(recipe: FinetuneRecipe, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Run (or resume) a fine-tuning job; returns its summary (also in RUN/summary.json)."""
    if recipe.objective == "classify":
        from .classify import classify

        return classify(recipe, resume, callbacks)
    job = Job(recipe, resume, DEFAULT_LR, callbacks)
    cfg = job.train
    with job.setting_up():
        model, tokenizer = job.load_base()
        if model.config.is_encoder:
            raise ValueError(f"{recipe.model} is an encoder (bidirectional attention) and objective=sft predicts next "
                             "tokens, which an encoder cannot learn: use objective=classify, or a causal model")
        seq2seq = model.config.is_seq2seq
        if seq2seq:
            check_seq2seq(recipe)
        train_rows, val_rows, bad = read_data(recipe, cfg.seed)
        max_len = min(recipe.data.max_len, model.config.context_window - virtual_tokens(recipe) - 1)
        encode = encode_pairs if seq2seq else encode_all
        train_ex, dropped = encode(tokenizer, train_rows, max_len)
        val_ex, _ = encode(tokenizer, val_rows, max_len)
        tasks = eval_tasks(recipe.eval, recipe.data.path, builtin_tasks)
        for name in tasks:
            get_task(name)  # an unknown task fails before any training
    log.info("%d training and %d validation examples (%d bad rows skipped, %d cut to nothing)",
             len(train_ex), len(val_ex), len(bad), dropped)
    before = job.evaluate_before(model, tokenizer, tasks)
    job.apply_method(model, tokenizer)
    pad = tokenizer.padding_id
    objective, collate_fn = CausalLM(), None
    if seq2seq:  # the same loader and Trainer; only the batches' shape and the loss differ
        objective = Seq2SeqLM()
        collate_fn = functools.partial(collate_pairs, pad_id=pad, start_id=decoder_start(model, pad))
    loader = SFTLoader(train_ex, cfg.micro_batch, pad, seed=cfg.seed,
                       packed_len=max_len if recipe.data.packing else None, rank=job.info.rank,
                       world_size=job.info.world_size, collate_fn=collate_fn)
    compat = {"model": model.config.to_dict(), "method": recipe.method, "max_len": max_len}
    trainer = Trainer(model, objective, loader, cfg, job.run_dir, val_data=SFTValidation(val_ex, pad, collate_fn),
                      compat=compat, info=job.info, callbacks=job.callbacks)
    summary = job.fit(trainer)
    summary["data"] = {"train": len(train_ex), "val": len(val_ex), "bad_rows": len(bad), "dropped": dropped,
                       "bad": [str(b) for b in bad[:50]]}
    final = job.final_model(trainer, lambda: rebuild_with_method(model.config, recipe, tokenizer))
    if job.is_main:
        job.evaluate_after(final, tokenizer, tasks, before, summary)
        from ..eval.baselines import task_baselines

        summary["baselines"] = {t: task_baselines(t, limit=recipe.eval.limit) for t in tasks
                                if t in BUILTIN_INSTRUCT_TASKS}
    d = summary["data"]
    rows = [("training conversations", d["train"]), ("validation conversations", d["val"]),
            ("bad rows skipped", d["bad_rows"]), ("cut to nothing", d["dropped"])]
    asked = "chat prompts" if tokenizer.chat_template is not None else "task prompts as sources"
    return job.finish(summary, f"Fine-tuning run {job.run_dir.name} ({recipe.method})", rows,
                      [task_table(summary, f"Held-out results (test split, {asked})")],
                      save=lambda: job.save_model(final, tokenizer))


__all__ = ["DEFAULT_LR", "FinetuneRecipe", "RunDirError", "finetune"]
