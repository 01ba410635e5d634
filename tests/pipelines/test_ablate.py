"""`llmkit ablate`: variants of a pretraining recipe over seeds on shared data, compared in a table.

The default tests run a minimal sweep (a tiny Llama against the tiny Mixtral of the same active
parameters, 3 seeds of 4 steps on a slice of the embedded corpus) through the real command and
check its table against figures computed here: parameter counts of models built independently,
validation losses read from each run's own summary, Student-t intervals from scipy. Then an
interrupted sweep continues (a run resumed from its checkpoint, one started again, the rest
reused) to the same numbers, a sweep over runs trained with other settings is refused, and recipe
mistakes are one line naming the key. The slow test runs the shipped recipe and checks what the
report claims.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
import yaml
from scipy import stats

from llmkit.cli.main import main
from llmkit.eval.metrics import t_quantile

ROOT = Path(__file__).resolve().parents[2]
BASE = {"model": {"preset": "tiny-llama"},
        "data": {"sources": [{"path": "stdlib", "max_bytes": 60_000}], "seq_len": 32, "vocab_size": 300},
        "train": {"micro_batch": 4, "steps": 4, "warmup_steps": 1, "eval_every": 2, "eval_batches": 2,
                  "save_every": 2, "precision": "fp32", "sample_prompts": [], "device": "cpu"}}
# tiny-mixtral: 4 experts of width 88, 2 per token = tiny-llama's MLP width 176 per token
VARIANTS = {"dense": {}, "moe": {"model": {"preset": "tiny-mixtral", "overrides": {"router_aux_loss_coef": 0.01}}}}
SEEDS = [0, 1, 2]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["ablate", *args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "ablate.yaml"
    path.write_text(yaml.safe_dump({"base": BASE, "variants": VARIANTS, "seeds": SEEDS}))
    return path


@pytest.fixture(scope="module")
def sweep(recipe_file, tmp_path_factory):
    """The minimal sweep, run once through the command: (OUT, stdout)."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    code, stdout, stderr = cli("--config", str(recipe_file), "--out", str(out))
    assert code == 0, stderr
    return out, stdout


def summaries(out: Path) -> dict[tuple[str, int], dict]:
    return {(v, s): json.loads((out / "runs" / f"{v}-s{s}" / "summary.json").read_text())
            for v in VARIANTS for s in SEEDS}


def t_interval(values: list[float]) -> tuple[float, float, float]:
    n, mean = len(values), statistics.fmean(values)
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def independent_counts(data_dir: Path) -> dict[str, tuple[int, int]]:
    """(total, active) parameters of each variant's model, built here and counted module by module:
    active leaves out, in every layer, the experts a token does not pass through."""
    from llmkit.models.config import preset
    from llmkit.models.transformer import Transformer
    from llmkit.tokenizer import Tokenizer

    vocab = Tokenizer.from_dir(data_dir / "tokenizer").vocab_size
    out = {}
    for name, preset_name in (("dense", "tiny-llama"), ("moe", "tiny-mixtral")):
        model = Transformer(preset(preset_name, vocab_size=vocab))
        total = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
        idle = 0
        for m in model.modules():
            if hasattr(m, "experts"):
                per_expert = sum(p.numel() for p in m.experts[0].parameters())
                idle += (len(m.experts) - model.config.experts_per_token) * per_expert
        out[name] = (total, total - idle)
    return out


def test_sweep_runs_every_variant_and_seed_on_one_prepared_data(sweep):
    out, stdout = sweep
    lines = [line for line in stdout.splitlines() if line.startswith("[")]
    order = [(v, s) for s in SEEDS for v in VARIANTS]  # seed by seed, the variants interleaved
    assert [line.split(" ")[:3] for line in lines] == [[f"[{i + 1}/6]", f"{v}-s{s}", "trained:"]
                                                       for i, (v, s) in enumerate(order)]
    assert (out / "data" / "index.json").is_file()
    configs = {(v, s): yaml.safe_load((out / "runs" / f"{v}-s{s}" / "config.yaml").read_text())
               for v in VARIANTS for s in SEEDS}
    for (v, s), cfg in configs.items():
        assert not (out / "runs" / f"{v}-s{s}" / "data").exists()  # no run prepared its own
        assert Path(cfg["data_dir"]) == out / "data" and cfg["train"]["seed"] == s
        # the same tokens in the same order per seed: the loader is fixed by the data, batch and seed
        assert cfg["train"] == configs[("dense", s)]["train"]
    assert configs[("moe", 0)]["model"]["preset"] == "tiny-mixtral"
    assert configs[("dense", 0)]["model"]["preset"] == "tiny-llama"
    tokens = {s["tokens"] for s in summaries(out).values()}
    assert tokens == {4 * 4 * 32}
    assert (out / "val_loss.png").stat().st_size > 0 and (out / "report.md").is_file()


