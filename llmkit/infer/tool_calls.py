"""Tool calls: how a model is told about tools, how it writes a call, and how the call is read back.

One format, the one Qwen2.5 and the Hermes models were trained on (and the one their chat
templates render), serves every model:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Lisbon"}}
    </tool_call>

A chat template that speaks it natively (it mentions ``<tool_call>``) renders the tools, the
assistant's calls and the ``tool`` results itself. For any other template (SmolLM2's ChatML, or a
template with another native format) the tools are described in the system message, past calls are
written back in this format, and results come back in a user turn inside
``<tool_response>…</tool_response>`` — so a model without tool training still sees one consistent
convention.

The arguments are generated under a grammar (an xgrammar structural tag): free text until the model
writes ``<tool_call>``, then exactly the JSON of one of the offered functions, its arguments valid
against that function's schema. `tool_choice` shapes the grammar as OpenAI defines it: ``"none"``
forbids calls, ``"auto"`` lets the model choose, ``"required"`` allows only calls (one or more,
parallel unless ``parallel_tool_calls`` is false) and ``{"type": "function", "function": {"name":
…}}`` exactly one call of that function. `llmkit.infer.tool_parse.ToolCallParser` reads the text back, incrementally (the
server streams calls as deltas of their arguments) or whole.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

OPEN, CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"

TOOLS_SYSTEM_PROMPT = """# Tools

You may call one or more functions to help with the user's request. Their JSON schemas are within <tools></tools> tags:
<tools>
{tools}
</tools>

To call a function, answer with its name and arguments as a JSON object within <tool_call></tool_call> tags:
<tool_call>
{{"name": <function-name>, "arguments": <arguments-json-object>}}
</tool_call>
Each result comes back to you within <tool_response></tool_response> tags."""


class ToolCallError(ValueError):
    """Tools, a tool choice or a conversation with tool messages that cannot be used; the message
    names the field. `param` is that field as the OpenAI API names it."""

    def __init__(self, message: str, param: str = "tools"):
        super().__init__(message)
        self.param = param


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    """One call the model made: the function's name and its arguments as the JSON text it wrote."""

    name: str
    arguments: str
    id: str = field(default_factory=new_call_id)

    def parsed_arguments(self) -> Any:
        return json.loads(self.arguments)

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    @classmethod
    def from_openai(cls, call: Mapping[str, Any]) -> ToolCall:
        fn = call.get("function") or {}
        args = fn.get("arguments", "{}")
        return cls(name=str(fn.get("name", "")), arguments=args if isinstance(args, str) else json.dumps(args),
                   id=str(call.get("id") or new_call_id()))


@dataclass
class ChatReply:
    """The assistant's turn when tools were offered: its text (None when it only called tools), its
    tool calls, and why it ended ("tool_calls", "stop" or "length")."""

    content: str | None
    tool_calls: list[ToolCall]
    finish_reason: str

    def message(self) -> dict[str, Any]:
        """The turn as an OpenAI assistant message, to append to the conversation."""
        out: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        return out


# ----------------------------------------------------------------------------- tools and choice
def tool_specs(tools: Iterable[Any]) -> list[dict[str, Any]]:
    """OpenAI ``tools`` entries from `tools`: `llmkit.apps.Tool`s (anything with ``spec()``),
    OpenAI entries, or bare function dicts ({"name", "description", "parameters"}). Names must be
    unique and parameters an object schema."""
    specs, seen = [], set()
    for i, tool in enumerate(tools):
        spec = tool.spec() if hasattr(tool, "spec") else tool
        if not isinstance(spec, Mapping):
            raise ToolCallError(f"tools[{i}] must be a Tool or a dict like {{'type': 'function', 'function': "
                                f"{{'name': ..., 'parameters': {{...}}}}}}, got {type(tool).__name__}")
        fn = spec.get("function", spec) if spec.get("type", "function") == "function" else None
        if fn is None:
            raise ToolCallError(f"tools[{i}].type is {spec.get('type')!r}: only 'function' tools are supported",
                                f"tools[{i}].type")
        name = fn.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise ToolCallError(f"tools[{i}].function.name {name!r} must be 1-64 letters, digits, '_' or '-'",
                                f"tools[{i}].function.name")
        if name in seen:
            raise ToolCallError(f"tools[{i}]: two tools are named {name!r}", f"tools[{i}].function.name")
        seen.add(name)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, Mapping) or params.get("type", "object") != "object":
            raise ToolCallError(f"tools[{i}].function.parameters must be a JSON Schema of type 'object'",
                                f"tools[{i}].function.parameters")
        check_schema(params, f"tools[{i}].function.parameters")
        entry: dict[str, Any] = {"name": name}
        if fn.get("description"):
            entry["description"] = str(fn["description"])
        entry["parameters"] = dict(params)  # OpenAI's order, which templates render as given
        if "strict" in fn:  # what OpenAI's own API reads; kept for remote servers
            entry["strict"] = bool(fn["strict"])
        specs.append({"type": "function", "function": entry})
    return specs


