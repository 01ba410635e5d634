"""`llmkit finetune`: supervised fine-tuning with any method of `llmkit.peft`, on the one Trainer.

    llmkit finetune --model runs/quickstart --data data/chats.jsonl --method lora lora.r=16 lora.alpha=32
    llmkit finetune --model M --data builtin --method qlora          # the embedded instruction set

The run dir holds config.yaml, metrics.jsonl, checkpoints/, report.md with the curves and the
before/after table, summary.json, and the result: `adapter/` (PEFT files) for the PEFT methods,
and `model/` (HF layout) for full fine-tuning and for LoRA / QLoRA (merged into the base).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.instruct import (BUILTIN_INSTRUCT_TASKS, SFTLoader, SFTValidation, builtin_instructions, builtin_tasks,
                             encode_all, is_builtin, read_instructions, split_validation)
from ..models.hf import load_pretrained, save_pretrained
from ..models.resolve import resolve_model
from ..peft import (METHODS, LoRAConfig, apply_bottleneck, apply_lora, apply_prefix_tuning, apply_prompt_tuning,
                    apply_qlora, merge_and_unload, save_adapter, trainable_parameters)
from ..recipe import dump_yaml
from ..tokenizer import DEFAULT_CHAT_TEMPLATE, Tokenizer
from ..utils import write_json_atomic, write_text_atomic
from . import distributed as D
from .config import TrainConfig
from .objectives import CausalLM
from .pretrain import RunDirError, _check_run_dir
from .trainer import Trainer

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
class EvalSection:
    tasks: list[str] | None = None  # held-out tasks scored before and after (default: the builtin tasks trained on)
    limit: int = 100  # test examples per task
    perplexity: bool = True  # base-corpus perplexity before and after (forgetting)


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
    out: str = "runs/finetune"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not known: use one of {', '.join(METHODS)}")


# ---------------------------------------------------------------------------------- pieces
def load_base(recipe: FinetuneRecipe):
    if not recipe.model:
        raise ValueError("no base model: give --model (an HF directory, a run directory or a cached name)")
    path = resolve_model(recipe.model)
    if isinstance(path, str):
        raise ValueError(f"--model {recipe.model}: fine-tuning needs a local model (HF directory, run directory or "
                         ".gguf file), not a server")
    if Path(path).suffix == ".gguf":  # dequantised to fp32; the trained model is saved in HF layout
        from ..models.gguf import load_gguf

        model, tokenizer = load_gguf(path)
    else:
        model, tokenizer = load_pretrained(path), Tokenizer.from_dir(path)
    if tokenizer.chat_template is None:
        log.warning("%s has no chat template: using llmkit's default (ChatML)", path)
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return Path(path), model, tokenizer


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


def apply_method(model, recipe: FinetuneRecipe, tokenizer: Tokenizer) -> None:
    m = recipe.method
    if m == "lora":
        apply_lora(model, recipe.lora)
    elif m == "qlora":
        apply_qlora(model, recipe.lora, double_quant=recipe.qlora_double_quant)
    elif m == "adapter":
        apply_bottleneck(model, recipe.adapter.size, recipe.adapter.activation, placement=tuple(recipe.adapter.placement))
    elif m == "prefix":
        apply_prefix_tuning(model, recipe.prefix.num_tokens)
    elif m == "prompt":
        init = tokenizer.encode(recipe.prompt.init_text, add_special_tokens=False) if recipe.prompt.init_text else None
        apply_prompt_tuning(model, recipe.prompt.num_tokens, init_ids=init)


def eval_tasks(recipe: FinetuneRecipe) -> list[str]:
    if recipe.eval.tasks is not None:
        return list(recipe.eval.tasks)
    d = recipe.data.path
    return list(builtin_tasks(d)) if d == "builtin" or d.startswith("builtin:") else []


def held_out(model, tokenizer: Tokenizer, tasks: list[str], recipe: FinetuneRecipe) -> dict[str, Any]:
    """Held-out scores in chat form (test split), and base-corpus perplexity (raw text). The
    per-example scores of the tasks stay under "samples" ({id: score}), for paired comparisons."""
    from ..eval.runner import evaluate
    from ..infer.llm import LocalLLM

    llm = LocalLLM(model, tokenizer)
    out: dict[str, Any] = {}
    was_training = model.training
    if tasks:
        run = evaluate(llm, tasks, limit=recipe.eval.limit, chat=True, batch_size=32)
        out.update({name: {"metric": rec.primary, "value": rec.value, "ci": list(rec.ci), "higher_is_better":
                           rec.higher_is_better, "samples": {s["id"]: s["score"] for s in rec.samples}}
                    for name, rec in run.tasks.items()})
    if recipe.eval.perplexity:
        run = evaluate(llm, ["perplexity"], batch_size=8)
        rec = run.tasks["perplexity"]
        out["perplexity"] = {"metric": rec.primary, "value": rec.value, "ci": list(rec.ci)}
    model.train(was_training)
    return out


def held_out_change(before: dict[str, Any], after: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Per task scored both times on the same examples: the change of its metric with a paired
    bootstrap 95% interval and a verdict (`llmkit.eval.runner.score_change`, as `llmkit compare` computes it)."""
    from ..eval.runner import score_change

    out = {}
    for name, a in after.items():
        b = before.get(name, {})
        if "samples" not in a or not a["samples"] or b.get("samples", {}).keys() != a["samples"].keys():
            continue
        ci, verdict, _ = score_change(b["samples"], a["samples"], a.get("higher_is_better", True), seed=seed)
        out[name] = {"delta": a["value"] - b["value"], "ci": list(ci), "verdict": verdict}
    return out


