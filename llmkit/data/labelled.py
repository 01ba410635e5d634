"""Labelled texts for classifiers: ``{"text": ..., "label": ...}`` JSONL rows, a built-in
multiple-choice task whose answers come from one fixed set of labels (``builtin:sentiment``),
with its shipped train / dev / test splits, or a shipped labelled set (``builtin:injection``,
``builtin:harm``: its train.jsonl and test.jsonl, see `LABELLED_SETS`)."""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any

from .config import DataError
from .instruct import split_validation
from .jsonl import read_jsonl
from .tasks import TASKS, load_task


@dataclass(frozen=True)
class Labelled:
    text: str
    label: str


# shipped labelled sets: builtin/<name>/{train,test}.jsonl of {"text", "label"} rows (each folder's README
# says how it was written)
LABELLED_SETS = ("injection", "harm")


def labelled_set_file(name: str, split: str) -> Path:
    """The shipped file of a labelled set's split ("train" or "test")."""
    return Path(__file__).parent / "builtin" / name / f"{split}.jsonl"


def classification_tasks() -> list[str]:
    """Built-in tasks a classifier can learn: multiple choice over one fixed set of choices."""
    out = []
    for name, spec in TASKS.items():
        if spec.kind != "multiple_choice":
            continue
        try:
            choices = {ex.choices for ex in load_task(name, "test")}
        except (DataError, FileNotFoundError):
            continue
        if len(choices) == 1:
            out.append(name)
    return out


def _parse(obj: Any) -> list[Labelled]:
    if not isinstance(obj, dict):
        raise ValueError(f"a row must be a JSON object with 'text' and 'label', not {type(obj).__name__}")
    text, label = obj.get("text"), obj.get("label")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("'text' must be a non-empty string")
    if not isinstance(label, (str, int)) or isinstance(label, bool):
        raise ValueError(f"'label' must be a string or an integer, not {label!r}")
    return [Labelled(text, str(label))]


def read_labelled(path: str | os.PathLike, val_path: str | None = None, val_fraction: float = 0.1, seed: int = 0,
                  skip_bad_rows: bool = False, test_path: str | os.PathLike | None = None,
                  ) -> tuple[list[Labelled], list[Labelled], list[Labelled], list[str]]:
    """(training rows, validation rows, held-out test rows, label names in a fixed order) of a
    JSONL file or a ``builtin:TASK``. Built-in tasks use their dev and test splits; a shipped
    labelled set (``builtin:injection``) its test file, validating on a seeded `val_fraction` of its
    training rows; a file's validation rows (`val_path`, or a seeded `val_fraction` of its rows) are
    also its test rows unless `test_path` is given."""
    spec = str(path)
    if spec.startswith("builtin") and spec.split(":", 1)[-1] in LABELLED_SETS:
        # the shipped test file is held out; validation is `val_path`, or a seeded share of the training rows
        name = spec.split(":", 1)[1]
        return read_labelled(labelled_set_file(name, "train"), val_path, val_fraction, seed, skip_bad_rows,
                             test_path=labelled_set_file(name, "test"))
    if spec.startswith("builtin"):
        name = spec.split(":", 1)[1] if ":" in spec else ""
        known = classification_tasks() + list(LABELLED_SETS)
        if name not in known:
            raise DataError(f"data.path={spec!r}: a classifier learns one of the built-in tasks {', '.join(known)} "
                            "(builtin:NAME), or a JSONL file of {\"text\": ..., \"label\": ...} rows")
        train, dev, test = ([Labelled(ex.prompt, ex.answer) for ex in load_task(name, split)]
                            for split in ("train", "dev", "test"))
        return train, dev, test, list(load_task(name, "test")[0].choices)
    what = 'labelled rows ({"text": ..., "label": ...})'
    rows, _ = read_jsonl(path, _parse, skip_bad_rows, what=what)
    if val_path:
        held, _ = read_jsonl(val_path, _parse, skip_bad_rows, what=what)
    else:
        rows, held = split_validation(rows, val_fraction, seed)
    labels = sorted({r.label for r in rows})
    test = read_jsonl(test_path, _parse, skip_bad_rows, what=what)[0] if test_path else held
    unseen = sorted({r.label for r in [*held, *test]} - set(labels))
    if unseen:
        raise DataError(f"held-out label(s) {unseen} never occur in the training rows: a classifier cannot learn them")
    if len(labels) < 2:
        raise DataError(f"{path}: the training rows have {len(labels)} label(s); a classifier needs at least 2")
    return rows, held, test, labels
