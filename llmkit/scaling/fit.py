"""Fit the Chinchilla loss L(N, D) = E + A/N^α + B/D^β to your own runs, and project bigger ones.

The fit follows Hoffmann et al. (2022, §3.3): minimise the Huber loss (δ = 1e-3) between the log
of the predicted and the observed loss, with the prediction written as a log-sum-exp,

    log L̂ = LSE(a − α·log N, b − β·log D, e),   A = eᵃ, B = eᵇ, E = eᵉ,

by L-BFGS from the best of a grid of initialisations (their grid: α, β ∈ {0, 0.5, …, 2},
e ∈ {−1, −0.5, …, 1}, a, b ∈ {0, 5, …, 25}). The grid is scored in one vectorised pass and the
most promising starts are refined (torch L-BFGS in float64; no scipy). With fewer runs than the five
free constants, α and β are held at Chinchilla's values and only E, A, B are fitted.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

from .laws import CHINCHILLA, Plan, ScalingError, ScalingLaw

log = logging.getLogger(__name__)

HUBER_DELTA = 1e-3
N_STARTS = 8  # best grid points refined with L-BFGS (the same optimum as all 4500 on the tests' data)


class RunPoint(NamedTuple):
    """One training run: `params` N (non-embedding), `tokens` D trained, final validation `loss`."""

    params: float
    tokens: float
    loss: float


@dataclass(frozen=True)
class LawFit:
    """A fitted L(N, D) = E + A/N^α + B/D^β, its `residuals` (observed − predicted loss, one per run)
    and a `note` on how it was fitted (free or fixed exponents)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    residuals: tuple[float, ...]
    fixed_exponents: bool
    note: str

    @property
    def law(self) -> ScalingLaw:
        return ScalingLaw(self.E, self.A, self.B, self.alpha, self.beta)

    def predict(self, params: Any, tokens: Any) -> Any:
        """Projected loss of N = `params` trained on D = `tokens` (floats or numpy arrays)."""
        return self.law.predict(params, tokens)

    def optimal(self, flops: float) -> Plan:
        """The allocation of a compute budget that this fit says minimises loss."""
        return self.law.optimal(flops)

    @property
    def rmse(self) -> float:
        return math.sqrt(sum(r * r for r in self.residuals) / len(self.residuals))

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        """One line: the fitted law, its rmse and how it was fitted."""
        return (f"L(N, D) = {self.E:.4g} + {self.A:.4g}/N^{self.alpha:.4g} + {self.B:.4g}/D^{self.beta:.4g}  "
                f"(rmse {self.rmse:.4f} over {len(self.residuals)} runs; {self.note})")


def _as_points(points: Iterable[Sequence[float]]) -> list[RunPoint]:
    out = []
    for i, p in enumerate(points):
        try:
            n, d, loss = (float(v) for v in p)
        except (TypeError, ValueError):
            raise ScalingError(f"point {i} is {p!r}: each point must be (params, tokens, loss)") from None
        if not all(math.isfinite(v) and v > 0 for v in (n, d, loss)):
            raise ScalingError(f"point {i} is {p!r}: params, tokens and loss must be positive finite numbers")
        out.append(RunPoint(n, d, loss))
    return out


def _objective(theta, log_n, log_d, log_l, delta: float):
    """Summed Huber loss of log-space residuals; `theta` is (..., 5) = (e, a, b, α, β)."""
    import torch

    e, a, b, alpha, beta = theta.unbind(-1)
    pred = torch.logsumexp(torch.stack([
        a[..., None] - alpha[..., None] * log_n,
        b[..., None] - beta[..., None] * log_d,
        e[..., None].expand(*e.shape, log_n.shape[-1]),
    ]), dim=0)
    return torch.nn.functional.huber_loss(pred, log_l.expand_as(pred), delta=delta, reduction="none").sum(-1)


