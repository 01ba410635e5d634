"""Inference room: the `LLM` protocol, the one `Sampler`, generation and streaming."""

from .generate import Completion, Step, TextStream, Timings, TokenGeneration
from .llm import LLM, LocalLLM, LogLikelihood, load
from .sampling import GenerationConfig, GenerationConfigError, Sampler
from .tool_calls import ChatReply, ToolCall, ToolCallError

__all__ = ["ChatReply", "ToolCall", "ToolCallError", "Completion", "Timings", "GenerationConfig", "GenerationConfigError", "LLM", "LocalLLM", "LogLikelihood", "Sampler",
           "Step", "TextStream", "TokenGeneration", "load"]