def write_finetune_report(run_dir: Path, recipe: FinetuneRecipe, summary: dict[str, Any]) -> None:
    from .report import write_report

    params = summary["trainable"]
    extra = [("method", recipe.method), ("base model", str(recipe.model)),
             ("trainable parameters", f"{params['trainable']:,} of {params['total']:,} ({params['percent']:.3f}%)"),
             ("training conversations", summary["data"]["train"]), ("validation conversations", summary["data"]["val"]),
             ("bad rows skipped", summary["data"]["bad_rows"]), ("cut to nothing", summary["data"]["dropped"])]
    write_report(run_dir, f"Fine-tuning run {run_dir.name} ({recipe.method})", summary, extra)
    before, after, base = summary["before"], summary["after"], summary.get("baselines", {})
    change = summary.get("change", {})
    lines = ["", "## Held-out results (test split, chat prompts)", "",
             "| task | metric | before | after | 95% CI after | change (paired 95% CI) | majority class | format only |",
             "|---|---|---|---|---|---|---|---|"]
    for name in after:
        b, a = before.get(name, {}), after[name]
        bl, c = base.get(name, {}), change.get(name)
        fmt = (lambda v: f"{v:.4g}" if isinstance(v, float) else "")
        delta = f"{c['delta']:+.3g} [{c['ci'][0]:+.3g}, {c['ci'][1]:+.3g}] {c['verdict']}" if c else ""
        lines.append(f"| {name} | {a['metric']} | {fmt(b.get('value'))} | {fmt(a['value'])} | "
                     f"[{a['ci'][0]:.3g}, {a['ci'][1]:.3g}] | {delta} | {fmt(bl.get('majority'))} | "
                     f"{fmt(bl.get('format_only'))} |")
    lines += ["", "`perplexity` is the base-corpus perplexity (lower is better): how much was forgotten. The change "
              "is after minus before on the same examples, with a paired bootstrap interval.", ""]
    report = run_dir / "report.md"
    write_text_atomic(report, report.read_text(encoding="utf-8") + "\n".join(lines))