def test_table_figures_match_independent_computation(sweep):
    out, _ = sweep
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    runs = summaries(out)
    counts = independent_counts(out / "data")
    dense_total, dense_active = counts["dense"]
    moe_total, moe_active = counts["moe"]
    assert dense_active == dense_total and moe_total > moe_active
    assert moe_active - dense_active == 2 * 64 * 4  # only the routers' weights (2 layers, 64 wide, 4 experts)
    rows = {line.split("|")[1].strip(): line for line in report.splitlines()
            if line.startswith(("| dense |", "| moe |"))}
    for name in VARIANTS:
        total, active = counts[name]
        v = results["variants"][name]
        assert (v["params_total"], v["params_active"]) == (total, active)
        cells = [c.strip() for c in rows[name].split("|")[1:-1]]
        assert cells[1].startswith(f"{total:,} (") and cells[2].startswith(f"{active:,} (")
        losses = [runs[(name, s)]["final_val_loss"] for s in SEEDS]
        assert cells[4] == ", ".join(f"{x:.4f}" for x in losses)
        mean, lo, hi = t_interval(losses)
        assert v["val_loss"] == pytest.approx(losses)
        assert (v["val_loss_mean"], *v["val_loss_ci"]) == pytest.approx((mean, lo, hi), rel=1e-9)
        assert cells[5] == f"{mean:.4f} [{lo:.4f}, {hi:.4f}]"
    # the paired difference: per seed, moe minus dense, on the same data
    diffs = [runs[("moe", s)]["final_val_loss"] - runs[("dense", s)]["final_val_loss"] for s in SEEDS]
    d, dlo, dhi = t_interval(diffs)
    p = results["paired"]["moe"]
    assert (p["mean"], *p["ci"]) == pytest.approx((d, dlo, dhi), rel=1e-9)
    expected = ("moe is better" if dhi < 0 else "dense is better" if dlo > 0 else "inside the noise: no difference")
    assert p["verdict"] == expected
    assert f"moe − dense = {d:+.4f} [{dlo:+.4f}, {dhi:+.4f}]" in report and expected in report


