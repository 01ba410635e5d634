"""Evaluation room: metrics, a code sandbox, the task harness, judges, reports, the lm-eval backend
(being built for issue 5)."""

from .sandbox import SandboxResult, run_code

__all__ = ["SandboxResult", "run_code"]
