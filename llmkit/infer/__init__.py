"""Inference room: the `LLM` protocol, sampling, generation and streaming."""

from .generate import Completion, Step, TextStream, TokenGeneration
from .llm import LLM, LocalLLM, LogLikelihood, load
from .sampling import GenerationConfig, GenerationConfigError

__all__ = ["Completion", "GenerationConfig", "GenerationConfigError", "LLM", "LocalLLM", "LogLikelihood", "Step",
           "TextStream", "TokenGeneration", "load"]
