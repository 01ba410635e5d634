"""Compute-optimal model sizes: Chinchilla (Hoffmann et al. 2022) and Kaplan et al. (2020).

Training compute is counted the usual way, C ≈ 6·N·D FLOPs (2 for the forward matmuls, 4 for the
backward, per parameter and token). Hoffmann et al. find that loss at fixed compute is lowest when
parameters and tokens grow together, D ≈ 20·N, so

    N_opt = sqrt(C / (6·20)),   D_opt = 20·N_opt.

Kaplan et al. put most extra compute into parameters (N_opt ∝ C^0.73); `kaplan_optimal` gives their
answer for comparison. `ScalingLaw` is the Chinchilla parametric loss L(N, D) = E + A/N^α + B/D^β
and its own compute-optimal allocation; `llmkit.scaling.fit` fits one to your runs.

For a mixture of experts, N in C ≈ 6·N·D is the parameters one token passes through (its active
count, as `ModelConfig.flops_per_token` counts them), not all of its experts: `choose_model_size`
sizes such a candidate by its active parameters. Memory (`llmkit.scaling.memory`) needs the total.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

CHINCHILLA_TOKENS_PER_PARAM = 20.0
PF_DAY = 1e15 * 86400  # FLOPs in one petaflop/s-day, Kaplan et al.'s unit of compute


class ScalingError(ValueError):
    """Inputs to a scaling calculation are invalid; the message names the argument and the fix."""


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ScalingError(f"{name}={value!r} must be a positive finite number")
    return value


@dataclass(frozen=True)
class Plan:
    """A training plan: `params` N, `tokens` D and `flops` C = 6·N·D."""

    params: float
    tokens: float
    flops: float

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params

    def seconds(self, throughput_flops: float) -> float:
        """Wall-clock seconds to spend `flops` at a sustained `throughput_flops` FLOP/s
        (a measured rate, or a peak rate times the MFU you expect)."""
        return self.flops / _positive("throughput_flops", throughput_flops)

    def gpu_hours(self, throughput_flops: float) -> float:
        """Device-hours at `throughput_flops` FLOP/s per device (e.g. 312e12 × 0.4 for an A100 in bf16)."""
        return self.seconds(throughput_flops) / 3600.0


def compute_optimal(flops: float | None = None, params: float | None = None, tokens: float | None = None,
                    tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM) -> Plan:
    """The Chinchilla compute-optimal plan from exactly one of a compute budget `flops`, a
    parameter count `params` or a token count `tokens`, with D = `tokens_per_param`·N and C = 6·N·D.

    >>> p = compute_optimal(flops=5.76e23)   # Chinchilla's (and Gopher's) budget
    >>> round(p.params / 1e9), round(p.tokens / 1e12, 1)
    (69, 1.4)
    """
    given = [name for name, v in (("flops", flops), ("params", params), ("tokens", tokens)) if v is not None]
    if len(given) != 1:
        raise ScalingError(
            f"give exactly one of flops=, params=, tokens= (got {', '.join(given) or 'none'}): "
            "the other two follow from D = tokens_per_param·N and C = 6·N·D"
        )
    k = _positive("tokens_per_param", tokens_per_param)
    if flops is not None:
        c = _positive("flops", flops)
        n = math.sqrt(c / (6.0 * k))
    elif params is not None:
        n = _positive("params", params)
    else:
        n = _positive("tokens", tokens) / k
    return Plan(params=n, tokens=k * n, flops=6.0 * n * k * n)


def flops_from_time(seconds: float, flops_per_second: float, mfu: float = 1.0, devices: int = 1) -> float:
    """Compute budget C of `seconds` on `devices` devices. Pass a *measured* training throughput
    (model FLOP/s) with ``mfu=1``, or a device's peak FLOP/s with the utilisation you expect
    (``mfu=0.4`` is typical for large dense models). GPU-hours: ``seconds=hours * 3600``."""
    if not 0 < mfu <= 1:
        raise ScalingError(f"mfu={mfu!r} must be in (0, 1]: it is the fraction of peak FLOP/s achieved")
    if devices < 1:
        raise ScalingError(f"devices={devices!r} must be at least 1")
    return _positive("seconds", seconds) * _positive("flops_per_second", flops_per_second) * mfu * devices


def kaplan_optimal(flops: float) -> Plan:
    """Kaplan et al. (2020), "Scaling Laws for Neural Language Models", §6.1 / Fig. 14 / Table 6:
    the compute-efficient model size N_opt = 1.3e9 · C_min^0.73 *non-embedding* parameters, with
    C_min in PF-days (1 PF-day = 8.64e19 FLOPs). Tokens are D = C / (6·N), so that the plan keeps
    C = 6·N·D (the paper's own Table 6 fit, D = 2e10 · C^0.27, comes from a different critical-batch
    accounting and differs by up to ~2× — the exponents 0.73 + 0.27 = 1 agree).

    Compared with Chinchilla it gives far bigger models trained on far fewer tokens; Pearce & Song
    (2024) trace most of the difference to Kaplan counting non-embedding parameters at small scale.
    """
    c = _positive("flops", flops)
    n = 1.3e9 * (c / PF_DAY) ** 0.73
    return Plan(params=n, tokens=c / (6.0 * n), flops=c)


@dataclass(frozen=True)
class ScalingLaw:
    """The parametric loss of Hoffmann et al. (2022, eq. 2): L(N, D) = E + A/N^α + B/D^β.

    E is the entropy of natural text (irreducible), A/N^α the shortfall of a finite model, B/D^β
    that of finite data. Minimising L under C = 6·N·D gives (their eq. 4)

        N_opt = G·(C/6)^a,  D_opt = (C/6)^b / G,  G = (α·A / (β·B))^(1/(α+β)),  a = β/(α+β),  b = α/(α+β).
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def predict(self, params: Any, tokens: Any) -> Any:
        """L(N, D); works on floats and on numpy arrays (broadcasting)."""
        return self.E + self.A / params ** self.alpha + self.B / tokens ** self.beta

    def optimal(self, flops: float) -> Plan:
        """The allocation of `flops` that minimises this law's loss."""
        c = _positive("flops", flops)
        s = self.alpha + self.beta
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / s)
        n = g * (c / 6.0) ** (self.beta / s)
        return Plan(params=n, tokens=c / (6.0 * n), flops=c)


