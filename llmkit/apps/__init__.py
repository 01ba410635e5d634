"""The application room: what is built on top of any `LLM` (local or remote) — tools a model can
call, prompting strategies, agents (ReAct, PAL), chains, conversation memory and the context
assembler, retrieval-augmented generation (`llmkit.apps.rag`), and next production guards. It may import every room below it (`infer`'s
`LLM` protocol, `eval`'s harness and sandbox)."""

from .agent_strategies import PALStrategy, ReActStrategy
from .agent_traces import TraceError, agent_traces, check_pal, write_traces
from .agents import AgentResult, ReActAgent
from .batching import Reply, complete_chats
from .callbacks import Callbacks, Event, JsonlTrace, Recorder, read_trace
from .chains import Chain, ChainResult, ParseError
from .chains import Step as ChainStep
from .context import Assembled, Chunk, ContextOverflow, assemble, count_tokens
from .memory import BufferMemory, Memory, SummaryMemory, WindowMemory
from .pal import PALResult, extract_program, pal, pal_batch, pal_messages
from .prompt_eval import prompt_eval, write_prompt_eval
from .prompting import (STRATEGIES, Answer, Shot, Strategy, chain_of_thought, few_shot, least_to_most,
                        self_consistency, zero_shot)
from .prompts import Prompt, PromptError
from .react_format import native_transcript, parse_react, react_transcript, render_step
from .toolbox import BUILTIN_TOOLS, builtin_tools
from .calculator import CalculatorError, calculate
from .docs_search import DocsSearchError, Hit, KeywordIndex, stdlib_docs_index
from .json_suite import JSONCase, JSONSuiteReport, load_json_suite, run_json_suite, write_json_suite
from .structured import (JSONAttempt, JSONResult, JSONSchemaError, StructuredOutputError, generate_json,
                         generate_json_with_info)
from .tools import Tool, ToolArgumentError, ToolError
from . import rag  # noqa: E402  (its names live in the sub-package: llmkit.apps.rag.Retriever, ...)

__all__ = ["AgentResult", "Answer", "Assembled", "BufferMemory", "Callbacks", "Chain", "ChainResult", "ChainStep",
           "Chunk", "ContextOverflow", "Event", "JsonlTrace", "Memory", "PALResult", "ParseError", "Prompt",
           "PromptError", "ReActAgent", "Recorder", "STRATEGIES", "Shot", "Strategy", "SummaryMemory", "WindowMemory",
           "assemble", "chain_of_thought", "count_tokens", "extract_program", "few_shot", "least_to_most",
           "native_transcript", "pal", "pal_batch", "pal_messages", "parse_react", "prompt_eval", "react_transcript",
           "read_trace", "render_step", "self_consistency", "write_prompt_eval", "zero_shot", "TraceError", "agent_traces",
           "check_pal", "write_traces",
           "PALStrategy", "ReActStrategy", "Reply", "complete_chats",
           "BUILTIN_TOOLS", "CalculatorError", "DocsSearchError", "Hit", "JSONAttempt", "JSONCase", "JSONResult",
           "JSONSchemaError", "JSONSuiteReport", "KeywordIndex", "StructuredOutputError", "Tool", "ToolArgumentError",
           "ToolError", "builtin_tools", "calculate", "generate_json", "generate_json_with_info", "load_json_suite",
           "run_json_suite", "stdlib_docs_index", "write_json_suite", "rag"]
