"""`llmkit ablate`: variants of one pretraining recipe, each trained over several seeds on the same
data, compared with confidence intervals.

    llmkit ablate --config recipes/moe-vs-dense-tiny.yaml --out runs/moe-vs-dense
    llmkit ablate --config recipes/moe-vs-dense-tiny.yaml seeds=[0,1,2,3,4] base.train.steps=600

1. The base recipe's data is prepared once (OUT/data, or the base's `data_dir`) and every run reads
   it, so every variant trains on the same tokens; `train.seed` seeds both the initial weights and
   the order of the batches, so for one seed every variant also sees them in the same order.
2. Each (variant, seed) is an ordinary pretraining run dir, OUT/runs/<variant>-s<seed>, run seed
   by seed with the variants interleaved, so that a slow spell of a shared machine falls on every
   variant alike rather than on one.
3. OUT/results.json holds every number and OUT/report.md the table: total and active parameters
   (what one token passes through: for a mixture of experts the shared layers and `experts_per_token`
   experts), the validation loss of every seed with the mean and its Student-t 95% interval,
   tokens/s, and each variant's paired difference from the first variant (same seed, same data),
   with its interval and a verdict; and the validation curves, mean over seeds (val_loss.png).

A run whose summary.json exists is reused, a run interrupted after a checkpoint resumes from it,
and one interrupted before its first checkpoint starts again: a rerun continues where the sweep
stopped. A finished run trained with other settings than the recipe now asks is refused, not
mixed into the table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from ..eval.metrics import mean_ci, t_quantile
from ..recipe import RecipeError, dump_yaml, from_dict, load_recipe, read_yaml
from ..utils import new_figure, save_figure, write_json_atomic
from .pretrain import PretrainRecipe

# what a variant may not change: the data and the seeds are the sweep's, so that runs stay paired
SHARED_KEYS = ("data", "data_dir", "out", "train.seed")
# what makes two runs the same experiment (config.yaml's data section is rewritten as prepared)
COMPARED_SECTIONS = ("model", "train", "objective", "mask_rate")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class AblationRecipe:
    base: dict[str, Any] | str = field(default_factory=dict)  # a pretrain recipe, or the path of its YAML
    variants: dict[str, Any] = field(default_factory=dict)  # name -> overrides of base (nested, or dotted keys)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # train.seed of each run of every variant
    out: str = "runs/ablate"

    def __post_init__(self) -> None:
        if len(self.variants) < 2:
            raise RecipeError(f"variants has {len(self.variants)} entr{'y' if len(self.variants) == 1 else 'ies'}: "
                              "give at least two to compare, e.g. {dense: {}, moe: {model: {preset: tiny-mixtral}}}")
        for name, changes in self.variants.items():
            if not isinstance(name, str) or not NAME.match(name):
                raise RecipeError(f"variants.{name}: a variant's name names its run dirs: use letters, digits, "
                                  "'_', '.', '+' or '-'")
            if changes is not None and not isinstance(changes, dict):
                raise RecipeError(f"variants.{name}={changes!r} should be a mapping of overrides of base, "
                                  "e.g. {model: {preset: tiny-mixtral}}, or {} for the base itself")
        if len(self.seeds) < 2:
            raise RecipeError(f"seeds={self.seeds}: an interval over seeds needs at least two (three or more "
                              "for a claim), e.g. seeds=[0,1,2]")
        if len(set(self.seeds)) != len(self.seeds):
            raise RecipeError(f"seeds={self.seeds} repeats a seed: a repeated run adds no evidence")


# ------------------------------------------------------------------------------ recipes
def flat_overrides(changes: dict[str, Any] | None, prefix: str = "") -> list[str]:
    """A (nested) mapping as dotted key=value overrides, one per leaf, so that a variant changes
    only the keys it names (``{model: {overrides: {n_experts: 4}}}`` keeps the base's other
    model overrides); lists and scalars replace the base's value whole."""
    out = []
    for key, value in (changes or {}).items():
        if isinstance(value, dict) and value:
            out += flat_overrides(value, f"{prefix}{key}.")
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix("\n...")
            out.append(f"{prefix}{key}={text}")
    return out


def base_dict(recipe: AblationRecipe) -> dict[str, Any]:
    """The base pretrain recipe as a mapping (a path is read as YAML)."""
    return read_yaml(recipe.base) if isinstance(recipe.base, str) else recipe.base


