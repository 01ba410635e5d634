"""`llmkit finetune ... objective=classify`: a text classifier (`llmkit.models.Classifier`, the same
head and files as the reward model) fine-tuned on labelled texts, scored on held-out texts by
accuracy and macro-F1 against the majority-class baseline.

    llmkit finetune --model runs/bert --data builtin:sentiment --method full objective=classify

RUN/model is a Hugging Face ``*ForSequenceClassification`` directory (its labels in id2label).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..data.instruct import SFTLoader
from ..data.labelled import Labelled, read_labelled
from ..eval.encoders import classification_scores
from ..models.classifier import Classifier, save_classifier
from ..models.texts import fit_texts, pad_right
from ..models.transformer import Transformer
from ..peft import merge_and_unload
from ..train.objectives import Classify
from ..train.trainer import Trainer
from .job import Job, apply_method

CLASSIFY_METHODS = ("full", "lora")
# learning rates when train.lr is left at 0: a fresh head on a small body wants more than SFT's 1e-4
CLASSIFY_LR = {"full": 3e-4, "lora": 1e-3}


@dataclass(frozen=True)
class LabelledExample:
    ids: list[int]
    label: int


def encode_labelled(tokenizer, rows: Sequence[Labelled], labels: Sequence[str], max_len: int) -> list[LabelledExample]:
    """Token ids (special tokens as the tokenizer adds them; longer texts cut to `max_len` as
    classifying cuts them, with one warning) and label indices."""
    index = {name: i for i, name in enumerate(labels)}
    ids = fit_texts(tokenizer, [r.text for r in rows], max_len, reader="data.max_len", verb="allows")
    return [LabelledExample(x, index[r.label]) for x, r in zip(ids, rows)]


def collate_labelled(examples: Sequence[LabelledExample], pad_id: int) -> dict[str, torch.Tensor]:
    ids, mask = pad_right([e.ids for e in examples], pad_id)
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([e.label for e in examples])}


@dataclass
class LabelledValidation:
    """Held-out examples for the Trainer's validation loss: ``batches(size, n)`` yields (batch, n)."""

    examples: list[LabelledExample]
    pad_id: int

    def __len__(self) -> int:
        return len(self.examples)

    def batches(self, size: int, n: int):
        for start in range(0, min(n, len(self.examples)), size):
            chunk = self.examples[start:min(n, start + size)]
            yield collate_labelled(chunk, self.pad_id), len(chunk)


def held_out_scores(clf: Classifier, examples: Sequence[LabelledExample], labels: Sequence[str], pad_id: int,
                    train_labels: Sequence[str]) -> dict[str, Any]:
    probs = clf.classify_ids([e.ids for e in examples], pad_id)
    predictions = [labels[i] for i in probs.argmax(-1).tolist()]
    return classification_scores(predictions, [labels[e.label] for e in examples], train_labels)


def classify(recipe: Any, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Fine-tune a classifier (a `FinetuneRecipe` with objective=classify); returns its summary."""
    if recipe.method not in CLASSIFY_METHODS:
        raise ValueError(f"method={recipe.method!r} with objective=classify: a classifier trains with "
                         f"{' or '.join(CLASSIFY_METHODS)} (its head always trains in full)")
    job = Job(recipe, resume, CLASSIFY_LR, callbacks)
    cfg = job.train
    with job.setting_up():
        backbone, tokenizer = job.load_base(decoder_job="objective=classify")
        train_rows, val_rows, held_rows, labels = read_labelled(recipe.data.path, recipe.data.val_path, recipe.data.val_fraction,
                                                      cfg.seed, recipe.data.skip_bad_rows)
        max_len = min(recipe.data.max_len, backbone.config.max_seq_len)
        train_ex = encode_labelled(tokenizer, train_rows, labels, max_len)
        val_ex = encode_labelled(tokenizer, val_rows, labels, max_len)
        held_ex = encode_labelled(tokenizer, held_rows, labels, max_len)
    pad = tokenizer.padding_id
    train_labels = [r.label for r in train_rows]
    model = Classifier(backbone.to(job.info.device), len(labels), labels=labels, seed=cfg.seed)
    before = held_out_scores(model, held_ex, labels, pad, train_labels) if job.is_main else {}
    job.apply_method(model, tokenizer)
    for head in (model.score, getattr(model.model, "pooler", None)):
        if head is not None:
            head.requires_grad_(True)  # the head always trains, LoRA or not
    loader = SFTLoader(train_ex, cfg.micro_batch, pad, seed=cfg.seed, rank=job.info.rank,
                       world_size=job.info.world_size, collate_fn=lambda picked: collate_labelled(picked, pad))
    compat = {"model": model.config.to_dict(), "method": recipe.method, "max_len": max_len, "kind": "classify",
              "labels": labels}
    trainer = Trainer(model, Classify(), loader, cfg, job.run_dir, val_data=LabelledValidation(val_ex, pad),
                      compat=compat, info=job.info, callbacks=job.callbacks)
    summary = job.fit(trainer)
    summary["data"] = {"train": len(train_ex), "val": len(val_ex), "held_out": len(held_ex), "labels": labels}
    final = job.final_model(trainer, lambda: _rebuild(model.config, recipe, tokenizer, len(labels), labels))
    if job.is_main:
        summary["before"], summary["after"] = {}, {}
        summary["classify_before"] = before
        summary["classify"] = held_out_scores(final, held_ex, labels, pad, train_labels)

    def save() -> None:
        save_classifier(merge_and_unload(final) if recipe.method == "lora" else final, job.run_dir / "model",
                        tokenizer)

    s = summary.get("classify", {})
    rows = [("training texts", len(train_ex)), ("held-out texts", len(held_ex)), ("labels", ", ".join(labels))]
    if s:
        rows += [("held-out accuracy (before → after)", f"{before['accuracy']:.3f} → {s['accuracy']:.3f} "
                  f"[{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]"),
                 ("held-out macro-F1 (before → after)", f"{before['macro_f1']:.3f} → {s['macro_f1']:.3f}"),
                 ("majority class", f"{s['majority']['label']}: accuracy {s['majority']['accuracy']:.3f}, "
                  f"macro-F1 {s['majority']['macro_f1']:.3f}")]
        rows += [(f"{label}: precision / recall", f"{pr['precision']:.3f} [{pr['precision_ci'][0]:.3f}, "
                  f"{pr['precision_ci'][1]:.3f}] / {pr['recall']:.3f} [{pr['recall_ci'][0]:.3f}, {pr['recall_ci'][1]:.3f}]")
                 for label, pr in s.get("per_label", {}).items()]
    return job.finish(summary, f"Classifier {job.run_dir.name} ({recipe.method})", rows, save=save)


def _rebuild(config, recipe: Any, tokenizer, num_labels: int, labels: list[str]) -> Classifier:
    """The classifier's shape, for gathering FSDP shards into."""
    model = Classifier(Transformer(config), num_labels, labels=labels)
    apply_method(model, recipe, tokenizer)
    return model


__all__ = ["LabelledExample", "classify", "encode_labelled"]
