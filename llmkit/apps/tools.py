"""Tools a model can call, described as OpenAI describes functions.

    def add(a: int, b: int = 1) -> int:
        '''Add two numbers.

        Args:
            a: the first number
            b: the second number
        '''
        return a + b

    tool = Tool.from_function(add)
    tool.spec()                     # {"type": "function", "function": {"name": "add", "parameters": {...}}}
    tool.run('{"a": 2, "b": 3}')    # "5"; arguments that fail the schema, or a tool that raises, give
                                    # an error message for the model to read, never an exception

The JSON Schema comes from the signature (int, float, str, bool, list[...], dict[str, ...],
Literal[...] as an enum, Optional[...], defaults) and the docstring (its first paragraph is the
description; Google-style ``Args:`` or reST ``:param x:`` lines describe the parameters).
Arguments are validated with `jsonschema` (the `apps` extra) before the function runs.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

MAX_OBSERVATION = 20_000  # characters of a tool's result handed back to the model


class ToolError(ValueError):
    """A tool cannot be built (a signature without types, a schema that is not JSON Schema)."""


class ToolArgumentError(ToolError):
    """The arguments a model gave do not parse or do not satisfy the tool's schema."""


@dataclass
class Tool:
    """A function a model may call: its name, a description, the JSON Schema of its arguments
    (an object) and the Python callable that runs it with them as keyword arguments."""

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.name or ""):
            raise ToolError(f"tool name {self.name!r} must be 1-64 letters, digits, '_' or '-' (OpenAI's rule)")
        if self.parameters.get("type") != "object":
            raise ToolError(f"tool {self.name!r}: parameters must be a JSON Schema of type 'object', got "
                            f"{self.parameters.get('type')!r}")
        self._validator()  # refuses a schema that is not JSON Schema

    @classmethod
    def from_function(cls, fn: Callable[..., Any], name: str | None = None,
                      description: str | None = None) -> "Tool":
        """A tool from a typed Python function (see the module docstring)."""
        doc = inspect.getdoc(fn) or ""
        summary, described = _parse_docstring(doc)
        hints = typing.get_type_hints(fn)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for pname, param in inspect.signature(fn).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise ToolError(f"{fn.__name__}: *{pname} cannot be described as a JSON argument; name each parameter")
            if pname not in hints:
                raise ToolError(f"{fn.__name__}: parameter {pname!r} has no type annotation; a model needs its type "
                                f"(e.g. {pname}: str)")
            schema = json_type(hints[pname], f"{fn.__name__}.{pname}")
            if pname in described:
                schema["description"] = described[pname]
            if param.default is inspect.Parameter.empty:
                required.append(pname)
            elif param.default is not None:
                schema["default"] = param.default
            properties[pname] = schema
        parameters: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
        if required:
            parameters["required"] = required
        return cls(name or fn.__name__, description if description is not None else summary, parameters, fn)

    def spec(self) -> dict[str, Any]:
        """The tool as OpenAI's `tools` list entry (what chat templates and servers take)."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def validate(self, arguments: str | dict[str, Any]) -> dict[str, Any]:
        """The arguments as a dict, parsed from JSON text if need be and checked against the schema;
        `ToolArgumentError` names what is wrong."""
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as e:
                raise ToolArgumentError(f"{self.name}: the arguments are not JSON ({e.msg} at character {e.pos})") \
                    from None
        if not isinstance(arguments, dict):
            raise ToolArgumentError(f"{self.name}: the arguments must be a JSON object, got {type(arguments).__name__}")
        errors = sorted(self._validator().iter_errors(arguments), key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.path) or "(the arguments)"
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise ToolArgumentError(f"{self.name}: argument {where}: {first.message}{more}")
        return arguments

    def _validator(self) -> Any:
        """The schema's validator, checked once per distinct schema (an agent calls its tools many
        times); kept outside the Tool, so a Tool stays plain data (it pickles and copies)."""
        try:
            return _cached_validator(json.dumps(self.parameters, sort_keys=True))
        except (TypeError, ToolError):  # not JSON (a set as a default, ...), or refused: say it with the tool's name
            return _validator(self.parameters, self.name)

    def __call__(self, **arguments: Any) -> Any:
        if self.fn is None:
            raise ToolError(f"tool {self.name!r} has no function to run (it only describes one)")
        return self.fn(**self.validate(arguments))

    def run(self, arguments: str | dict[str, Any]) -> str:
        """What the model reads back: the result as text (JSON for anything but a string), or, when the
        arguments are invalid or the function raises, the error as text — the model may try again."""
        try:
            arguments = self.validate(arguments)
            if self.fn is None:
                raise ToolError(f"tool {self.name!r} has no function to run (it only describes one)")
            result = self.fn(**arguments)
        except ToolArgumentError as e:
            return f"error: {e}"
        except Exception as e:  # the tool's own failure is an observation, not the caller's crash
            return f"error: {self.name} raised {type(e).__name__}: {e}"
        text = result if isinstance(result, str) else json.dumps(result, default=str)
        if len(text) > MAX_OBSERVATION:
            text = text[:MAX_OBSERVATION] + f"\n[output cut at {MAX_OBSERVATION} of {len(text)} characters]"
        return text


# ----------------------------------------------------------------------------- schemas
_SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean"}


def failed(observation: str) -> bool:
    """Whether a tool's observation reports a failure: a line of it starts with "error: " (bad
    arguments, a raising function, or a program that printed and then failed)."""
    return any(line.startswith("error: ") for line in observation.splitlines())


def json_type(hint: Any, where: str = "") -> dict[str, Any]:
    """The JSON Schema of a Python type annotation."""
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        kinds = {type(a) for a in args}
        schema: dict[str, Any] = {"enum": list(args)}
        if len(kinds) == 1 and kinds.pop() in _SCALARS:
            schema["type"] = _SCALARS[type(args[0])]
        return schema
    if origin in (typing.Union, types.UnionType):
        options = [json_type(a, where) for a in args if a is not type(None)]
        if type(None) in args:
            options.append({"type": "null"})
        return options[0] if len(options) == 1 else {"anyOf": options}
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple, set):
        schema = {"type": "array"}
        if args and not (origin is tuple and len(args) > 1 and args[1] is not Ellipsis):
            schema["items"] = json_type(args[0], where)
        elif args:
            schema.update(prefixItems=[json_type(a, where) for a in args], minItems=len(args), maxItems=len(args))
        return schema
    if origin is dict or hint is dict:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = json_type(args[1], where)
        return schema
    if hint is Any:
        return {}
    raise ToolError(f"{where}: the type {hint!r} has no JSON Schema here: use int, float, str, bool, list[...], "
                    "dict[str, ...], Literal[...] or an Optional of them")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(the first paragraph, {parameter: its description}) of a Google- or reST-style docstring."""
    summary = doc.split("\n\n", 1)[0].strip().replace("\n", " ")
    described: dict[str, str] = {}
    for m in re.finditer(r"^\s*:param\s+(?:[^:]*\s)?(\w+):\s*(.+)$", doc, re.M):
        described[m.group(1)] = m.group(2).strip()
    section = re.search(r"^\s*(?:Args|Arguments|Parameters):\s*\n((?:[ \t]+.*\n?|\s*\n)+)", doc, re.M)
    if section:
        for m in re.finditer(r"^[ \t]+(\w+)(?:\s*\([^)]*\))?:\s*(.+)$", section.group(1), re.M):
            described.setdefault(m.group(1), m.group(2).strip())
    if summary.startswith((":param", "Args:")):
        summary = ""
    return summary, described


@functools.lru_cache(maxsize=256)
def _cached_validator(schema_json: str):
    """The validator of a schema given as sorted JSON (raises `ToolError` naming no tool: `Tool`
    checks its schema in __post_init__ first, which names it)."""
    return _validator(json.loads(schema_json), "(cached)")


def _validator(schema: dict[str, Any], name: str):
    try:
        import jsonschema
    except ImportError as e:
        raise ToolError('validating tool arguments needs jsonschema: pip install "llmkit[apps]"') from e
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ToolError(f"tool {name!r}: its parameters are not a valid JSON Schema: {e.message}") from None
    return cls(schema)