def variant_recipes(recipe: AblationRecipe) -> dict[str, PretrainRecipe]:
    """Every variant's pretrain recipe, each checked now (keys, the model it builds, its objective)
    so that a mistake in the last variant fails before the first run, naming its key."""
    from ..models.config import preset
    from .pretrain import check_objective

    base = base_dict(recipe)
    from_dict(PretrainRecipe, base, prefix="base.")  # an error in the base names base.<key>
    out = {}
    for name, changes in recipe.variants.items():
        overrides = flat_overrides(changes)
        for text in overrides:
            key = text.split("=", 1)[0]
            if any(key == k or key.startswith(k + ".") for k in SHARED_KEYS):
                raise RecipeError(f"variants.{name}.{key}: every variant trains on the same data with the same seeds "
                                  f"(the sweep's `seeds` and the base's data): set {key} in base, not in a variant")
        try:
            r = load_recipe(PretrainRecipe, None, overrides, base=base)
            if not r.model.init:
                check_objective(r.objective, preset(r.model.preset, **r.model.overrides))
        except ValueError as e:
            raise RecipeError(f"variants.{name}: {e}") from e
        out[name] = r
    return out


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}"


def _normal(obj: Any) -> Any:
    """A recipe (section) as plain YAML data, as config.yaml holds it."""
    return yaml.safe_load(dump_yaml(obj))


def changed_settings(run_dir: Path, recipe: PretrainRecipe) -> list[str]:
    """``key: old -> new`` for every setting of `COMPARED_SECTIONS` in which the run in `run_dir`
    (its config.yaml) differs from `recipe`; [] when they agree or the run has no config."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return []
    old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    new = _normal(recipe)
    return [f"{k}: {a!r} -> {b!r}" for s in COMPARED_SECTIONS for k, a, b in _diff(old.get(s), new.get(s), s)]


def _diff(a: Any, b: Any, key: str) -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _diff(a.get(k), b.get(k), f"{key}.{k}")]
    return [] if a == b else [(key, a, b)]


def check_prepared_data(data_dir: Path, recipe: PretrainRecipe) -> None:
    """Refuse OUT/data prepared from other data settings than the recipe's (a rerun would
    otherwise train on the old data while the recipe shows the new); a given data_dir is the user's."""
    stats = data_dir / "stats.json"
    if recipe.data_dir or not stats.is_file():
        return
    old = json.loads(stats.read_text(encoding="utf-8")).get("config") or {}
    new = _normal(recipe.data)
    changed = [f"{k}: {a!r} -> {b!r}" for k, a, b in _diff(old, new, "data") if k != "data.workers"]
    if changed:
        raise RecipeError(f"{data_dir} was prepared with other data settings ({'; '.join(changed[:3])}): every run "
                          "of a sweep reads the same data; choose another --out, or delete it to prepare it again")


def run_or_reuse(recipe: PretrainRecipe) -> tuple[dict[str, Any], str]:
    """(summary, what happened: "reused", "resumed" or "trained") of the pretrain run `recipe.out`."""
    from ..train.checkpoint import latest_checkpoint
    from .pretrain import pretrain, read_summary

    out = Path(recipe.out)
    if (out / "summary.json").is_file():
        return read_summary(out), "reused"
    if latest_checkpoint(out) is not None:
        return pretrain(recipe, resume=True), "resumed"
    if out.exists():  # stopped before its first checkpoint: nothing in it to keep
        shutil.rmtree(out)
    return pretrain(recipe), "trained"


# ---------------------------------------------------------------------------- statistics
def verdict(name: str, first: str, low: float, high: float, lower_is_better: bool = True) -> str:
    """Which variant is better when the interval of `name` − `first` excludes 0; else no difference."""
    if low <= 0 <= high or math.isnan(low):
        return "inside the noise: no difference"
    better = name if (high < 0) == lower_is_better else first
    return f"{better} is better"


# ------------------------------------------------------------------------------ one run's figures
def run_figures(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """What the table needs of one run: the final validation loss, parameters (total and active,
    with and without embeddings, from the saved model's config), tokens, training speed, the
    validation curve and the router's balance."""
    from ..models.resolve import model_config
    from ..train.logger import read_metrics

    cfg = model_config(run_dir)
    rows = read_metrics(run_dir)
    # the median step: the steps after an evaluation or checkpoint count its pause (the Trainer's
    # figure runs from the previous step's end), and a neighbour's burst hits only a few steps
    speeds = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]
    loads = [r["moe_load_max"] for r in rows if "moe_load_max" in r]
    return {"val_loss": summary["final_val_loss"], "tokens": summary["tokens"], "steps": summary["steps"],
            "tokens_per_s": statistics.median(speeds) if speeds else summary.get("tokens_per_s"),
            "precision": summary.get("precision"),
            "params_total": cfg.num_parameters(), "params_active": cfg.num_parameters(active=True),
            "params_total_non_embedding": cfg.num_parameters(embeddings=False),
            "params_active_non_embedding": cfg.num_parameters(embeddings=False, active=True),
            "moe_load_max": loads[-1] if loads else None,
            "val_curve": [[r["step"], r["val_loss"]] for r in rows if "val_loss" in r]}


