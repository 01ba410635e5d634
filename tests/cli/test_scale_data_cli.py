"""`llmkit scale` and `llmkit data prepare` through the command line."""

from __future__ import annotations

import json
import math

import pytest

from llmkit.cli.main import main


def test_scale_optimal(capsys):
    assert main(["scale", "optimal", "--flops", "1e21"]) == 0
    out = capsys.readouterr().out
    n = math.sqrt(1e21 / 120)  # C = 6·N·D with D = 20·N
    assert f"{n:.4g} parameters" in out and f"{20 * n:.4g} tokens" in out and "Kaplan" in out
    assert main(["scale", "optimal"]) == 2


def memory_rows(text: str) -> dict[str, tuple[float, float]]:
    """{component: (bytes, bytes per parameter)} from the table `llmkit scale memory` prints."""
    units = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[2] in units and parts[4] == "B/param":
            rows[parts[0]] = (float(parts[1]) * units[parts[2]], float(parts[3]))
    return rows


@pytest.mark.parametrize("params, dtype, per", [("1e9", "fp32", 4), ("2.5e9", "bf16", 2), ("7e9", "int4", 0.5)])
def test_scale_memory_of_a_bare_count_is_its_weights(capsys, params, dtype, per):
    assert main(["scale", "memory", "--params", params, "--method", "inference", "--dtype", dtype]) == 0
    rows = memory_rows(capsys.readouterr().out)
    weights = float(params) * per  # bytes per weight: 4 (fp32), 2 (bf16), half a byte (int4 codes)
    assert rows["weights"] == pytest.approx((weights, per), rel=1e-3)
    assert rows["total"] == rows["weights"] and rows["gradients"] == rows["optimizer"] == (0, 0)


def test_scale_memory_of_full_adamw_training(capsys):
    """llama-2-7b (6,738,415,616 parameters, as transformers counts them: tests/models/test_config.py)
    in fp32 with AdamW: 4 bytes each of weights and gradients, 8 of the two moments."""
    n = 6_738_415_616
    assert main(["scale", "memory", "--preset", "llama-2-7b", "--method", "full", "--dtype", "fp32",
                 "--seq-len", "512"]) == 0
    rows = memory_rows(capsys.readouterr().out)
    for name, per in (("weights", 4), ("gradients", 4), ("optimizer", 8)):
        assert rows[name][0] == pytest.approx(per * n, abs=0.006e9), name  # printed to 0.01 GB
        assert rows[name][1] == per, name
    acts = rows["activations"][0]
    assert acts > 0 and rows["total"][0] == pytest.approx(16 * n + acts, abs=0.02e9)


def test_scale_memory_of_a_mixture_of_experts_counts_every_expert(capsys):
    """Mixtral 8x7B's 46,702,792,704 parameters (by hand in tests/cli/test_models_cli.py) all take
    weights, gradients and AdamW state; the 12,879,925,248 a token passes through are shown beside them."""
    from tests.cli.test_models_cli import MIXTRAL_ACTIVE, MIXTRAL_TOTAL

    assert main(["scale", "memory", "--preset", "mixtral-8x7b", "--method", "full", "--dtype", "fp32",
                 "--seq-len", "512"]) == 0
    out = capsys.readouterr().out
    rows = memory_rows(out)
    for name, per in (("weights", 4), ("gradients", 4), ("optimizer", 8)):
        assert rows[name][0] == pytest.approx(per * MIXTRAL_TOTAL, abs=0.006e9), name
    assert f"{MIXTRAL_TOTAL:,} params ({MIXTRAL_ACTIVE:,} active per token" in out
    assert "mixture of 8 experts x 14336, top 2 (renormalised)" in out
    assert main(["scale", "memory", "--preset", "mixtral-8x7b", "--dtype", "bf16"]) == 0
    assert memory_rows(capsys.readouterr().out)["weights"][0] == pytest.approx(2 * MIXTRAL_TOTAL, abs=0.006e9)


def test_scale_fit_on_runs(tmp_path, capsys):
    E, A, B, a, b = 1.8, 400.0, 400.0, 0.34, 0.28
    runs = []
    for i, (n, d) in enumerate([(1e5, 2e6), (3e5, 6e6), (1e6, 2e7), (3e6, 6e7), (1e6, 1e8), (1e5, 2e7)]):
        run = tmp_path / f"r{i}"
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({"params": n, "tokens": d, "final_val_loss": E + A / n**a + B / d**b}))
        runs.append(str(run))
    plot = tmp_path / "fit.png"
    assert main(["scale", "fit", *runs, "--predict-params", "1e7", "--predict-tokens", "2e8", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    projected = float(out.split("projected loss")[1].split(":")[1].split()[0])
    assert projected == pytest.approx(E + A / 1e7**a + B / 2e8**b, rel=0.02)
    assert plot.stat().st_size > 1000


def test_data_prepare_cli(tmp_path, capsys):
    src = tmp_path / "corpus"
    src.mkdir()
    for i in range(12):
        (src / f"doc{i}.txt").write_text(f"Document number {i} talks about topic {i * 7} at some length. " * 20)
    out = tmp_path / "prepared"
    assert main(["data", "prepare", "--data", str(src), "--out", str(out), "seq_len=16", "vocab_size=300",
                 "val_fraction=0.2"]) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and str(out) in printed
    index = json.loads((out / "index.json").read_text())
    assert index["seq_len"] == 16
    assert main(["data", "prepare", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "p2")]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "p2").exists()
