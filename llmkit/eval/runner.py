"""Run named tasks on a model and keep everything: `evaluate` → `EvalRun` → `results.json`,
`report.md` and charts (one for scores where higher is better, one for metrics where lower is
better, each drawn only when some task has such a metric); `compare` two runs with paired
bootstrap intervals. Every task records its chance level: what its primary metric would be for a
guess that knows nothing (None where chance has no meaning).

    run = evaluate(llmkit.load("runs/quickstart"), ["arith", "sentiment"], shots=3)
    run.write("runs/eval1")
    table = format_comparison(compare(load_run("runs/eval1"), load_run("runs/eval2")))
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from ..utils import write_json_atomic, write_text_atomic
from .harness import TaskResult, run_code, run_generation, run_multiple_choice, run_perplexity
from .metrics import bootstrap_ci

log = logging.getLogger(__name__)

# the metric each kind of task is judged by, and whether higher is better
PRIMARY = {"multiple_choice": ("acc", True), "generation": ("exact_match", True),
           "perplexity": ("bits_per_byte", False), "code": ("pass@1", True)}
# secondary metrics that are scores in [0, 1] where higher is better, so they share the primary's bars;
# calibration_error (lower is better) and counts (n, tokens, no_answer) stay in the tables only
SCORES = ("acc", "acc_norm", "exact_match", "f1", "macro_f1", "rougeL")
CHARTS = ("higher_is_better", "lower_is_better")


@dataclass
class EvalSettings:
    tasks: list[str]
    shots: int = 0
    seed: int = 0
    split: str = "test"
    limit: int | None = None
    data_dir: str | None = None
    batch_size: int = 16
    chain_of_thought: bool = False
    code_samples: int = 1
    max_new_tokens: int | None = None
    chat: bool = False
    num_beams: int = 1
    strategies: list[str] | None = None  # prompting strategies (llmkit prompt-eval): records are task/strategy


@dataclass
class TaskRecord:
    """One task's outcome inside a run: its kind, metrics, the primary metric's bootstrap interval,
    every sample, and how long it took."""
    task: str
    kind: str
    metrics: dict[str, float]
    primary: str
    higher_is_better: bool
    ci: tuple[float, float]
    seconds: float
    samples: list[dict[str, Any]] = field(default_factory=list)
    # the primary metric of a know-nothing guess (see `task_chance`); None where chance has no
    # meaning, and in results.json files written before chance was recorded
    chance: float | None = None
    # trivial answers scored like the model: {"copy": {"exact_match", "ci" (Wilson 95%), "n", and
    # "rougeL" where it applies}} for generation tasks (`llmkit.eval.baselines.copy_input`)
    baselines: dict[str, dict[str, Any]] | None = None

    @property
    def value(self) -> float:
        return float(self.metrics[self.primary])


@dataclass
class EvalRun:
    model: str
    settings: EvalSettings
    tasks: dict[str, TaskRecord]
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "created": self.created, "settings": asdict(self.settings),
                "tasks": {name: {**asdict(rec), "ci": list(rec.ci)} for name, rec in self.tasks.items()}}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "EvalRun":
        tasks = {name: TaskRecord(**{**rec, "ci": tuple(rec["ci"])}) for name, rec in obj["tasks"].items()}
        return cls(obj["model"], EvalSettings(**obj["settings"]), tasks, obj.get("created", ""))

    def write(self, out: str | os.PathLike, notes: str = "") -> Path:
        """`results.json` (every sample, and under "charts" which metrics each chart draws),
        `report.md` (tables) and `charts/higher_is_better.png` / `charts/lower_is_better.png`, each
        only when some task has a metric of its kind; all atomic."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        plan = chart_plan(self)
        files = {kind: Path("charts") / f"{kind}.png" for kind in plan}
        write_json_atomic(out / "results.json", {**self.to_json(), "charts": {
            kind: {"file": files[kind].as_posix(), "metrics": metrics} for kind, metrics in plan.items()}})
        for kind in CHARTS:
            if kind in plan:
                _draw_chart(self, kind, plan[kind], out / files[kind])
            elif (out / "charts" / f"{kind}.png").is_file():
                # a chart left by an earlier run into this folder would contradict this run's results
                (out / "charts" / f"{kind}.png").unlink()
        write_text_atomic(out / "report.md", format_report(self, files, notes=notes))
        return out


