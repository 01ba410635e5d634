"""The application room: what is built on top of any `LLM` (local or remote) — tools a model can
call, and next prompting strategies, agents, chains and memory, retrieval and production guards.
It may import every room below it (`infer`'s `LLM` protocol, `eval`'s sandbox)."""

from .toolbox import BUILTIN_TOOLS, builtin_tools
from .calculator import CalculatorError, calculate
from .docs_search import DocsSearchError, Hit, KeywordIndex, stdlib_docs_index
from .json_suite import JSONCase, JSONSuiteReport, load_json_suite, run_json_suite, write_json_suite
from .structured import (JSONAttempt, JSONResult, JSONSchemaError, StructuredOutputError, generate_json,
                         generate_json_with_info)
from .tools import Tool, ToolArgumentError, ToolError

__all__ = ["BUILTIN_TOOLS", "CalculatorError", "DocsSearchError", "Hit", "JSONAttempt", "JSONCase", "JSONResult",
           "JSONSchemaError", "JSONSuiteReport", "KeywordIndex", "StructuredOutputError", "Tool", "ToolArgumentError",
           "ToolError", "builtin_tools", "calculate", "generate_json", "generate_json_with_info", "load_json_suite",
           "run_json_suite", "stdlib_docs_index", "write_json_suite"]
