"""Scores for encoders and classifiers, each beside the baseline a model must beat to have learned
anything: masked-token accuracy against always guessing the most frequent token, and classification
accuracy / macro-F1 against always answering the majority class."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..models.loss import IGNORE_INDEX
from .metrics import accuracy, macro_f1, per_class, wilson_interval


def most_frequent_token(tokens: np.ndarray, special_ids: Sequence[int] = ()) -> int:
    """The most frequent token id of `tokens` that is not a special token."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64).ravel())
    counts[[i for i in special_ids if i < len(counts)]] = 0
    return int(counts.argmax())


@torch.no_grad()
def masked_token_accuracy(model: torch.nn.Module, batches: Iterable[torch.Tensor], objective: Any,
                          baseline_token: int, seed: int = 0) -> dict[str, Any]:
    """Accuracy of the model's argmax at the positions replaced by the mask token (`objective` is a
    `MaskedLM`; masks from a fixed generator), beside the accuracy of always answering
    `baseline_token` at the same positions, each with its 95% Wilson interval. The selected tokens
    left as they were (10%) or replaced at random (10%) are not counted: a model that copied its
    input would score there without reading any context. `beats_baseline` holds when the model's
    interval lies wholly above the baseline's."""
    was = model.training
    model.eval()
    correct = base = n = 0
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    for batch in batches:
        ids, attention_mask = objective.split(batch.to(device) if isinstance(batch, torch.Tensor) else batch)
        inputs, labels = objective.mask(ids, attention_mask, generator)
        selected = (labels != IGNORE_INDEX) & (inputs == objective.mask_id)
        if not bool(selected.any()):
            continue
        logits = model(inputs, attention_mask=attention_mask) if attention_mask is not None else model(inputs)
        targets = labels[selected]
        correct += int((logits[selected].argmax(-1) == targets).sum())
        base += int((targets == baseline_token).sum())
        n += int(selected.sum())
    model.train(was)
    ci, base_ci = wilson_interval(correct, n), wilson_interval(base, n)
    return {"accuracy": correct / max(n, 1), "ci": list(ci), "n": n,
            "baseline": {"token": baseline_token, "accuracy": base / max(n, 1), "ci": list(base_ci)},
            "beats_baseline": n > 0 and ci[0] > base_ci[1]}


def classification_scores(predictions: Sequence, labels: Sequence, train_labels: Sequence) -> dict[str, Any]:
    """Accuracy (with its 95% interval), macro-F1 and per-label precision and recall of
    `predictions`, and the accuracy and macro-F1 of the majority-class baseline (the most common label
    of the training data, answered every time)."""
    majority = Counter(train_labels).most_common(1)[0][0] if train_labels else None
    always = [majority] * len(labels)
    hits = sum(p == y for p, y in zip(predictions, labels))
    return {"accuracy": accuracy(predictions, labels), "ci": list(wilson_interval(hits, len(labels))),
            "macro_f1": macro_f1(predictions, labels), "n": len(labels), "per_label": per_class(predictions, labels),
            "majority": {"label": majority, "accuracy": accuracy(always, labels), "macro_f1": macro_f1(always, labels)}}