def load_run(path: str | os.PathLike) -> EvalRun:
    """An `EvalRun` from a run directory (or its results.json)."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no results.json: give a directory written by `llmkit eval --out`")
    try:
        return EvalRun.from_json(json.loads(file.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{file} is not an llmkit eval results file ({e})") from e


def evaluate(llm: Any, tasks: Sequence[str], shots: int = 0, seed: int = 0, split: str = "test",
             limit: int | None = None, data_dir: str | os.PathLike | None = None, batch_size: int = 16,
             chain_of_thought: bool = False, code_samples: int = 1, max_new_tokens: int | None = None,
             model_name: str | None = None, progress: bool = False, chat: bool = False,
             num_beams: int = 1) -> EvalRun:
    """Evaluate `llm` (any `LLM`; a classification model's `LocalLLM` too) on named tasks (see `llmkit.data.list_tasks`).
    Few-shot examples come from the task's few-shot split, chosen with `seed`; `limit` keeps the
    first N examples. `chat` asks each question as the user turn of the model's chat template (chat
    fine-tuned models); an encoder-decoder reads each prompt as its source. `num_beams` > 1 answers
    generation tasks by beam search. Generation tasks also score the copy-the-input baseline on the
    same examples (`TaskRecord.baselines`). A classifier is scored by its predicted label on
    multiple-choice tasks over its labels; what an encoder cannot be scored on is refused before
    any work (`llmkit.eval.classify`)."""
    from ..data.tasks import get_task, load_task
    from .baselines import copy_input
    from .classify import check_scorable, classifier_of, run_classification

    settings = EvalSettings(list(tasks), shots, seed, split, limit, str(data_dir) if data_dir else None, batch_size,
                            chain_of_thought, code_samples, max_new_tokens, chat, num_beams)
    if not tasks:
        raise ValueError("no tasks given: name at least one (llmkit eval --list shows them)")
    if shots < 0 or batch_size < 1 or (limit is not None and limit < 1) or code_samples < 1 or num_beams < 1:
        raise ValueError(f"shots must be >= 0, batch_size, limit, code_samples and num_beams >= 1; got shots={shots}, "
                         f"batch_size={batch_size}, limit={limit}, code_samples={code_samples}, num_beams={num_beams}")
    specs = [get_task(name) for name in tasks]  # every name checked before any work
    for spec in specs:
        if spec.needs_data_dir and data_dir is None:
            raise ValueError(f"task {spec.name!r} reads local files: give data_dir (--data-dir) pointing to them")
    check_scorable(llm, specs, split, data_dir, shots, chat)
    records = {}
    for spec in specs:
        start = time.perf_counter()
        examples = load_task(spec.name, split, data_dir)
        if limit:
            examples = examples[:limit]
        pool = load_task(spec.name, spec.fewshot_split, data_dir) if shots and spec.kind in (
            "multiple_choice", "generation") else []
        new_tokens = max_new_tokens or spec.max_new_tokens
        log.info("%s: %d examples (%s)", spec.name, len(examples), spec.kind)
        if classifier_of(llm) is not None:  # check_scorable let through multiple choice over its labels only
            result = run_classification(llm, spec.name, examples, batch_size, progress)
        elif spec.kind == "multiple_choice":
            result = run_multiple_choice(llm, spec.name, examples, pool, shots, seed, batch_size, progress, chat)
        elif spec.kind == "generation":
            result = run_generation(llm, spec.name, examples, pool, shots, seed, new_tokens, spec.extract,
                                    chain_of_thought, batch_size, progress, chat, num_beams)
        elif spec.kind == "perplexity":
            result = run_perplexity(llm, spec.name, [ex.prompt for ex in examples], batch_size,
                                    ids=[ex.id for ex in examples])
        elif spec.kind == "code":
            ks = [k for k in (1, 10) if k <= code_samples]
            result = run_code(llm, spec.name, examples, code_samples, ks, max_new_tokens=new_tokens, seed=seed,
                              batch_size=batch_size, progress=progress)
        else:  # pragma: no cover - the task registry only has the kinds above
            raise ValueError(f"task {spec.name!r} has unknown kind {spec.kind!r}")
        vocab_size = getattr(getattr(llm, "config", None), "vocab_size", None)
        records[spec.name] = _record(spec.kind, result, time.perf_counter() - start, seed,
                                     task_chance(spec.kind, examples, result.metrics, vocab_size))
        if spec.kind == "generation" and classifier_of(llm) is None:
            copied = copy_input(spec.name, examples, spec.extract)
            records[spec.name].baselines = {"copy": {k: v for k, v in copied.items() if k != "answers"}}
    name = model_name or getattr(llm, "name", None) or type(llm).__name__
    return EvalRun(str(name), settings, records, datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _record(kind: str, result: TaskResult, seconds: float, seed: int, chance: float | None) -> TaskRecord:
    primary, higher = PRIMARY[kind]
    scores = [s["score"] for s in result.samples]
    return TaskRecord(result.task, kind, result.metrics, primary, higher, bootstrap_ci(scores, seed=seed),
                      round(seconds, 3), result.samples, chance)


def task_chance(kind: str, examples: Sequence[Any], metrics: dict[str, float],
                vocab_size: int | None = None) -> float | None:
    """The task's primary metric for a guess that knows nothing, or None where that has no meaning.
    Multiple choice: 1 / number of choices, averaged over the questions (the count may vary).
    Perplexity: the bits per byte of a uniform guess over the model's `vocab_size` tokens (its
    perplexity is `vocab_size`); None when the vocabulary is unknown (a remote model). Generation
    and code: None, since a random open answer is right with no definable probability."""
    if kind == "multiple_choice":
        counts = [len(ex.choices) for ex in examples if ex.choices]
        return sum(1 / k for k in counts) / len(counts) if counts else None
    if kind == "perplexity" and vocab_size and vocab_size > 1 and examples:
        nbytes = sum(len(ex.prompt.encode("utf-8")) for ex in examples)
        return metrics["tokens"] * math.log2(vocab_size) / max(1, nbytes)
    return None


# ---------------------------------------------------------------------------------------- compare
@dataclass
class Delta:
    task: str
    metric: str
    a: float
    b: float
    delta: float  # b - a
    ci: tuple[float, float]  # of the per-sample mean difference, paired where the samples match
    verdict: str  # "regression" | "improvement" | "within noise"
    paired: bool


def score_change(sa: dict[str, float], sb: dict[str, float], higher_is_better: bool, n_resamples: int = 2000,
                 alpha: float = 0.05, seed: int = 0) -> tuple[tuple[float, float], str, bool]:
    """The bootstrap interval of the mean per-sample change from scores `sa` to `sb` ({id: score}),
    its verdict ("improvement" / "regression" only when the interval excludes 0) and whether it
    was paired (both scored the same ids; else the two means are resampled independently)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    paired = bool(sa) and sa.keys() == sb.keys()
    if paired:
        diff = np.array([sb[k] - sa[k] for k in sa])
        draws = [diff[rng.integers(0, diff.size, diff.size)].mean() for _ in range(n_resamples)]
    else:
        xa, xb = np.array(list(sa.values()) or [math.nan]), np.array(list(sb.values()) or [math.nan])
        draws = [xb[rng.integers(0, xb.size, xb.size)].mean() - xa[rng.integers(0, xa.size, xa.size)].mean()
                 for _ in range(n_resamples)]
    lo, hi = (float(np.quantile(draws, alpha / 2)), float(np.quantile(draws, 1 - alpha / 2)))
    # the per-sample score of every kind is oriented like its primary metric
    better, worse = (lo > 0, hi < 0) if higher_is_better else (hi < 0, lo > 0)
    verdict = "regression" if worse else "improvement" if better else "within noise"
    return (lo, hi), verdict, paired


