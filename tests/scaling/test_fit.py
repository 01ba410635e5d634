"""Fitting L(N, D) to runs: recovery of known constants, projection, fixed exponents, run loading, plot."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from llmkit.scaling import ScalingError, ScalingLaw, fit_law, load_runs, plot_fit
from tests.peers import peer

TRUE = ScalingLaw(E=1.9, A=350.0, B=900.0, alpha=0.33, beta=0.30)


def _grid(law: ScalingLaw, noise: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    pts = []
    for n in np.geomspace(1e6, 1e8, 5):
        for d in np.geomspace(2e7, 2e9, 5):
            pts.append((n, d, float(law.predict(n, d)) * float(np.exp(rng.normal(0, noise)))))
    return pts


def test_recovers_constants_without_noise():
    fit = fit_law(_grid(TRUE))
    assert not fit.fixed_exponents
    assert fit.alpha == pytest.approx(TRUE.alpha, abs=0.01)
    assert fit.beta == pytest.approx(TRUE.beta, abs=0.01)
    assert fit.E == pytest.approx(TRUE.E, abs=0.02)
    assert fit.rmse < 1e-3


def test_recovers_predictions_with_noise_and_projects_a_bigger_run():
    fit = fit_law(_grid(TRUE, noise=0.003))
    assert fit.alpha == pytest.approx(TRUE.alpha, abs=0.08)
    assert fit.beta == pytest.approx(TRUE.beta, abs=0.08)
    assert fit.E == pytest.approx(TRUE.E, abs=0.15)
    assert fit.rmse < 0.02
    assert len(fit.residuals) == 25
    # a run 10x bigger than any observed, at 20 tokens/param, 100x more data than the largest run
    n, d = 1e9, 2e10
    assert fit.predict(n, d) == pytest.approx(TRUE.predict(n, d), rel=0.01)
    # and the compute-optimal allocation it implies
    assert fit.optimal(1e21).params == pytest.approx(TRUE.optimal(1e21).params, rel=0.5)


def test_few_runs_fix_the_exponents():
    pts = _grid(TRUE)[::7]  # 4 runs < 5 constants
    fit = fit_law(pts)
    assert fit.fixed_exponents and "fixed" in fit.note
    assert (fit.alpha, fit.beta) == (0.34, 0.28)
    assert max(abs(r) for r in fit.residuals) < 0.05
    own = fit_law(_grid(TRUE)[::6], exponents=(TRUE.alpha, TRUE.beta))  # right exponents: exact recovery
    assert own.E == pytest.approx(TRUE.E, rel=0.01) and own.rmse < 1e-3
    # runs at one tokens/param ratio cannot separate the N and D terms: said in the note
    same_ratio = fit_law([(n, 20 * n, float(TRUE.predict(n, 20 * n))) for n in (1e6, 1e7, 1e8)])
    assert "not determined" in same_ratio.note
    with pytest.raises(ScalingError, match="at least 3"):
        fit_law(pts[:2])
    with pytest.raises(ScalingError, match="positive"):
        fit_law([(1e6, 1e7, 3.0), (1e7, 1e8, -1.0), (1e8, 1e9, 2.0)])


def _run(root, name, **summary):
    d = root / name
    d.mkdir()
    if summary:
        (d / "summary.json").write_text(json.dumps(summary))
    return d


def test_load_runs(tmp_path, caplog):
    good = [_run(tmp_path, f"r{i}", params=10 ** (6 + i), tokens=2 * 10 ** (7 + i), final_val_loss=4.0 - i,
                 steps=100) for i in range(3)]
    unfinished = _run(tmp_path, "unfinished", params=1e6, tokens=1e7)
    empty = _run(tmp_path, "empty")
    with caplog.at_level(logging.WARNING, logger="llmkit.scaling.fit"):
        runs = load_runs([*good, unfinished, empty, tmp_path / "missing"])
    assert runs == [(1e6, 2e7, 4.0), (1e7, 2e8, 3.0), (1e8, 2e9, 2.0)]
    assert runs[0].params == 1e6 and runs[0].loss == 4.0
    assert "final_val_loss" in caplog.text and "empty" in caplog.text
    assert load_runs([good[0] / "summary.json"]) == runs[:1]
    with pytest.raises(ScalingError, match="no usable runs.*final_val_loss"):
        load_runs([unfinished, empty])


def test_plot_fit_writes_png(tmp_path):
    peer("matplotlib")
    pts = _grid(TRUE, noise=0.003)
    fit = fit_law(pts)
    out = plot_fit(fit, pts, tmp_path / "plots" / "fit.png", project=(1e9, 2e10))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000
