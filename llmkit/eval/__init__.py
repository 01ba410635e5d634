"""Evaluation room (being built for issue 5): metrics, a code sandbox, the task harness."""

from .harness import TaskResult, extract_answer, fewshot_prefix, run_generation, run_multiple_choice, run_perplexity
from .sandbox import SandboxResult, run_code

__all__ = ["SandboxResult", "TaskResult", "extract_answer", "fewshot_prefix", "run_code", "run_generation",
           "run_multiple_choice", "run_perplexity"]