def compare(a: EvalRun, b: EvalRun, n_resamples: int = 2000, alpha: float = 0.05, seed: int = 0) -> list[Delta]:
    """Per common task, the change of its primary metric from run `a` to run `b`. The interval is a
    bootstrap of the mean per-sample difference, paired by sample id when both runs scored the same
    samples (the usual case: same task and split), so it separates real changes from noise."""
    rows = []
    common = [t for t in a.tasks if t in b.tasks]
    if not common:
        raise ValueError(f"the runs share no task: {sorted(a.tasks)} vs {sorted(b.tasks)}")
    for task in common:
        ra, rb = a.tasks[task], b.tasks[task]
        sa = {s.get("id", str(i)): s["score"] for i, s in enumerate(ra.samples)}
        sb = {s.get("id", str(i)): s["score"] for i, s in enumerate(rb.samples)}
        ci, verdict, paired = score_change(sa, sb, ra.higher_is_better, n_resamples, alpha, seed)
        rows.append(Delta(task, ra.primary, ra.value, rb.value, rb.value - ra.value, ci, verdict, paired))
    return rows


def format_comparison(rows: Sequence[Delta], a_name: str = "A", b_name: str = "B") -> str:
    lines = [f"| task | metric | {a_name} | {b_name} | Δ | 95% CI of Δ | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        flag = {"regression": "**REGRESSION**", "improvement": "improvement"}.get(r.verdict, "within noise")
        lines.append(f"| {r.task} | {r.metric} | {r.a:.4f} | {r.b:.4f} | {r.delta:+.4f} | "
                     f"[{r.ci[0]:+.4f}, {r.ci[1]:+.4f}]{'' if r.paired else ' (unpaired)'} | {flag} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- reports
def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    return str(v)


CHANCE_NOTE = ("chance: the primary metric of a guess that knows nothing: 1 / number of choices for multiple "
               "choice (averaged over the questions), a uniform guess over the model's vocabulary for bits per "
               "byte; — where chance has no meaning (open answers, code, a remote model's perplexity). "
               "copy input: the exact match (with its 95% Wilson interval) of answering with the input itself, "
               "read by the task's answer extractor (for sorting: the given numbers in the given order).")


def _baseline(rec: TaskRecord) -> str:
    """The copy-the-input baseline's cell: exact match [Wilson 95% interval], and ROUGE-L where it applies."""
    copy = (rec.baselines or {}).get("copy")
    if not copy:
        return "—"
    rouge = f", rougeL {copy['rougeL']:.4f}" if "rougeL" in copy else ""
    return f"{copy['exact_match']:.4f} [{copy['ci'][0]:.4f}, {copy['ci'][1]:.4f}]{rouge}"


def format_summary(run: EvalRun) -> str:
    """One markdown table: task, kind, primary metric with its interval, chance level and the
    copy-the-input baseline (generation tasks), the other metrics."""
    lines = ["| task | kind | metric | value | 95% CI | chance | copy input [95% CI] | n | other metrics | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rec in run.tasks.items():
        others = ", ".join(f"{k} {_fmt(v)}" for k, v in rec.metrics.items() if k not in (rec.primary, "n"))
        lines.append(f"| {name} | {rec.kind} | {rec.primary}{'' if rec.higher_is_better else ' (lower is better)'} "
                     f"| {rec.value:.4f} | [{rec.ci[0]:.4f}, {rec.ci[1]:.4f}] | {_fmt(rec.chance)} | {_baseline(rec)} "
                     f"| {int(rec.metrics.get('n', 0))} | {others} | {rec.seconds:.1f} |")
    return "\n".join(lines)


CHART_CAPTIONS = {
    "higher_is_better": "Scores in [0, 1], higher is better: each task's primary metric (dark, with its 95% "
                        "interval) and its other scores; the dashed line over a task is its chance level.",
    "lower_is_better": "Metrics where lower is better, one panel per metric: each task's value with its 95% "
                       "interval; the dashed line over a task is its chance level.",
}


def format_report(run: EvalRun, charts: dict[str, Path] | None = None, examples: int = 3, notes: str = "") -> str:
    """The run as markdown: settings, the summary table with chance levels, the charts written
    (`charts`: {"higher_is_better" | "lower_is_better": path relative to the report}) and a few
    samples per task."""
    s = run.settings
    parts = [f"# Evaluation of {run.model}", "",
             f"{run.created} · split `{s.split}` · {s.shots}-shot (seed {s.seed})"
             + (f" · first {s.limit} examples" if s.limit else "")
             + (" · chain of thought" if s.chain_of_thought else "")
             + (f" · beam search ({s.num_beams} beams)" if s.num_beams > 1 else "")
             + (f" · strategies {', '.join(s.strategies)}" if s.strategies else ""),
             "", format_summary(run), "", CHANCE_NOTE, ""] + ([notes, ""] if notes else [])
    for kind, path in (charts or {}).items():
        parts += [f"![{kind.replace('_', ' ')}]({Path(path).as_posix()})", "", CHART_CAPTIONS.get(kind, ""), ""]
    for name, rec in run.tasks.items():
        parts += [f"## {name}", ""]
        for sample in rec.samples[:examples]:
            shown = {k: v for k, v in sample.items() if k in ("prompt", "text", "output", "prediction", "answer", "score")}
            parts += ["```", *(f"{k}: {_clip(v)}" for k, v in shown.items()), "```", ""]
    return "\n".join(parts)


def _clip(v: Any, n: int = 300) -> str:
    text = repr(v) if not isinstance(v, str) else v.replace("\n", "\\n")
    return text if len(text) <= n else "…" + text[-n:]


# ----------------------------------------------------------------------------------------- charts
def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def chart_plan(run: EvalRun) -> dict[str, dict[str, list[str]]]:
    """Which metrics of which task each chart draws: "higher_is_better" holds scores in [0, 1]
    (the primary metric first, then the task's other scores), "lower_is_better" the primary metric
    of tasks where lower is better (bits per byte), which has another scale and direction. A chart
    with nothing to draw is left out."""
    plan: dict[str, dict[str, list[str]]] = {kind: {} for kind in CHARTS}
    for name, rec in run.tasks.items():
        if rec.higher_is_better:
            names = [rec.primary] + [k for k in rec.metrics if k != rec.primary and k in SCORES]
            shown = [k for k in names if _finite(rec.metrics.get(k)) and 0 <= rec.metrics[k] <= 1]
        else:
            shown = [rec.primary] if _finite(rec.metrics.get(rec.primary)) else []
        if shown:
            plan["higher_is_better" if rec.higher_is_better else "lower_is_better"][name] = shown
    return {kind: tasks for kind, tasks in plan.items() if tasks}


def _bar(ax: Any, x: float, rec: TaskRecord, metric: str, unit: bool) -> None:
    """One bar; the primary metric's bar is dark and carries its bootstrap interval."""
    value = float(rec.metrics[metric])
    primary = metric == rec.primary
    errors = [[max(0.0, value - rec.ci[0])], [max(0.0, rec.ci[1] - value)]] if primary else None
    ax.bar(x, value, yerr=errors, capsize=4, color="#4c72b0" if primary else "#a1b9dd")
    above = max(value, rec.ci[1]) if primary and _finite(rec.ci[1]) else value  # the label clears the interval
    ax.text(x, min(above + 0.02, 0.95) if unit else above, f"{value:.3f}", ha="center", va="bottom", fontsize=8)


def _draw_chart(run: EvalRun, kind: str, tasks: dict[str, list[str]], path: Path) -> Path:
    from ..utils import new_figure, save_figure

    if kind == "higher_is_better":
        panels = {"score": tasks}
    else:  # one panel per metric: bits per byte and any other lower-is-better primary need not share a scale
        panels = {}
        for task, metrics in tasks.items():
            for metric in metrics:
                panels.setdefault(metric, {}).setdefault(task, []).append(metric)
    bars = max(sum(len(m) + 1 for m in panel.values()) for panel in panels.values())
    fig, axes = new_figure(max(6.0, 0.7 * bars * len(panels) + 1.5), 3.8, ncols=len(panels))
    axes = list(axes) if len(panels) > 1 else [axes]
    direction = "↑ higher is better" if kind == "higher_is_better" else "↓ lower is better"
    for ax, (label, panel) in zip(axes, panels.items()):
        x, ticks, labels, chance_drawn = 0, [], [], False
        for task, metrics in panel.items():
            rec = run.tasks[task]
            xs = list(range(x, x + len(metrics)))
            for xi, metric in zip(xs, metrics):
                _bar(ax, xi, rec, metric, kind == "higher_is_better")
            if rec.chance is not None and math.isfinite(rec.chance):
                ax.hlines(rec.chance, xs[0] - 0.45, xs[-1] + 0.45, colors="#c44e52", linestyles="--",
                          label=None if chance_drawn else "chance")
                chance_drawn = True
            ticks += xs
            labels += [f"{task}\n{metric}" if kind == "higher_is_better" else task for metric in metrics]
            x += len(metrics) + 1  # a gap between tasks
        ax.set_xlim(-1, ticks[-1] + 1)
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel(f"{label.replace('_', ' ')} ({direction})")
        if kind == "higher_is_better":
            ax.set_ylim(0, 1)
        if chance_drawn:
            ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"{run.model}: {direction}", fontsize=10)
    return save_figure(fig, path)
