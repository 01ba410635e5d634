"""A run's `report.md`, rendered once from data: the figures of the run, the loss curve, the
sections a job contributes (held-out tables, preference accuracy, reward and KL), and samples."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..train.logger import read_metrics
from ..utils import new_figure, save_figure, write_text_atomic


def loss_figure(rows: Sequence[Mapping[str, Any]],
                baselines: Mapping[str, float] | None = None) -> tuple[Any, Any] | None:
    """(figure, axes) of the training and validation loss of metrics `rows` against step, with each
    of `baselines` ({label: loss in nats/token}) as a dashed horizontal line; None without a train loss."""
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train:
        return None
    fig, ax = new_figure()
    ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    for (label, value), color in zip((baselines or {}).items(), ("tab:red", "tab:purple", "tab:gray", "tab:olive")):
        ax.axhline(value, linestyle="--", linewidth=1, color=color, label=f"{label} ({value:.3f})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig, ax


def plot_loss(run_dir: Path, path: Path | None = None, baselines: Mapping[str, float] | None = None) -> Path | None:
    """Training and validation loss against step, with `baselines` as horizontal lines, as a PNG."""
    drawn = loss_figure(read_metrics(run_dir), baselines)
    if drawn is None:
        return None
    return save_figure(drawn[0], path or Path(run_dir) / "loss.png")


def _cell(name: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1%}" if name == "MFU" else f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _steps_planned(summary: dict[str, Any]) -> str | None:
    """How the plan of steps changed under the time budget, when it did."""
    planned, scheduled = summary.get("planned_steps"), summary.get("scheduled_steps")
    if not summary.get("replans") or planned is None:
        return None
    return f"{planned:,}, re-planned to {scheduled:,} (training was slower than the time budget needed)"


def render_report(run_dir: Path, title: str, summary: dict[str, Any], extra: Sequence[tuple[str, Any]] = (),
                  sections: Sequence[Sequence[str]] = (), loss_baselines: Mapping[str, float] | None = None) -> str:
    """The markdown of `report.md`: a table of the run's figures (and `extra` rows), the loss
    curve (with `loss_baselines` as horizontal lines), each of `sections` (markdown lines), and
    the sample generations."""
    png = plot_loss(run_dir, baselines=loss_baselines)
    val = summary.get("final_val_loss")
    rows = [("steps", summary.get("steps")), ("steps planned", _steps_planned(summary)),
            ("tokens trained", summary.get("tokens")),
            ("parameters (non-embedding)", summary.get("params")),
            ("final train loss", summary.get("train_loss")), ("final validation loss", val),
            ("validation perplexity", math.exp(val) if val else None),
            ("tokens/s", summary.get("tokens_per_s")), ("MFU", summary.get("mfu")),
            ("precision", summary.get("precision")), ("wall time (s)", summary.get("elapsed_s")), *extra]
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_cell(k, v)} |" for k, v in rows if v is not None]
    if png is not None:
        drawn = "; dashed: " + ", ".join(f"{k} {v:.3f}" for k, v in loss_baselines.items()) if loss_baselines else ""
        lines += ["", f"![loss curve{drawn}]({png.name})"]
    for section in sections:
        if section:
            lines += ["", *section]
    samples = summary.get("samples") or []
    if samples:
        lines += ["", "## Samples", ""]
        for s in samples:
            lines += ["```", s["prompt"] + s["text"], "```", ""]
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | Path, title: str, summary: dict[str, Any], extra: Sequence[tuple[str, Any]] = (),
                 sections: Sequence[Sequence[str]] = (), loss_baselines: Mapping[str, float] | None = None) -> Path:
    """Write `RUN/report.md` (atomically) from `render_report`."""
    run_dir = Path(run_dir)
    path = run_dir / "report.md"
    write_text_atomic(path, render_report(run_dir, title, summary, extra, sections, loss_baselines))
    return path


def task_table(summary: dict[str, Any], title: str = "Held-out results (test split, chat prompts)") -> list[str]:
    """The held-out task scores before and after training as markdown lines: the interval after,
    the paired change with its interval and verdict, and the baselines where the job measured them."""
    after, before = summary.get("after") or {}, summary.get("before") or {}
    if not after:
        return []
    change, baselines = summary.get("change") or {}, summary.get("baselines") or {}
    copies = any("copy" in bl for bl in baselines.values())
    lines = [f"## {title}", "", "| task | metric | before | after | 95% CI after | change (paired 95% CI) |"
             + (" majority class | format only |" if baselines else "") + (" copy input [95% CI] |" if copies else ""),
             "|---|---|---|---|---|---|" + ("---|---|" if baselines else "") + ("---|" if copies else "")]

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, (int, float)) else ""

    for name, a in after.items():
        b, c = before.get(name, {}), change.get(name)
        delta = f"{c['delta']:+.3g} [{c['ci'][0]:+.3g}, {c['ci'][1]:+.3g}] {c['verdict']}" if c else ""
        row = f"| {name} | {a['metric']} | {fmt(b.get('value'))} | {fmt(a['value'])} | " \
              f"[{a['ci'][0]:.3g}, {a['ci'][1]:.3g}] | {delta} |"
        if baselines:
            bl = baselines.get(name, {})
            row += f" {fmt(bl.get('majority'))} | {fmt(bl.get('format_only'))} |"
            if copies:
                ci = bl.get("copy_ci") or ["", ""]
                row += f" {fmt(bl['copy'])} [{fmt(ci[0])}, {fmt(ci[1])}] |" if "copy" in bl else " |"
        lines.append(row)
    note = (" copy input: the exact match of answering with the input itself (sorting: the given numbers in the "
            "given order), with its Wilson interval." if copies else "")
    forgotten = ("`perplexity` is the base-corpus perplexity (lower is better): how much was forgotten. "
                 if "perplexity" in after else "")
    return lines + ["", forgotten + "The change is after minus before on the same examples, with a paired bootstrap "
                    "interval." + note, ""]
