"""Evaluation: metrics (`metrics`), the task harness that scores multiple choice, generation and
perplexity (`harness`), eval runs with reports and paired comparisons (`runner`), classifiers scored
by predicted label and the refusals for encoders (`classify`), encoder and classifier scores beside
their baselines (`encoders`), trivial baselines (`baselines`), LLM-as-judge and `llmkit judge`
(`judge`), the code sandbox (`sandbox`), and the lm-eval backend (`lm_eval_backend`, imported only
when asked for: it needs lm-eval)."""

from .harness import TaskResult, extract_answer, fewshot_prefix, run_generation, run_multiple_choice, run_perplexity
from .sandbox import SandboxResult, run_code, sandbox_layers

__all__ = ["SandboxResult", "TaskResult", "extract_answer", "fewshot_prefix", "run_code", "run_generation", "sandbox_layers",
           "run_multiple_choice", "run_perplexity"]