def check_schema(schema: Mapping[str, Any], where: str) -> None:
    """Refuse a schema that is not JSON Schema (by its meta-schema), or that a grammar cannot
    enforce or build in good time (`constrained.unenforceable`), naming where it was given."""
    from .constrained import unenforceable

    try:
        import jsonschema
    except ImportError:  # xgrammar still refuses what it cannot compile
        jsonschema = None
    if jsonschema is not None:
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as e:
            path = "".join(f"[{p!r}]" for p in e.absolute_path)
            raise ToolCallError(f"{where}{path} is not valid JSON Schema: {e.message}", where) from None
    problem = unenforceable(schema)
    if problem:
        raise ToolCallError(f"{where}.{problem}", where)


def tool_mode(tool_choice: Any, specs: Sequence[Mapping[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """("none" | "auto" | "required" | "named", the functions the model may call) for an OpenAI
    `tool_choice`; "named" is exactly one call of the function it names."""
    if tool_choice is None:
        tool_choice = "auto" if specs else "none"
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise ToolCallError(f"tool_choice {tool_choice!r} must be 'none', 'auto', 'required' or "
                                "{'type': 'function', 'function': {'name': ...}}", "tool_choice")
        if tool_choice != "none" and not specs:
            raise ToolCallError(f"tool_choice {tool_choice!r} needs tools: none were given", "tool_choice")
        return tool_choice, [dict(s["function"]) for s in specs]
    name = (tool_choice.get("function") or {}).get("name") if isinstance(tool_choice, Mapping) else None
    if not isinstance(name, str):
        raise ToolCallError("tool_choice must be 'none', 'auto', 'required' or {'type': 'function', "
                            f"'function': {{'name': ...}}}}, got {tool_choice!r}", "tool_choice")
    chosen = [dict(s["function"]) for s in specs if s["function"]["name"] == name]
    if not chosen:
        raise ToolCallError(f"tool_choice names the function {name!r}, which is not among the tools "
                            f"{[s['function']['name'] for s in specs]}", "tool_choice")
    return "named", chosen


def arguments_grammar(function: Mapping[str, Any]) -> str:
    """The EBNF grammar of a function's arguments: compact JSON (one space after ',' and ':', none
    elsewhere, as `json.dumps` writes it) valid against its schema. Free whitespace would let a weak
    model fill its budget with it, as PEERS.md notes of xgrammar's default."""
    from .constrained import ConstraintError, _reason, _xgrammar

    try:
        return str(_xgrammar().Grammar.from_json_schema(json.dumps(function["parameters"]), any_whitespace=False))
    except ConstraintError:
        raise
    except Exception as e:  # xgrammar's RuntimeError / ValueError for a schema it cannot use
        raise ToolCallError(f"the parameters of {function['name']!r} cannot be turned into a grammar: {_reason(e)}",
                            "tools") from None


def tool_grammar(mode: str, functions: Sequence[Mapping[str, Any]], parallel: bool = True) -> dict[str, Any]:
    """The structural-tag `response_format` of `mode`: "none" is free text without the call marker,
    "auto" free text in which each marker starts a call that must parse and validate, "required"
    calls only (of `functions`), one or, with `parallel`, several, and "named" exactly one call."""
    tags = [{"type": "tag", "begin": f'{OPEN}\n{{"name": {json.dumps(f["name"])}, "arguments": ',
             "content": {"type": "grammar", "grammar": arguments_grammar(f)}, "end": f"}}\n{CLOSE}"}
            for f in functions]
    if mode == "none":
        fmt: dict[str, Any] = {"type": "any_text", "excludes": [OPEN]}
    elif mode == "auto":
        fmt = {"type": "triggered_tags", "triggers": [OPEN], "tags": tags, "stop_after_first": not parallel}
    else:  # only calls, separated by a newline, then the end
        fmt = {"type": "tags_with_separator", "tags": tags, "separator": "\n", "at_least_one": True,
               "stop_after_first": mode == "named" or not parallel}
    return {"type": "structural_tag", "format": fmt}


# ----------------------------------------------------------------------------- prompts
def speaks_natively(template: str | None) -> bool:
    """Whether a chat template renders tools in this module's format itself (Qwen2.5, Hermes)."""
    return bool(template) and OPEN in template and "tools" in template


def tool_messages(messages: Sequence[Mapping[str, Any]], specs: Sequence[Mapping[str, Any]],
                  native: bool) -> list[dict[str, Any]]:
    """`messages` ready for a chat template: checked (every ``tool`` message answers a call made
    before it, by ``tool_call_id``), and for a template without native tools rewritten: the tools
    described in the system message, past calls written out, results in user turns."""
    known: set[str] = set()
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        m = dict(m)
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            calls = []
            for j, c in enumerate(m["tool_calls"]):
                if not isinstance(c, Mapping) or not isinstance((c.get("function") or {}).get("name"), str):
                    raise ToolCallError(f"messages[{i}].tool_calls[{j}] must be {{'id': ..., 'type': 'function', "
                                        "'function': {'name': ..., 'arguments': '...'}}", "messages")
                call = ToolCall.from_openai(c)
                known.add(call.id)
                calls.append(call)
            m["tool_calls"] = [_rendered_call(c) for c in calls]
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if call_id not in known:
                raise ToolCallError(f"messages[{i}] is a tool result for tool_call_id {call_id!r}, which no earlier "
                                    f"assistant message called (known ids: {sorted(known)})",
                                    f"messages[{i}].tool_call_id")
            m["content"] = _text(m.get("content"))
        out.append(m)
    return out if native else _described(out, specs)


def _rendered_call(call: ToolCall) -> dict[str, Any]:
    """A past call as templates render it: arguments as an object (Qwen's template writes them with
    tojson, so a JSON string would be quoted twice)."""
    try:
        args: Any = json.loads(call.arguments)
    except json.JSONDecodeError:
        args = call.arguments
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": args}}


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) if isinstance(p, Mapping) else str(p) for p in content)
    return "" if content is None else str(content)


def call_text(name: str, arguments: Any) -> str:
    """A call written in this module's format (what the grammar makes the model write)."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return f'{OPEN}\n{{"name": {json.dumps(name)}, "arguments": {args}}}\n{CLOSE}'


def _described(messages: list[dict[str, Any]], specs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a template that knows nothing of tools (see the module docstring)."""
    tools = "\n".join(json.dumps(s, ensure_ascii=False) for s in specs)
    out: list[dict[str, Any]] = []
    if specs:
        system = TOOLS_SYSTEM_PROMPT.format(tools=tools)
        if messages and messages[0].get("role") in ("system", "developer"):
            system = f"{_text(messages[0].get('content'))}\n\n{system}"
            messages = messages[1:]
        out.append({"role": "system", "content": system})
    for m in messages:
        if m.get("role") == "assistant" and m.get("tool_calls"):
            calls = "\n".join(call_text(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"])
            text = _text(m.get("content"))
            out.append({"role": "assistant", "content": f"{text}\n{calls}" if text else calls})
        elif m.get("role") == "tool":
            block = f"{RESPONSE_OPEN}\n{m['content']}\n{RESPONSE_CLOSE}"
            if out and out[-1].get("role") == "user" and out[-1].pop("_results", False):
                out[-1] = {"role": "user", "content": f"{out[-1]['content']}\n{block}", "_results": True}
            else:
                out.append({"role": "user", "content": block, "_results": True})
        else:
            out.append({k: v for k, v in m.items() if k not in ("tool_calls", "tool_call_id")})
    for m in out:
        m.pop("_results", None)
    return out


def has_tool_turns(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a conversation holds tool calls or tool results (then only the tool format renders it)."""
    return any(m.get("role") == "tool" or m.get("tool_calls") for m in messages if isinstance(m, Mapping))


def tool_prompt(tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Iterable[Any] | None,
                tool_choice: Any = None, parallel_tool_calls: bool = True) -> tuple[list[int], dict[str, Any] | None]:
    """The prompt ids of a conversation with tools (or with earlier calls and their results), and
    the `response_format` that constrains the answer: its structural tag (without tools, or with
    "none", text that never starts a call)."""
    specs = tool_specs(tools or [])
    mode, functions = tool_mode(tool_choice, specs)
    template = tokenizer._pick_template(None, specs or None) if tokenizer.chat_templates else None
    native = speaks_natively(template)
    chat = tool_messages(messages, specs, native)
    ids = tokenizer.apply_chat_template(copy.deepcopy(chat), add_generation_prompt=True, tokenize=True,
                                        tools=specs if native and specs else None)
    return ids, tool_grammar(mode, functions, parallel_tool_calls)