# ------------------------------------------------------------------------------------ job
@contextlib.contextmanager
def setting_up(run_dir: Path, resume: bool, info: D.DistInfo, recipe: Any):
    """The set-up of a training job (loading, reading data) inside: a fresh run dir that set-up
    fails in is removed again; once it succeeds, RUN/config.yaml holds the recipe."""
    _check_run_dir(run_dir, resume)
    created = not run_dir.exists()
    try:
        yield
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(run_dir / "config.yaml", dump_yaml(recipe))
    except BaseException:
        if created and info.is_main and not resume:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def finetune(recipe: FinetuneRecipe, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) a fine-tuning job; returns its summary (also in RUN/summary.json)."""
    info = D.init_distributed(recipe.train.device)
    run_dir = Path(recipe.out)
    train_cfg = dataclasses.replace(recipe.train, lr=recipe.train.lr or DEFAULT_LR[recipe.method])
    with setting_up(run_dir, resume, info, recipe):
        base_path, model, tokenizer = load_base(recipe)
        train_rows, val_rows, bad = read_data(recipe, train_cfg.seed)
        max_len = min(recipe.data.max_len, model.config.context_window - (
            recipe.prefix.num_tokens if recipe.method == "prefix" else
            recipe.prompt.num_tokens if recipe.method == "prompt" else 0) - 1)
        train_ex, dropped = encode_all(tokenizer, train_rows, max_len)
        val_ex, _ = encode_all(tokenizer, val_rows, max_len)
        tasks = eval_tasks(recipe)
        for name in tasks:
            from ..data.tasks import get_task

            get_task(name)  # an unknown task fails before any training
    log.info("%d training and %d validation examples (%d bad rows skipped, %d cut to nothing)",
             len(train_ex), len(val_ex), len(bad), dropped)
    before = {}
    if info.is_main:  # measured once, kept in the run dir so that a resumed run still reports it
        saved = run_dir / "before.json"
        if resume and saved.exists():
            before = json.loads(saved.read_text(encoding="utf-8"))
        else:
            before = held_out(model, tokenizer, tasks, recipe)
            write_json_atomic(saved, before)
    torch.manual_seed(train_cfg.seed)  # the new weights (LoRA's A, adapters, prefixes) are the seed's
    apply_method(model, recipe, tokenizer)
    report = trainable_parameters(model)
    log.info("%s", report)
    pad = tokenizer.padding_id
    loader = SFTLoader(train_ex, train_cfg.micro_batch, pad, seed=train_cfg.seed,
                       packed_len=max_len if recipe.data.packing else None, rank=info.rank,
                       world_size=info.world_size)
    compat = {"model": model.config.to_dict(), "method": recipe.method, "max_len": max_len}
    trainer = Trainer(model, CausalLM(), loader, train_cfg, run_dir, val_data=SFTValidation(val_ex, pad),
                      compat=compat, info=info)
    summary = trainer.fit(resume=resume)
    final = D.unwrap(trainer.base_model).eval()
    summary.update({"method": recipe.method, "lr": train_cfg.lr,
                    "trainable": {"trainable": report.trainable, "total": report.total, "percent": report.percent},
                    "data": {"train": len(train_ex), "val": len(val_ex), "bad_rows": len(bad), "dropped": dropped,
                             "bad": [str(b) for b in bad[:50]]}})
    if info.is_main:
        summary["before"] = before
        summary["after"] = held_out(final, tokenizer, tasks, recipe)
        summary["change"] = held_out_change(before, summary["after"], train_cfg.seed)
        from ..eval.baselines import task_baselines

        summary["baselines"] = {t: task_baselines(t, limit=recipe.eval.limit) for t in tasks
                                if t in BUILTIN_INSTRUCT_TASKS}
        save_result(final, tokenizer, recipe, base_path, run_dir)
        write_json_atomic(run_dir / "summary.json", summary)
        write_finetune_report(run_dir, recipe, summary)
    D.barrier()
    return summary


def save_result(model, tokenizer: Tokenizer, recipe: FinetuneRecipe, base_path: Path, run_dir: Path) -> None:
    """RUN/adapter (PEFT methods) and RUN/model (full, and LoRA/QLoRA merged into the base)."""
    if recipe.method != "full":
        save_adapter(model, run_dir / "adapter", base_model=str(base_path.resolve()))
        tokenizer.save(run_dir / "adapter")
    if recipe.method in ("full", "lora", "qlora"):
        if recipe.method == "qlora":  # merge into the full-precision base, not the NF4 copy
            from ..peft import load_adapter

            merged = load_pretrained(base_path)
            load_adapter(merged, run_dir / "adapter")
            model = merge_and_unload(merged)
        elif recipe.method == "lora":
            model = merge_and_unload(model)
        save_pretrained(model, run_dir / "model", dtype=torch.float32)
        tokenizer.save(run_dir / "model")


__all__ = ["DEFAULT_LR", "FinetuneRecipe", "RunDirError", "finetune"]
