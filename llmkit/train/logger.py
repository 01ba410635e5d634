"""Run metrics: one JSON object per line in ``metrics.jsonl`` and TensorBoard event files in
``tb/``. Only rank 0 writes. On resume, rows after the checkpoint's step are dropped so the
file reads as if the run had never stopped."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..utils import write_text_atomic

log = logging.getLogger(__name__)


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool = True, resume_step: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            keep = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            write_text_atomic(self.path, "".join(line + "\n" for line in keep))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tb"),
                                    purge_step=resume_step + 1 if resume_step is not None else None)
        except ImportError:  # tensorboard missing: metrics.jsonl still has everything
            log.warning("tensorboard is not installed: no TensorBoard event files will be written")
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)

    def text(self, step: int, tag: str, text: str) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_text(tag, text, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