def compare(runs: dict[str, dict[int, dict[str, Any]]], seeds: Sequence[int]) -> dict[str, Any]:
    """The results of every variant ({variant: {seed: run_figures}}) over `seeds`, and each
    variant's paired difference from the first."""
    names = list(runs)
    first = names[0]
    variants, paired = {}, {}
    for name in names:
        per = [runs[name][s] for s in seeds]
        loss = [r["val_loss"] for r in per]
        speed = [r["tokens_per_s"] for r in per]
        m, lo, hi = mean_ci(loss)
        sm, slo, shi = mean_ci(speed)
        loads = [r["moe_load_max"] for r in per if r["moe_load_max"] is not None]
        variants[name] = {
            **{k: per[0][k] for k in ("params_total", "params_active", "params_total_non_embedding",
                                      "params_active_non_embedding", "tokens", "steps")},
            "val_loss": loss, "val_loss_mean": m, "val_loss_ci": [lo, hi],
            "tokens_per_s": speed, "tokens_per_s_mean": sm, "tokens_per_s_ci": [slo, shi],
            "speed_vs_first": statistics.fmean(s / runs[first][seed]["tokens_per_s"] for s, seed in zip(speed, seeds)),
            "moe_load_max": statistics.fmean(loads) if loads else None,
            "precision": sorted({str(r["precision"]) for r in per}),
            "val_curve": mean_curve([r["val_curve"] for r in per])}
        if name != first:
            diffs = [runs[name][s]["val_loss"] - runs[first][s]["val_loss"] for s in seeds]
            d, dlo, dhi = mean_ci(diffs)
            v = verdict(name, first, dlo, dhi)
            paired[name] = {"against": first, "diffs": diffs, "mean": d, "ci": [dlo, dhi], "verdict": v,
                            "sentence": f"{name} − {first} = {d:+.4f} [{dlo:+.4f}, {dhi:+.4f}]: "
                                        + (v if v.startswith("inside") else f"the {v}")}
    return {"seeds": list(seeds), "first": first, "variants": variants, "paired": paired}


def mean_curve(curves: Sequence[Sequence[Sequence[float]]]) -> list[list[float]]:
    """[step, mean loss] at the steps every curve has."""
    by_step = [{step: loss for step, loss in c} for c in curves]
    common = set.intersection(*(set(d) for d in by_step)) if by_step else set()
    return [[s, statistics.fmean(d[s] for d in by_step)] for s in sorted(common)]


