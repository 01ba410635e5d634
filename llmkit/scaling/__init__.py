"""Scaling room (the ground floor): compute-optimal sizes, memory estimates, fitting laws to runs.

Imports nothing from the other rooms; models are duck-typed (anything with ``num_parameters()``
and the `ModelConfig` shape fields). torch and matplotlib are imported only inside the functions
that need them (`fit_law`, `plot_fit`).
"""

from .fit import LawFit, RunPoint, fit_law, load_runs, plot_fit
from .laws import (CHINCHILLA, CHINCHILLA_TOKENS_PER_PARAM, PF_DAY, ModelChoice, Plan, ScalingError, ScalingLaw,
                   chinchilla_loss, choose_model_size, compute_optimal, flops_from_time, kaplan_optimal)
from .memory import MemoryEstimate, estimate_memory

__all__ = [
    "CHINCHILLA", "CHINCHILLA_TOKENS_PER_PARAM", "LawFit", "MemoryEstimate", "ModelChoice", "PF_DAY", "Plan",
    "RunPoint", "ScalingError", "ScalingLaw", "chinchilla_loss", "choose_model_size", "compute_optimal",
    "estimate_memory", "fit_law", "flops_from_time", "kaplan_optimal", "load_runs", "plot_fit",
]
