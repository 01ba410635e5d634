"""A run's `report.md` and its loss-curve PNG."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..utils import atomic_path, write_text_atomic
from .logger import read_metrics


def plot_loss(run_dir: Path, path: Path | None = None) -> Path | None:
    """Training and validation loss against step, as a PNG (matplotlib, no display needed)."""
    rows = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path or Path(run_dir) / "loss.png")


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure as a PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def write_report(run_dir: Path, title: str, summary: dict[str, Any], extra: list[tuple[str, str]] | None = None) -> Path:
    """`report.md`: the figures of the run, the loss curve and the sample generations."""
    run_dir = Path(run_dir)
    png = plot_loss(run_dir)
    lines = [f"# {title}", ""]
    rows = [("steps", summary.get("steps")), ("tokens trained", summary.get("tokens")),
            ("parameters (non-embedding)", summary.get("params")),
            ("final train loss", summary.get("train_loss")), ("final validation loss", summary.get("final_val_loss")),
            ("validation perplexity", math.exp(summary["final_val_loss"]) if summary.get("final_val_loss") else None),
            ("tokens/s", summary.get("tokens_per_s")), ("MFU", summary.get("mfu")),
            ("precision", summary.get("precision")), ("wall time (s)", summary.get("elapsed_s"))]
    rows += extra or []
    lines += ["| | |", "|---|---|"]
    for k, v in rows:
        if v is None:
            continue
        if isinstance(v, float):
            v = f"{v:.1%}" if k == "MFU" else f"{v:,.4g}"
        elif isinstance(v, int):
            v = f"{v:,}"
        lines.append(f"| {k} | {v} |")
    if png is not None:
        lines += ["", f"![loss curve]({png.name})"]
    samples = summary.get("samples") or []
    if samples:
        lines += ["", "## Samples", ""]
        for s in samples:
            lines += ["```", s["prompt"] + s["text"], "```", ""]
    path = run_dir / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
