"""The application room: what is built on top of any `LLM` (local or remote) — tools a model can
call, and next prompting strategies, agents, chains and memory, retrieval and production guards.
It may import every room below it (`infer`'s `LLM` protocol, `eval`'s sandbox)."""

from .calculator import CalculatorError, calculate
from .tools import Tool, ToolArgumentError, ToolError

__all__ = ["CalculatorError", "Tool", "ToolArgumentError", "ToolError", "calculate"]