def test_t_quantile_matches_scipy_and_the_tables():
    # textbook values (two-sided 95% and 99%)
    assert t_quantile(0.975, 1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile(0.975, 2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile(0.975, 4) == pytest.approx(2.776, abs=1e-3)
    assert t_quantile(0.995, 9) == pytest.approx(3.250, abs=1e-3)
    for df in range(1, 31):
        for p in (0.9, 0.95, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-8)


def test_an_interrupted_sweep_continues_to_the_same_numbers(sweep, recipe_file, tmp_path):
    done, _ = sweep
    out = tmp_path / "out"
    shutil.copytree(done, out)
    (out / "results.json").unlink()
    (out / "report.md").unlink()
    # moe-s1 was stopped after its step-2 checkpoint; dense-s2 before its first checkpoint
    moe = out / "runs" / "moe-s1"
    for name in ("summary.json", "report.md", "model", "checkpoints/step_000004", "checkpoints/latest"):
        path = moe / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    dense = out / "runs" / "dense-s2"
    for path in dense.iterdir():
        if path.name not in ("config.yaml", "metrics.jsonl"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    kept = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/summary.json")}
    code, stdout, stderr = cli("--config", str(recipe_file), "--out", str(out))
    assert code == 0, stderr
    status = {line.split(" ")[1]: line.split(" ")[2].rstrip(":") for line in stdout.splitlines()
              if line.startswith("[")}
    assert status == {"dense-s0": "reused", "moe-s0": "reused", "dense-s1": "reused", "moe-s1": "resumed",
                      "dense-s2": "trained", "moe-s2": "reused"}
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished runs untouched
    before, after = summaries(done), summaries(out)
    for key in before:
        assert after[key]["final_val_loss"] == pytest.approx(before[key]["final_val_loss"], rel=1e-6), key
        assert after[key]["steps"] == 4
    assert json.loads((out / "results.json").read_text())["paired"]["moe"]["mean"] == pytest.approx(
        json.loads((done / "results.json").read_text())["paired"]["moe"]["mean"], rel=1e-5)


def test_runs_of_other_settings_are_refused_not_mixed(sweep, recipe_file, tmp_path):
    done, _ = sweep
    out = tmp_path / "out"
    shutil.copytree(done, out)
    code, _, stderr = cli("--config", str(recipe_file), "--out", str(out), "base.train.steps=5")
    assert code == 2 and "train.steps: 4 -> 5" in stderr and "dense-s0" in stderr
    assert not any((out / "runs").glob("*/checkpoints/step_000005"))  # refused before any run trained
    # nor is OUT/data, prepared from other data settings, read as if it were the recipe's
    code, _, stderr = cli("--config", str(recipe_file), "--out", str(out), "base.data.vocab_size=301")
    assert code == 2 and "data.vocab_size: 300 -> 301" in stderr
    assert json.loads((out / "data" / "index.json").read_text())["vocab_size"] <= 300


@pytest.mark.parametrize("override, named", [
    ("base.train.stepz=3", "base.train.stepz"),
    ("variants.moe.model.presett=tiny-mixtral", "variants.moe: unknown key model.presett"),
    ("variants.moe.model.overrides.n_experts=-1", "variants.moe: n_experts=-1"),
    ("variants.moe.model.overrides.experts_per_token=9", "variants.moe: experts_per_token=9"),
    ("variants.moe.data.seq_len=64", "variants.moe.data.seq_len"),
    ("variants.moe.train.seed=3", "variants.moe.train.seed"),
    ("variants={dense: {}}", "variants has 1 entry"),
    ("variants.moe=3", "variants.moe=3"),
    ("seeds=[0]", "seeds=[0]"),
    ("seeds=[1,1]", "seeds=[1, 1]"),
    ("seed=3", "did you mean seeds"),
])
def test_recipe_errors_name_the_key(recipe_file, tmp_path, override, named):
    out = tmp_path / "out"
    code, _, stderr = cli("--config", str(recipe_file), "--out", str(out), override)
    assert code == 2 and named in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not out.exists()  # refused before anything was written


def test_data_without_a_validation_split_is_refused_before_training(recipe_file, tmp_path):
    out = tmp_path / "out"
    code, _, stderr = cli("--config", str(recipe_file), "--out", str(out), "base.data.val_fraction=0")
    assert code == 2 and "no validation sequences" in stderr and "base.data.val_fraction" in stderr
    assert not (out / "runs").exists()


@pytest.mark.slow
def test_shipped_moe_vs_dense_recipe(tmp_path):
    """The shipped recipe, whole (about 5 minutes on 2 quiet cores), and what its report claims: at
    equal active parameters and tokens the MoE (twice the MLP weights) and the dense model end inside
    each other's noise (measured: dense 4.7207 [4.6112, 4.8301], moe 4.7231 [4.5907, 4.8554],
    moe − dense = +0.0024 [−0.1414, +0.1462]), with the router kept balanced by its auxiliary loss."""
    out = tmp_path / "moe-vs-dense"
    code, stdout, stderr = cli("--config", str(ROOT / "recipes" / "moe-vs-dense-tiny.yaml"), "--out", str(out))
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    dense, moe = results["variants"]["dense"], results["variants"]["moe"]
    assert results["seeds"] == [0, 1, 2]
    # equal active parameters up to the routers (4 layers x 128 wide x 4 experts); twice the MLP weights in total
    assert dense["params_active"] == dense["params_total"]
    assert moe["params_active"] - dense["params_active"] == 4 * 128 * 4
    assert moe["params_total"] - dense["params_total"] == 4 * 3 * 128 * 344 + 4 * 128 * 4
    assert moe["tokens"] == dense["tokens"] == 300 * 16 * 128
    for v in (dense, moe):  # both learned, to the figures the report gives
        assert v["val_loss_mean"] == pytest.approx(4.72, abs=0.1)
    paired = results["paired"]["moe"]
    assert paired["ci"][0] < 0 < paired["ci"][1] and paired["verdict"] == "inside the noise: no difference"
    assert paired["sentence"] + "." in (out / "report.md").read_text() and paired["sentence"] in stdout
    assert moe["moe_load_max"] < 1.3  # measured 1.08: no expert starved or flooded
