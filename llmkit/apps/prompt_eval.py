"""Measure prompting strategies on the evaluation harness's tasks: every strategy answers the same
questions, each is scored as `llmkit eval` scores the task (exact match of the extracted answer),
and the run is an `EvalRun` — `results.json`, `report.md`, charts — so `llmkit compare` reads it.

    run = prompt_eval(llm, ["arith-small"], ["zero-shot", "few-shot", "cot", "self-consistency"])
    run.write("runs/pe", notes=strategy_table(run))

Each (task, strategy) pair is one record named ``task/strategy``, with its accuracy and bootstrap
interval, the tokens it used per question and its seconds per question (batched through the
inference engine: the wall time of the strategy's run over the questions). `strategy_table`
compares every strategy with the first on the same questions, paired: a difference whose interval
holds 0 is reported as no difference.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

from ..eval.harness import TaskResult
from ..eval.metrics import exact_match
from ..eval.runner import EvalRun, EvalSettings, _record, score_change
from .agent_strategies import PALStrategy, ReActStrategy
from .callbacks import Callbacks
from .prompting import STRATEGIES, Strategy, chain_of_thought, few_shot, least_to_most, question_text, \
    self_consistency, zero_shot

log = logging.getLogger(__name__)


def make_strategy(name: str, pool: Sequence[Any] = (), shots: int = 3, select: str = "random", k: int = 5,
                  temperature: float = 0.7, seed: int = 0, embedder: Any = None, extract: str = "last_number",
                  max_new_tokens: int | None = None, tools: str | Sequence[Any] | None = None) -> Strategy:
    """A strategy by its name (one of `STRATEGIES`); few-shot draws its examples from `pool`; the
    ReAct agent calls `tools` (built-in names, e.g. "calculator,datetime", or `Tool`s; default the
    calculator)."""
    room = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    if name == "zero-shot":
        return zero_shot(extract=extract, **room)
    if name == "few-shot":
        if not pool:
            raise ValueError("few-shot needs solved examples: the task has no few-shot split")
        return few_shot(pool, k=shots, select=select, seed=seed, embedder=embedder, extract=extract, **room)
    if name == "cot":
        return chain_of_thought(extract=extract, **room)
    if name == "self-consistency":
        return self_consistency(k=k, temperature=temperature, base=chain_of_thought(extract=extract, **room), seed=seed)
    if name == "least-to-most":
        return least_to_most(extract=extract, **room)
    if name == "react":
        return ReActStrategy(tools, extract=extract, **room)
    if name == "pal":
        return PALStrategy(extract=extract, **room)
    raise ValueError(f"unknown strategy {name!r}: use one of {', '.join(STRATEGIES)}")


def prompt_eval(llm: Any, tasks: Sequence[str], strategies: Sequence[str | Strategy], split: str = "test",
                limit: int | None = None, shots: int = 3, select: str = "random", k: int = 5,
                temperature: float = 0.7, seed: int = 0, batch_size: int = 16, embedder: Any = None,
                max_new_tokens: int | None = None, model_name: str | None = None, progress: bool = False,
                callbacks: Callbacks | None = None, tools: str | Sequence[Any] | None = None) -> EvalRun:
    """Every strategy on every task's `split` (generation tasks: their answers are extracted and
    matched exactly). `limit` keeps the first N questions. `tools` are the ReAct agent's (default
    the calculator). Names are checked before any work."""
    from ..data.tasks import get_task, load_task

    if not tasks or not strategies:
        raise ValueError("give at least one task and one strategy (e.g. tasks arith-small, strategies zero-shot,cot)")
    names = [s if isinstance(s, str) else s.name for s in strategies]
    if len(set(names)) != len(names):
        raise ValueError(f"strategies {names} name one twice: each is one record of the run")
    for n, s in zip(names, strategies):
        if isinstance(s, str) and n not in STRATEGIES:
            raise ValueError(f"unknown strategy {n!r}: use one of {', '.join(STRATEGIES)}")
    specs = [get_task(t) for t in tasks]
    for spec in specs:
        if spec.kind != "generation":
            raise ValueError(f"task {spec.name!r} is {spec.kind}: prompting strategies answer generation tasks "
                             "(questions with an answer to extract), e.g. arith-small, arith, sorting, gsm8k")
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit} must be at least 1")
    callbacks = callbacks if isinstance(callbacks, Callbacks) else Callbacks(callbacks)
    records = {}
    for spec in specs:
        examples = load_task(spec.name, split)[:limit] if limit else load_task(spec.name, split)
        pool = load_task(spec.name, spec.fewshot_split) if "few-shot" in names else []
        questions, ids = [question_text(ex) for ex in examples], [ex.id for ex in examples]
        for name, given in zip(names, strategies):
            strategy = given if isinstance(given, Strategy) else make_strategy(
                name, pool, shots, select, k, temperature, seed, embedder, spec.extract, max_new_tokens, tools)
            log.info("%s / %s: %d questions", spec.name, name, len(examples))
            start = time.perf_counter()
            answers = strategy.answer_all(llm, questions, ids, batch_size=batch_size, callbacks=callbacks,
                                          progress=progress)
            seconds = time.perf_counter() - start
            records[f"{spec.name}/{name}"] = _record("generation", _result(spec.name, name, examples, questions,
                                                                           answers, seconds), seconds, seed, None)
    settings = EvalSettings(list(tasks), shots, seed, split, limit, None, batch_size, strategies=names)
    label = model_name or getattr(llm, "name", None) or type(llm).__name__
    from datetime import datetime, timezone

    return EvalRun(str(label), settings, records, datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _result(task: str, strategy: str, examples: Sequence[Any], questions: Sequence[str], answers: Sequence[Any],
            seconds: float) -> TaskResult:
    samples, correct, missing = [], 0.0, 0
    for ex, q, a in zip(examples, questions, answers):
        score = exact_match(a.answer, ex.answer) if a.answer is not None else 0.0
        missing += a.answer is None
        correct += score
        sample = {"id": ex.id, "prompt": q, "output": a.output, "prediction": a.answer, "answer": ex.answer,
                  "score": score, "prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens}
        if a.votes or a.margin is not None:
            sample.update(votes=a.votes, margin=a.margin)
        if a.steps:
            sample["steps"] = a.steps
        if a.status is not None:
            sample["status"] = a.status
        samples.append(sample)
    n = max(1, len(examples))
    metrics = {"exact_match": correct / n, "no_answer": missing, "n": len(examples),
               "tokens_per_question": sum(a.tokens for a in answers) / n,
               "completion_tokens_per_question": sum(a.completion_tokens for a in answers) / n,
               "seconds_per_question": seconds / n}
    statuses = [a.status for a in answers if a.status is not None]
    if statuses:  # an agent: the share of questions it carried to an answer (not a step limit, a crash, ...)
        metrics["completed"] = sum(s == "answered" for s in statuses) / n
    margins = [a.margin for a in answers if a.margin is not None]
    if margins:
        metrics["vote_margin"] = sum(margins) / len(margins)
    return TaskResult(f"{task}/{strategy}", metrics, samples)


def strategy_rows(run: EvalRun, seed: int = 0) -> list[dict[str, Any]]:
    """Per task, each strategy against the run's first strategy on the same questions: the change
    in accuracy with its paired bootstrap interval and verdict ("better", "worse", or "no difference" when it holds 0)."""
    rows = []
    by_task: dict[str, list[str]] = {}
    for key in run.tasks:
        task, _, strategy = key.partition("/")
        by_task.setdefault(task, []).append(strategy)
    for task, strategies in by_task.items():
        base = run.tasks[f"{task}/{strategies[0]}"]
        sa = {s["id"]: s["score"] for s in base.samples}
        for strategy in strategies:
            rec = run.tasks[f"{task}/{strategy}"]
            sb = {s["id"]: s["score"] for s in rec.samples}
            ci, verdict, paired = score_change(sa, sb, True, seed=seed)
            verdict = {"improvement": "better", "regression": "worse"}.get(verdict, "no difference")
            rows.append({"task": task, "strategy": strategy, "baseline": strategies[0], "accuracy": rec.value,
                         "ci": rec.ci, "delta": rec.value - base.value, "delta_ci": ci,
                         "verdict": "—" if strategy == strategies[0] else verdict, "paired": paired,
                         "tokens": rec.metrics.get("tokens_per_question", math.nan),
                         "seconds": rec.metrics.get("seconds_per_question", math.nan),
                         "margin": rec.metrics.get("vote_margin"), "n": int(rec.metrics.get("n", 0))})
    return rows


def strategy_table(run: EvalRun) -> str:
    """The strategies side by side as markdown: accuracy [95% CI], the paired change against the
    first strategy [95% CI] and its verdict, tokens and seconds per question."""
    lines = ["## Strategies side by side", "",
             "Each strategy against the first on the same questions (paired bootstrap, 2000 resamples); a change "
             "whose interval holds 0 is no difference. Tokens count every prompt and generated token per question; "
             "seconds are the strategy's batched wall time divided by its questions.", "",
             "| task | strategy | n | accuracy [95% CI] | Δ vs first [95% CI] | verdict | tokens / q | s / q | "
             "vote margin |", "|---|---|---|---|---|---|---|---|---|"]
    for r in strategy_rows(run):
        delta = "—" if r["verdict"] == "—" else f"{r['delta']:+.3f} [{r['delta_ci'][0]:+.3f}, {r['delta_ci'][1]:+.3f}]"
        margin = "—" if r["margin"] is None else f"{r['margin']:.2f}"
        lines.append(f"| {r['task']} | {r['strategy']} | {r['n']} | {r['accuracy']:.3f} [{r['ci'][0]:.3f}, "
                     f"{r['ci'][1]:.3f}] | {delta} | {r['verdict']} | {r['tokens']:.0f} | {r['seconds']:.2f} | "
                     f"{margin} |")
    return "\n".join(lines)


def cost_chart(run: EvalRun, path: str | os.PathLike) -> Path:
    """Accuracy (with its interval) against tokens per question, one point per (task, strategy)."""
    from ..utils import new_figure, save_figure

    fig, ax = new_figure(6.0, 4.0)
    for r in strategy_rows(run):
        lo, hi = r["ci"]
        ax.errorbar(r["tokens"], r["accuracy"], yerr=[[r["accuracy"] - lo], [hi - r["accuracy"]]], fmt="o", capsize=4)
        ax.annotate(f"{r['task']}/{r['strategy']}", (r["tokens"], r["accuracy"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("tokens per question (log)")
    ax.set_ylabel("exact match (↑)")
    ax.set_ylim(0, 1)
    fig.suptitle(f"{run.model}: accuracy against cost", fontsize=10)
    return save_figure(fig, Path(path))


def write_prompt_eval(run: EvalRun, out: str | os.PathLike) -> Path:
    """The run's files (as `EvalRun.write`), with the side-by-side table and the cost chart."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chart = cost_chart(run, out / "charts" / "accuracy_vs_tokens.png")
    notes = strategy_table(run) + "\n\n![accuracy against tokens](charts/accuracy_vs_tokens.png)\n\n" + \
        "Accuracy (95% interval) against the tokens each strategy spends per question.\n"
    run.write(out, notes=notes)
    log.info("wrote %s (chart %s)", out, chart.name)
    return out