# ---------------------------------------------------------------------------------- the sweep
def ablate(recipe: AblationRecipe, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or continue) the sweep (see the module doc); returns the results (also OUT/results.json).
    `progress` is told of each run as it ends: index, total, variant, seed, status, run_dir, summary."""
    from ..data.dataset import read_index
    from ..train import distributed as D
    from .pretrain import prepare_or_reuse_data

    recipes = variant_recipes(recipe)
    root = Path(recipe.out)
    first = next(iter(recipes.values()))
    data_dir = Path(first.data_dir) if first.data_dir else root / "data"
    check_prepared_data(data_dir, first)
    # seed by seed, the variants interleaved; every run checked against what OUT holds before any trains
    plan = [(name, seed, dataclasses.replace(r, data_dir=str(data_dir), out=str(root / "runs" / run_name(name, seed)),
                                             train=dataclasses.replace(r.train, seed=seed)))
            for seed in recipe.seeds for name, r in recipes.items()]
    for _, _, run in plan:
        changed = changed_settings(Path(run.out), run)
        if changed:
            raise RecipeError(f"{run.out} holds a run with other settings ({'; '.join(changed[:3])}): the sweep "
                              "would mix two experiments; choose another --out, or delete that run to train it again")
    prepare_or_reuse_data(first, root, D.init_distributed(first.train.device))
    if not read_index(data_dir)["splits"].get("val", {}).get("num_sequences"):
        raise RecipeError(f"{data_dir} has no validation sequences, and the sweep compares validation losses: "
                          "prepare it with base.data.val_fraction > 0 (e.g. 0.05) and more text")
    runs: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in recipes}
    for index, (name, seed, run) in enumerate(plan, 1):
        summary, status = run_or_reuse(run)
        runs[name][seed] = run_figures(Path(run.out), summary)
        if progress is not None:
            progress({"index": index, "total": len(plan), "variant": name, "seed": seed, "status": status,
                      "run_dir": run.out, "summary": summary, **runs[name][seed]})
    result = compare(runs, recipe.seeds)
    result.update({"data_dir": str(data_dir), "runs": {name: {str(s): str(root / "runs" / run_name(name, s))
                                                              for s in recipe.seeds} for name in recipes},
                   "recipe": {"base": base_dict(recipe), "variants": recipe.variants}})
    write_json_atomic(root / "results.json", result)
    write_ablation_report(root, result)
    return result


# ---------------------------------------------------------------------------------- the report
def _f(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def results_table(result: dict[str, Any]) -> list[str]:
    """The comparison as markdown lines: one row per variant, then the paired differences."""
    seeds, first = result["seeds"], result["first"]
    lines = ["## Results", "",
             "| variant | parameters: total (non-embedding) | active per token (non-embedding) | tokens per run | "
             "validation loss per seed | mean [95% CI] | tokens/s mean [95% CI] | speed vs "
             f"{first} |", "|---|---|---|---|---|---|---|---|"]
    for name, v in result["variants"].items():
        lo, hi = v["val_loss_ci"]
        slo, shi = v["tokens_per_s_ci"]
        lines.append(f"| {name} | {v['params_total']:,} ({v['params_total_non_embedding']:,}) | "
                     f"{v['params_active']:,} ({v['params_active_non_embedding']:,}) | {v['tokens']:,} | "
                     + ", ".join(_f(x) for x in v["val_loss"]) + f" | {_f(v['val_loss_mean'])} [{_f(lo)}, {_f(hi)}] | "
                     f"{_f(v['tokens_per_s_mean'], ',.0f')} [{_f(slo, ',.0f')}, {_f(shi, ',.0f')}] | "
                     f"{v['speed_vs_first']:.2f}× |")
    lines += ["", f"Seeds {', '.join(map(str, seeds))} (train.seed: initial weights and batch order); every run "
              "reads the same prepared data. The interval is Student's t over seeds. Active parameters are those one "
              "token passes through (for a mixture of experts: the shared layers, the router and its "
              "experts_per_token experts). tokens/s is each run's median training step, averaged over seeds; the "
              "speed ratio is paired by seed."]
    loads = {n: v["moe_load_max"] for n, v in result["variants"].items() if v["moe_load_max"] is not None}
    if loads:
        lines += ["", "Router balance at the last step (the busiest expert's share of assignments over an even "
                  "share; 1 = even): " + ", ".join(f"{n} {x:.2f}" for n, x in loads.items()) + "."]
    mixed = [n for n, v in result["variants"].items() if len(v["precision"]) > 1]
    if mixed:
        lines += ["", f"Warning: the runs of {', '.join(mixed)} trained in different precisions: set "
                  "base.train.precision so that every run uses the same."]
    if result["paired"]:
        lines += ["", f"## Paired differences against {first} (same seed, same data)", "",
                  "| variant | Δ validation loss per seed | mean Δ [95% CI] | verdict |", "|---|---|---|---|"]
        for name, p in result["paired"].items():
            lo, hi = (_f(x, "+.4f") for x in p["ci"])
            lines.append(f"| {name} − {first} | " + ", ".join(f"{d:+.4f}" for d in p["diffs"])
                         + f" | {p['mean']:+.4f} [{lo}, {hi}] | {p['verdict']} |")
        lines += [""] + [p["sentence"] + "." for p in result["paired"].values()]
        lines += ["", "Lower validation loss is better; a difference counts only when its interval excludes 0."]
    return lines


def plot_val_curves(result: dict[str, Any], path: Path) -> Path | None:
    """The validation loss against step of each variant, mean over seeds, as a PNG."""
    curves = {n: v["val_curve"] for n, v in result["variants"].items() if v["val_curve"]}
    if not curves:
        return None
    fig, ax = new_figure()
    for name, curve in curves.items():
        ax.plot(*zip(*curve), "o-", label=name, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(f"validation loss (nats/token), mean of {len(result['seeds'])} seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def write_ablation_report(root: Path, result: dict[str, Any]) -> Path:
    """OUT/report.md through the one report writer: the sweep's figures, the results table, the
    validation curves and links to every run's own report."""
    from .report import write_report

    png = plot_val_curves(result, root / "val_loss.png")
    variants = result["variants"]
    rows = [("variants", ", ".join(variants)), ("seeds", ", ".join(map(str, result["seeds"]))),
            ("runs", sum(len(r) for r in result["runs"].values())), ("prepared data", result["data_dir"]),
            ("precision", ", ".join(sorted({p for v in variants.values() for p in v["precision"]})))]
    curves = ["## Validation loss", "", f"![validation loss per variant, mean over seeds]({png.name})"] if png else []
    links = ["## Runs", ""] + [f"- {n} seed {s}: [{Path(d).relative_to(root)}/report.md]"
                               f"({Path(d).relative_to(root)}/report.md)"
                               for n, by_seed in result["runs"].items() for s, d in by_seed.items()]
    return write_report(root, f"Ablation {root.name}: {' vs '.join(variants)}", {}, rows,
                        [results_table(result), curves, links])


def read_results(out: str | Path) -> dict[str, Any]:
    return json.loads((Path(out) / "results.json").read_text(encoding="utf-8"))


__all__ = ["AblationRecipe", "ablate", "read_results", "variant_recipes"]