def fit_law(points: Iterable[Sequence[float]], *, exponents: tuple[float, float] | None = None,
            huber_delta: float = HUBER_DELTA) -> LawFit:
    """Fit L(N, D) = E + A/N^α + B/D^β to `points` of (N, D, loss). `exponents=(α, β)` holds the
    exponents fixed; they are also fixed (at Chinchilla's 0.34, 0.28) when there are fewer than 5
    points. At least 3 points are needed."""
    import torch

    pts = _as_points(points)
    if len(pts) < 3:
        raise ScalingError(f"fitting L(N, D) needs at least 3 runs (5 to fit the exponents too); got {len(pts)}")
    if exponents is None and len(pts) < 5:
        exponents = (CHINCHILLA.alpha, CHINCHILLA.beta)
        note = f"exponents fixed at Chinchilla's α={exponents[0]}, β={exponents[1]}: {len(pts)} runs < 5 constants"
    elif exponents is not None:
        note = f"exponents fixed at α={exponents[0]}, β={exponents[1]}"
    else:
        note = "all five constants fitted"
    t = torch.tensor(pts, dtype=torch.float64).log()
    log_n, log_d, log_l = t[:, 0], t[:, 1], t[:, 2]
    if float(log_n.std()) < 1e-6 or float(log_d.std()) < 1e-6 or abs(float(torch.corrcoef(t[:, :2].T)[0, 1])) > 0.999:
        log.warning("the runs vary N and D together (or not at all): A/N^α and B/D^β cannot be told apart; "
                    "add runs with other tokens-per-parameter ratios")
        note += "; N and D never vary independently, so the split between the N and D terms is not determined"
    grid = torch.tensor(list(itertools.product(
        [-1.0, -0.5, 0.0, 0.5, 1.0], [0.0, 5.0, 10.0, 15.0, 20.0, 25.0], [0.0, 5.0, 10.0, 15.0, 20.0, 25.0],
        [0.0, 0.5, 1.0, 1.5, 2.0], [0.0, 0.5, 1.0, 1.5, 2.0])), dtype=torch.float64)
    fixed = None
    if exponents is not None:
        fixed = torch.tensor(exponents, dtype=torch.float64)
        grid = torch.unique(grid[:, :3], dim=0)
        grid = torch.cat([grid, fixed.expand(len(grid), 2)], dim=1)
    scores = _objective(grid, log_n, log_d, log_l, huber_delta)
    starts = grid[scores.argsort()[:N_STARTS]]

    best, best_loss = None, math.inf
    for start in starts:
        free = start[:3].clone() if fixed is not None else start.clone()
        free.requires_grad_(True)
        opt = torch.optim.LBFGS([free], lr=1.0, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            theta = torch.cat([free, fixed]) if fixed is not None else free
            value = _objective(theta, log_n, log_d, log_l, huber_delta)
            value.backward()
            return value

        opt.step(closure)
        with torch.no_grad():
            theta = torch.cat([free, fixed]) if fixed is not None else free.clone()
            value = float(_objective(theta, log_n, log_d, log_l, huber_delta))
        if math.isfinite(value) and value < best_loss:
            best, best_loss = theta.detach(), value
    if best is None:
        raise ScalingError("the fit did not converge from any initialisation: check the runs' losses")
    e, a, b, alpha, beta = (float(v) for v in best)
    law = ScalingLaw(math.exp(e), math.exp(a), math.exp(b), alpha, beta)
    residuals = tuple(p.loss - law.predict(p.params, p.tokens) for p in pts)
    fit = LawFit(law.E, law.A, law.B, alpha, beta, residuals, fixed is not None, note)
    log.info("%s", fit.summary())
    return fit


def load_runs(paths: Iterable[str | Path]) -> list[RunPoint]:
    """Read (N, D, loss) from run directories (or their ``summary.json`` files): keys ``params``
    (non-embedding parameters), ``tokens`` (tokens trained) and ``final_val_loss``. Runs without a
    usable summary are skipped with a warning; none usable is an error."""
    runs: list[RunPoint] = []
    skipped: list[str] = []
    for path in map(Path, paths):
        summary = path if path.suffix == ".json" else path / "summary.json"
        try:
            data = json.loads(summary.read_text(encoding="utf-8"))
            missing = [k for k in ("params", "tokens", "final_val_loss") if data.get(k) is None]
            if missing:
                raise ValueError(f"no {', '.join(missing)} (unfinished run?)")
            runs.append(_as_points([(data["params"], data["tokens"], data["final_val_loss"])])[0])
        except FileNotFoundError:
            skipped.append(f"{path}: no summary.json")
        except (OSError, ValueError, AttributeError, TypeError) as e:  # ScalingError and JSON errors are ValueErrors
            skipped.append(f"{summary}: {e}")
        else:
            continue
        log.warning("skipping run %s", skipped[-1])
    if not runs:
        listed = "; ".join(skipped) or "no paths given"
        raise ScalingError(f"no usable runs to fit ({listed}): give run directories whose summary.json has "
                           "params, tokens and final_val_loss")
    return runs


def plot_fit(fit: LawFit, points: Iterable[Sequence[float]], path: str | Path,
             project: tuple[float, float] | None = None) -> Path:
    """Write a PNG: loss against tokens for each model size (runs as dots, the fit as lines,
    `project` = (N, D) as a star), and observed against predicted loss. Returns the path."""
    import numpy as np

    from llmkit.utils import new_figure, save_figure  # imported lazily like every heavy import here

    pts = _as_points(points)
    fig, (ax, ax2) = new_figure(11, 4.5, ncols=2, dpi=110)
    sizes = sorted({p.params for p in pts})
    d_all = [p.tokens for p in pts] + ([project[1]] if project else [])
    d_grid = np.geomspace(min(d_all) / 2, max(d_all) * 2, 200)
    for n in sizes + ([project[0]] if project and project[0] not in sizes else []):
        line, = ax.plot(d_grid, fit.predict(n, d_grid), lw=1.2, label=f"N={n:.3g}")
        mine = [p for p in pts if p.params == n]
        if mine:
            ax.scatter([p.tokens for p in mine], [p.loss for p in mine], color=line.get_color(), s=20, zorder=3)
    if project:
        ax.scatter([project[1]], [fit.predict(*project)], marker="*", s=160, color="k", zorder=4,
                   label=f"projection {fit.predict(*project):.3f}")
    ax.set(xscale="log", xlabel="tokens D", ylabel="validation loss", title=fit.summary().split("  (")[0])
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7)
    pred = [fit.predict(p.params, p.tokens) for p in pts]
    obs = [p.loss for p in pts]
    lo, hi = min(obs + pred), max(obs + pred)
    ax2.plot([lo, hi], [lo, hi], color="gray", lw=1)
    ax2.scatter(pred, obs, s=20)
    ax2.set(xlabel="predicted loss", ylabel="observed loss", title=f"rmse {fit.rmse:.4f}; {len(pts)} runs")
    return save_figure(fig, path)
