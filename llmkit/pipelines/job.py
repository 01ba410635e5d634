"""The one job runner: what every training job (pretrain, finetune, reward, DPO, PPO, GRPO) does
around the Trainer, written once.

    job = Job(recipe, resume, DEFAULT_LR)
    with job.setting_up():                        # a fresh run dir that set-up fails in is removed again
        model, tokenizer = job.load_base()        # HF dir, run dir, cached name or .gguf
        ...read and encode the data...
    before = job.evaluate_before(model, tokenizer, tasks)   # kept in RUN/before.json for a resume
    job.apply_method(model, tokenizer)            # the PEFT surgery, seeded
    trainer = Trainer(model, objective, loader, job.train, job.run_dir, info=job.info, callbacks=job.callbacks)
    summary = job.fit(trainer)
    final = job.final_model(trainer, rebuild)     # whole weights on the main rank (gathered under FSDP)
    if job.is_main: ...after-training measurements into summary...
    return job.finish(summary, title, rows, sections, save=lambda: job.save_model(final, tokenizer))

The run dir's life is here: an existing run is refused unless resuming, config.yaml is written
once set-up succeeded, the result is saved in Hugging Face layout (`model/`) and PEFT's format
(`adapter/`), and `summary.json` and `report.md` are written atomically, once, from data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..models.hf import load_pretrained, save_pretrained
from ..models.resolve import load_local
from ..peft import (apply_bottleneck, apply_lora, apply_prefix_tuning, apply_prompt_tuning, apply_qlora,
                    load_adapter, merge_and_unload, save_adapter, trainable_parameters)
from ..recipe import dump_yaml
from ..tokenizer import DEFAULT_CHAT_TEMPLATE, Tokenizer
from ..train import distributed as D
from ..train.trainer import Trainer
from ..utils import write_json_atomic, write_text_atomic
from .report import write_report

log = logging.getLogger(__name__)

# what a run that began training leaves; a dir holding only config.yaml (set-up failed before the
# first step) is started again rather than refused
RUN_FILES = ("checkpoints", "metrics.jsonl", "model")


class RunDirError(FileExistsError):
    pass


def check_run_dir(out: Path, resume: bool) -> None:
    """Refuse to start over a run (it would be lost) and to resume what holds no checkpoint."""
    if resume:
        if not (out / "checkpoints").is_dir():
            raise FileNotFoundError(f"--resume: {out} holds no checkpoints; start it without --resume")
    elif out.exists() and any((out / name).exists() for name in RUN_FILES):
        raise RunDirError(f"{out} already holds a run: continue it with --resume, or choose another --out")


@dataclasses.dataclass
class EvalSection:
    tasks: list[str] | None = None  # held-out tasks scored before and after (default: the builtin tasks trained on)
    limit: int = 100  # test examples per task
    perplexity: bool = True  # base-corpus perplexity before and after (forgetting)


def eval_tasks(section: EvalSection, data_path: str, tasks_of: Callable[[str], Sequence[str]]) -> list[str]:
    """The held-out tasks a job scores: `eval.tasks` when given, else the builtin tasks its data
    names (``builtin[:a,b]``, listed by `tasks_of`), else none."""
    from ..data.instruct import is_builtin

    if section.tasks is not None:
        return list(section.tasks)
    return list(tasks_of(data_path)) if is_builtin(data_path) else []


def held_out(model: nn.Module, tokenizer: Tokenizer, tasks: Sequence[str], section: EvalSection) -> dict[str, Any]:
    """Held-out scores (test split) asked as the model was trained: in chat form, or as plain
    sources for an encoder-decoder without a chat template; and base-corpus perplexity (raw text;
    a decoder's only). The per-example scores of the tasks stay under "samples" ({id: score}), for
    paired comparisons."""
    from ..eval.runner import evaluate
    from ..infer.llm import LocalLLM

    llm = LocalLLM(model, tokenizer)
    out: dict[str, Any] = {}
    was_training = model.training
    if tasks:
        run = evaluate(llm, list(tasks), limit=section.limit, chat=tokenizer.chat_template is not None, batch_size=32)
        out.update({name: {"metric": rec.primary, "value": rec.value, "ci": list(rec.ci), "higher_is_better":
                           rec.higher_is_better, "samples": {s["id"]: s["score"] for s in rec.samples}}
                    for name, rec in run.tasks.items()})
    if section.perplexity and model.config.is_seq2seq:
        log.info("eval.perplexity: an encoder-decoder scores targets given sources, not text alone; skipped")
    elif section.perplexity:
        rec = evaluate(llm, ["perplexity"], batch_size=8).tasks["perplexity"]
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


def rebuild_with_method(config: Any, recipe: Any, tokenizer: Tokenizer) -> nn.Module:
    """A fresh model of the trained shape (`config`'s Transformer plus the recipe's PEFT modules),
    for `Job.final_model` to load gathered FSDP shards into."""
    from ..models.transformer import Transformer

    model = Transformer(config)
    apply_method(model, recipe, tokenizer)
    return model


def apply_method(model: nn.Module, recipe: Any, tokenizer: Tokenizer) -> None:
    """The recipe's PEFT method as module surgery on `model` (nothing for full fine-tuning). The
    recipe carries the method's section (`lora`, `adapter`, `prefix`, `prompt`) when it offers it."""
    m = recipe.method
    if m == "lora":
        apply_lora(model, recipe.lora)
    elif m == "qlora":
        apply_qlora(model, recipe.lora, double_quant=recipe.qlora_double_quant)
    elif m == "adapter":
        a = recipe.adapter
        apply_bottleneck(model, a.size, a.activation, placement=tuple(a.placement))
    elif m == "prefix":
        apply_prefix_tuning(model, recipe.prefix.num_tokens)
    elif m == "prompt":
        text = recipe.prompt.init_text
        apply_prompt_tuning(model, recipe.prompt.num_tokens,
                            init_ids=tokenizer.encode(text, add_special_tokens=False) if text else None)


class Job:
    """One training job's run dir, base model, PEFT method, evaluations, final save and report
    (see the module doc). `default_lr` maps a method to the learning rate used when train.lr is 0;
    `callbacks` go to the Trainer (`llmkit.train.trainer.Callback`: on_step, on_checkpoint)."""

    def __init__(self, recipe: Any, resume: bool = False, default_lr: dict[str, float] | None = None,
                 callbacks: Sequence[Any] = ()):
        self.recipe, self.resume, self.callbacks = recipe, resume, list(callbacks)
        self.info = D.init_distributed(recipe.train.device)
        self.run_dir = Path(recipe.out)
        method = getattr(recipe, "method", "full")
        lr = recipe.train.lr or (default_lr or {}).get(method, 0.0)
        self.train = dataclasses.replace(recipe.train, lr=lr) if lr != recipe.train.lr else recipe.train
        self.base_path: Path | None = None
        self.trainable: dict[str, Any] = {}

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    @contextlib.contextmanager
    def setting_up(self) -> Iterator[None]:
        """Loading and reading the data inside: a fresh run dir that set-up fails in is removed
        again (bad input leaves nothing behind); once it succeeds, RUN/config.yaml holds the recipe."""
        check_run_dir(self.run_dir, self.resume)
        created = not self.run_dir.exists()
        D.barrier()  # every rank has checked the run dir before rank 0 writes into it
        try:
            yield
            if self.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                write_text_atomic(self.run_dir / "config.yaml", dump_yaml(self.recipe))
        except BaseException:
            if created and self.is_main and not self.resume:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise

    def load_base(self, decoder_job: str | None = None) -> tuple[nn.Module, Tokenizer]:
        """The recipe's `model`: weights (a .gguf is dequantised to fp32) and tokenizer, with
        llmkit's default chat template (ChatML) when a decoder has none. A `decoder_job` (its name)
        refuses an encoder-decoder before any work."""
        if not self.recipe.model:
            raise ValueError("no base model: give --model (an HF directory, a run directory or a cached name)")
        self.base_path, model, tokenizer = load_local(self.recipe.model)
        if decoder_job and model.config.is_seq2seq:
            raise ValueError(f"{decoder_job} does not train encoder-decoders, and {self.recipe.model} is one (T5): "
                             "fine-tune it with `llmkit finetune` (objective=sft) instead")
        # an encoder-decoder without a template reads plain sources (T5 is asked "question: ..." as is)
        if tokenizer.chat_template is None and not (model.config.is_encoder or model.config.is_seq2seq):
            log.warning("%s has no chat template: using llmkit's default (ChatML)", self.base_path)
            tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        return model, tokenizer

    def evaluate_before(self, model: nn.Module, tokenizer: Tokenizer, tasks: Sequence[str]) -> dict[str, Any]:
        """Held-out scores of the starting model (main rank), measured once and kept in
        RUN/before.json so that a resumed run still reports them."""
        if not self.is_main:
            return {}
        saved = self.run_dir / "before.json"
        if self.resume and saved.exists():
            return json.loads(saved.read_text(encoding="utf-8"))
        before = held_out(model, tokenizer, tasks, self.recipe.eval)
        write_json_atomic(saved, before)
        return before

    def evaluate_after(self, model: nn.Module, tokenizer: Tokenizer, tasks: Sequence[str],
                       before: dict[str, Any], summary: dict[str, Any]) -> None:
        """Held-out scores after training and their paired change from `before`, into `summary`."""
        summary["before"] = before
        summary["after"] = held_out(model, tokenizer, tasks, self.recipe.eval)
        summary["change"] = held_out_change(before, summary["after"], self.train.seed)

    def apply_method(self, model: nn.Module, tokenizer: Tokenizer) -> None:
        torch.manual_seed(self.train.seed)  # the new weights (LoRA's A, adapters, prefixes) are the seed's
        apply_method(model, self.recipe, tokenizer)

    def fit(self, trainer: Trainer) -> dict[str, Any]:
        """Train (or resume); the summary adds the method, learning rate and trainable parameters."""
        report = trainable_parameters(D.unwrap(trainer.base_model))
        log.info("%s", report)
        summary = trainer.fit(resume=self.resume)
        summary.update({"method": getattr(self.recipe, "method", "full"), "lr": self.train.lr,
                        "trainable": {"trainable": report.trainable, "total": report.total,
                                      "percent": report.percent}})
        self.trainable = summary["trainable"]
        return summary

    def final_model(self, trainer: Trainer, rebuild: Callable[[], nn.Module] | None = None) -> nn.Module | None:
        """The trained model, whole, in eval mode. Without FSDP every rank holds it. Under FSDP
        every rank joins in gathering the shards and the main rank loads them into `rebuild()`
        (the model's shape, with its buffers, on the training device); the others get None."""
        if not (self.info.enabled and self.train.distributed == "fsdp"):
            return D.unwrap(trainer.base_model).eval()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        if rebuild is None:
            raise ValueError("train.distributed=fsdp: this job cannot gather its model; use ddp")
        sd = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.is_main:
            return None
        model = rebuild()
        model.load_state_dict(sd)
        return model.to(self.info.device).eval()

    def save_model(self, model: nn.Module, tokenizer: Tokenizer) -> None:
        """RUN/adapter (PEFT methods) and RUN/model (full, and LoRA/QLoRA merged into the base)."""
        method = getattr(self.recipe, "method", "full")
        if method != "full":
            save_adapter(model, self.run_dir / "adapter", base_model=str(Path(self.base_path).resolve()))
            tokenizer.save(self.run_dir / "adapter")
        if method in ("full", "lora", "qlora"):
            if method == "qlora":  # merge into the full-precision base, not the NF4 copy
                merged = load_pretrained(self.base_path)
                load_adapter(merged, self.run_dir / "adapter")
                model = merge_and_unload(merged)
            elif method == "lora":
                model = merge_and_unload(model)
            save_pretrained(model, self.run_dir / "model", dtype=torch.float32)
            tokenizer.save(self.run_dir / "model")

    def finish(self, summary: dict[str, Any], title: str, rows: Sequence[tuple[str, Any]] = (),
               sections: Sequence[Sequence[str]] = (), save: Callable[[], None] | None = None) -> dict[str, Any]:
        """On the main rank: `save()` the result, then summary.json and report.md; every rank
        waits for it. Returns the summary."""
        if self.is_main:
            if save is not None:
                save()
            write_json_atomic(self.run_dir / "summary.json", summary)
            write_report(self.run_dir, title, summary, self.rows(summary) + list(rows), sections)
        D.barrier()
        return summary

    def rows(self, summary: dict[str, Any]) -> list[tuple[str, Any]]:
        """The report rows every fine-tuning-like job shares: method, base model, trainable parameters."""
        t = summary.get("trainable")
        if not t or not getattr(self.recipe, "model", None):
            return []
        return [("method", summary.get("method")), ("starting model", str(self.recipe.model)),
                ("trainable parameters", f"{t['trainable']:,} of {t['total']:,} ({t['percent']:.3f}%)")]


__all__ = ["EvalSection", "Job", "RunDirError", "apply_method", "check_run_dir", "eval_tasks", "held_out",
           "held_out_change", "rebuild_with_method"]