# Hoffmann et al. (2022), §3.3 "Approach 3" / eq. 10: fitted on MassiveText with their tokenizer, so E
# (and the absolute losses) do not transfer to other data. Besiroglu et al. (2024) refit the same
# data and find E=1.82, A=482.0, B=2085.4, α=0.348, β=0.366, closer to the 20 tokens/param rule.
CHINCHILLA = ScalingLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def chinchilla_loss(params: Any, tokens: Any) -> Any:
    """Chinchilla's fitted loss (nats/token on MassiveText) of N parameters trained on D tokens."""
    return CHINCHILLA.predict(params, tokens)


@dataclass(frozen=True)
class ModelChoice:
    """What `choose_model_size` picked: the `candidate`, its `params` N (a mixture of experts: the
    active ones) and the `tokens` D it can train on in the budget (`flops`), beside the Chinchilla
    `optimal` plan for that budget."""

    candidate: Any
    params: int
    tokens: float
    flops: float
    optimal: Plan

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params


def _count(candidate: Any, embeddings: bool | None) -> int:
    """N of C = 6·N·D: a mixture of experts' active parameters (its FLOPs per token follow them)."""
    kw: dict[str, Any] = {} if embeddings is None else {"embeddings": embeddings}
    if getattr(candidate, "is_moe", False):
        kw["active"] = True
    return int(candidate.num_parameters(**kw))


def choose_model_size(budget_seconds: float, throughput: float | Callable[[Any], float],
                      candidates: Sequence[Any], *, tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM,
                      embeddings: bool | None = None) -> ModelChoice:
    """Pick the candidate (any object with ``num_parameters()``, e.g. a `ModelConfig`) that is
    compute-optimal for a time budget on this machine.

    `throughput` is either a measured training rate in model FLOP/s, counted as 6·N·tokens/s (then
    C = throughput × seconds, N_opt = sqrt(C / (6·tokens_per_param)) and each candidate trains on
    D = C / (6·N)), or a function ``candidate -> training tokens/s`` measured or predicted per
    candidate (then D = tokens/s × seconds and C = 6·N·D for that candidate). Either way the choice
    is the candidate whose N is nearest, in log space, to the Chinchilla optimum for its compute —
    equivalently, whose D/N is nearest `tokens_per_param`. `embeddings` is passed to
    ``num_parameters`` when set (``False`` gives Kaplan's non-embedding count). N of a mixture of
    experts (a candidate whose ``is_moe`` is true) is its active count, what sets its compute.
    """
    seconds = _positive("budget_seconds", budget_seconds)
    if not candidates:
        raise ScalingError("candidates is empty: give at least one model configuration to choose from")
    best: ModelChoice | None = None
    best_gap = math.inf
    for cand in candidates:
        n = _count(cand, embeddings)
        if n <= 0:
            raise ScalingError(f"candidate {cand!r} has {n} parameters")
        if callable(throughput):
            tokens = _positive("tokens per second", throughput(cand)) * seconds
            flops = 6.0 * n * tokens
        else:
            flops = _positive("throughput", throughput) * seconds
            tokens = flops / (6.0 * n)
        plan = compute_optimal(flops=flops, tokens_per_param=tokens_per_param)
        gap = abs(math.log(n / plan.params))
        log.debug("candidate N=%d: D=%.3g, optimum N=%.3g, |log gap|=%.3f", n, tokens, plan.params, gap)
        if gap < best_gap:
            best, best_gap = ModelChoice(cand, n, tokens, flops, plan), gap
    assert best is not None
    log.info("chose N=%d params for %.0f s: %.3g tokens (%.1f tokens/param; optimum N=%.3g)",
             best.params, seconds, best.tokens, best.tokens_per_param, best.optimal.params)
    return best
