"""Structured output: an answer that parses as JSON and validates against a JSON Schema (or a
pydantic model), from any `LLM`, local or remote.

    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    generate_json(llm, "Extract the person's name and age from: 'Maria, 34, lives in Lisbon'", schema)
    # {'name': 'Maria', 'age': 34}
    generate_json(llm, prompt, Person)                       # a pydantic model: a validated Person
    result = generate_json_with_info(llm, prompt, schema)    # .value, .attempts (text, error, tokens, time)

How: the schema is checked against its meta-schema first (a schema that is not JSON Schema is a
`JSONSchemaError` naming the problem), then given to the model twice: as a format line after the
user's message (`describe_schema`), and as ``response_format={"type": "json_schema", ...}``. A local
model and `llmkit serve` enforce the latter with a grammar (`llmkit.infer.constrained`), so their
answers parse and validate unless `max_tokens` cuts them off. An endpoint that ignores
response_format answers free text, so the JSON is taken from it here (the whole answer, else a
```json fenced block, else the first JSON value in the text) and validated with `jsonschema`; an
answer that does not parse or validate (a cut-off one included) is handed back to the model with
the exact error, asking for a corrected one, at most `retries` times. When every attempt failed,
`StructuredOutputError` holds them all.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ..infer.constrained import unenforceable
from ..infer.generate import Timings
from .json_text import describe_schema, json_candidates, parse_error, resolve_ref

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]

# What the model reads: the schema as a format line. Small models echo a JSON Schema back when shown
# one: SmolLM2-135M without a grammar answered 0 of 13 suite cases with valid JSON given the schema
# (in the system or the user message), 7 of 13 given this line.
INSTRUCTION = "Answer with JSON only, in this format: {shape}"
REPAIR = "Your answer is not valid: {error}.\nReply with only the corrected JSON, in this format: {shape}"


class JSONSchemaError(ValueError):
    """The schema given is not a JSON Schema (or not a pydantic model)."""


class StructuredOutputError(ValueError):
    """No attempt gave JSON that parses and validates. `attempts` holds every attempt (its text and
    what was wrong with it); `last_text` and `error` are the last one's."""

    def __init__(self, message: str, attempts: list["JSONAttempt"]):
        super().__init__(message)
        self.attempts = attempts
        self.last_text = attempts[-1].text if attempts else ""
        self.error = attempts[-1].error if attempts else None


@dataclass
class JSONAttempt:
    """One request to the model: its answer, what was wrong with it (None: valid), the seconds it
    took, and its tokens where the `LLM` reports them (None otherwise)."""

    text: str
    error: str | None
    seconds: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def valid(self) -> bool:
        return self.error is None


@dataclass
class JSONResult:
    """What `generate_json_with_info` found: the validated `value` and every attempt it took."""

    value: Any
    attempts: list[JSONAttempt] = field(default_factory=list)

    @property
    def first_try(self) -> bool:
        """Valid at the first attempt, without a repair."""
        return len(self.attempts) == 1

    @property
    def retries_used(self) -> int:
        return max(0, len(self.attempts) - 1)


@dataclass
class Schema:
    """A checked JSON Schema, the validator made from it, and the pydantic model it came from (if any)."""

    schema: dict[str, Any]
    validator: Any
    model: type | None = None

    @property
    def name(self) -> str:
        """A response_format name (OpenAI's rule: 1-64 letters, digits, '_' or '-')."""
        title = re.sub(r"[^A-Za-z0-9_-]+", "_", str(self.schema.get("title") or "")).strip("_")
        return title[:64] or "response"

    def errors(self, value: Any) -> str | None:
        """What is wrong with `value` (every JSON Schema error, at most three named), or None."""
        found = sorted(self.validator.iter_errors(value), key=lambda e: (len(e.path), list(map(str, e.path))))
        if found:
            named = "; ".join(f"at {json_path(e.absolute_path)}: {e.message}" for e in found[:3])
            return named + (f" (and {len(found) - 3} more)" if len(found) > 3 else "")
        return None

    def convert(self, value: Any) -> Any:
        """`value` as the caller asked for it: a pydantic model instance, or the JSON value itself.
        Raises ValueError (pydantic's ValidationError is one) when the model refuses it."""
        return value if self.model is None else self.model.model_validate(value)


def json_path(parts: Any) -> str:
    """``$.items[0].name`` for a jsonschema error path."""
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def check_schema(schema: dict[str, Any] | type) -> Schema:
    """`schema` (a JSON Schema dict, or a pydantic `BaseModel` subclass) checked against its
    meta-schema (the draft its ``$schema`` names, else 2020-12); `JSONSchemaError` names the
    problem and where it is. Formats (date, email, ...) are checked when validating."""
    try:
        import jsonschema
    except ImportError as e:  # pragma: no cover - the apps extra brings it
        raise ImportError('structured output validates with jsonschema: pip install "llmkit[apps]"') from e
    model = None
    if isinstance(schema, type):
        if not hasattr(schema, "model_json_schema"):
            raise JSONSchemaError(f"schema={schema.__name__} is a class but not a pydantic model: give a JSON "
                                  "Schema dict or a pydantic BaseModel subclass")
        try:
            model, schema = schema, schema.model_json_schema()
        except Exception as e:  # pydantic's errors for fields that have no JSON Schema
            raise JSONSchemaError(f"schema={schema.__name__}: pydantic cannot give its JSON Schema: {e}") from None
    if not isinstance(schema, dict):
        raise JSONSchemaError(f"schema must be a JSON Schema object (a dict) or a pydantic model, got "
                              f"{type(schema).__name__}")
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(map(str, e.absolute_path)) or "(the top level)"
        raise JSONSchemaError(f"the schema is not valid JSON Schema ({cls.__name__.removesuffix('Validator')}): "
                              f"at {where}: {e.message}") from None
    _check_refs(schema, schema, [])
    return Schema(schema, cls(schema, format_checker=cls.FORMAT_CHECKER), model)


def _check_refs(node: Any, root: dict[str, Any], where: list[str]) -> None:
    """Every ``$ref`` points inside the schema (``#/$defs/...``): nothing is fetched from elsewhere."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            _check_refs(item, root, where + [str(i)])
    elif isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and (not ref.startswith("#") or resolve_ref(ref, root) is None):
            raise JSONSchemaError(f"at {'/'.join(where + ['$ref']) or '$ref'}: {ref!r} does not point inside the "
                                  "schema; put what it names under $defs and refer to it as '#/$defs/NAME'")
        for key, value in node.items():
            if key not in ("const", "enum", "default", "examples"):  # values, not schemas
                _check_refs(value, root, where + [key])


# ------------------------------------------------------------------ reading an answer
def read_answer(text: str, schema: Schema) -> tuple[Any, str | None]:
    """(value, None) for the first JSON value in `text` that validates against `schema` (and its
    pydantic model), else (None, what is wrong: why the main JSON does not parse, or else the
    validation errors of the first value found)."""
    first_error = None
    for value in json_candidates(text):
        error = schema.errors(value)
        if error is None:
            try:
                return schema.convert(value), None
            except ValueError as e:  # pydantic's own checks (validators) beyond the JSON Schema
                error = pydantic_errors(e)
        first_error = first_error or error
    return None, parse_error(text) or first_error or "it holds no JSON value"


def pydantic_errors(e: ValueError) -> str:
    errors = getattr(e, "errors", None)
    if not callable(errors):
        return str(e)
    found = errors()
    named = "; ".join(f"at {json_path(err.get('loc', ()))}: {err.get('msg')}" for err in found[:3])
    return named + (f" (and {len(found) - 3} more)" if len(found) > 3 else "")


# ------------------------------------------------------------------ asking
def schema_messages(prompt: str | Messages, schema: Schema, system: str | None) -> Messages:
    """The conversation: `system` (if given) before the conversation's own messages, and the
    format line (`describe_schema`) after the last user message."""
    if isinstance(prompt, str):
        messages: Messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "role" in m for m in prompt):
        messages = [dict(m) for m in prompt]
    else:
        raise TypeError("prompt must be a str (the user's message) or a non-empty list of {'role', 'content'} "
                        "messages")
    if system:
        if messages[0]["role"] == "system":
            messages[0]["content"] = f"{system}\n\n{messages[0].get('content') or ''}".rstrip()
        else:
            messages.insert(0, {"role": "system", "content": system})
    instruction = INSTRUCTION.format(shape=describe_schema(schema.schema))
    if messages[-1]["role"] == "user":
        messages[-1]["content"] = f"{messages[-1].get('content') or ''}\n\n{instruction}"
    else:
        messages.append({"role": "user", "content": instruction})
    return messages


def _ask(llm: Any, messages: Messages, options: dict[str, Any]) -> JSONAttempt:
    """One request; streamed with `Timings` where the `LLM` reports them (LocalLLM, RemoteLLM)."""
    timings = Timings() if "timings" in inspect.signature(llm.chat).parameters else None
    start = time.perf_counter()
    if timings is not None:
        text = "".join(llm.chat(messages, stream=True, timings=timings, **options))
    else:
        text = llm.chat(messages, **options)
    if not isinstance(text, str):
        raise TypeError(f"{type(llm).__name__}.chat answered {type(text).__name__}, not text")
    seconds = time.perf_counter() - start
    if timings is None or not timings.generated_tokens:
        return JSONAttempt(text, None, seconds)
    return JSONAttempt(text, None, seconds, timings.prompt_tokens or None, timings.generated_tokens)


def generate_json_with_info(llm: Any, prompt: str | Messages, schema: dict[str, Any] | type, *,
                            max_tokens: int = 512, retries: int = 2, temperature: float = 0.0,
                            system: str | None = None, constrain: bool = True, **gen: Any) -> JSONResult:
    """`generate_json`, returning a `JSONResult`: the value and every attempt (text, error, tokens,
    seconds), for measuring how often a model gets it right the first time."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries={retries!r} is invalid: use a non-negative integer")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens!r} is invalid: use a positive integer")
    for name, use in (("max_new_tokens", "max_tokens"), ("response_format", "schema (and constrain)")):
        if name in gen:
            raise TypeError(f"generate_json takes {use}, not {name}")
    checked = check_schema(schema)
    options = {"max_new_tokens": max_tokens, "temperature": temperature, **gen}
    unenforced = unenforceable(checked.schema)
    if constrain and unenforced:  # validation still guarantees the result; only the grammar is left out
        log.info("the schema is asked for without a grammar: %s", unenforced)
    if constrain and not unenforced:
        options["response_format"] = {"type": "json_schema",
                                      "json_schema": {"name": checked.name, "schema": checked.schema}}
    messages = schema_messages(prompt, checked, system)
    shape = describe_schema(checked.schema)
    attempts: list[JSONAttempt] = []
    conversation = messages
    for _ in range(retries + 1):
        attempt = _ask(llm, conversation, options)
        value, attempt.error = read_answer(attempt.text, checked)
        cut = attempt.completion_tokens is not None and attempt.completion_tokens >= max_tokens
        if cut and (attempt.error is not None or parse_error(attempt.text) is not None):
            # a cut answer whose main JSON is broken fails, even when a whole piece of it validates
            why = attempt.error or parse_error(attempt.text)
            attempt.error = f"the answer was cut off at max_tokens={max_tokens} ({why})"
        attempts.append(attempt)
        if attempt.error is None:
            return JSONResult(value, attempts)
        log.info("structured output attempt %d failed: %s", len(attempts), attempt.error)
        # the repair sees the last bad answer only, so the prompt does not grow with every attempt
        conversation = messages + [{"role": "assistant", "content": attempt.text},
                                   {"role": "user", "content": REPAIR.format(error=attempt.error, shape=shape)}]
    raise StructuredOutputError(
        f"no valid JSON after {len(attempts)} attempt(s) (retries={retries}): {attempts[-1].error}; "
        f"the last answer was {_clip(attempts[-1].text)!r}", attempts)


def generate_json(llm: Any, prompt: str | Messages, schema: dict[str, Any] | type, *, max_tokens: int = 512,
                  retries: int = 2, temperature: float = 0.0, system: str | None = None, constrain: bool = True,
                  **gen: Any) -> Any:
    """The model's answer to `prompt` (a user message, or a list of chat messages) as JSON that
    validates against `schema` (a JSON Schema dict), or as an instance of `schema` (a pydantic
    model). `constrain` sends ``response_format`` (a grammar where the `LLM` enforces it; not for a
    schema with keywords no grammar enforces, such as ``oneOf`` or ``not``, which is validated only);
    answers that fail are repaired by asking again, at most `retries` times, after which
    `StructuredOutputError` is raised. Other keyword arguments are generation options (seed,
    top_p, ...). A schema that is not JSON Schema raises `JSONSchemaError`."""
    return generate_json_with_info(llm, prompt, schema, max_tokens=max_tokens, retries=retries,
                                   temperature=temperature, system=system, constrain=constrain, **gen).value


def _clip(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[:n] + "…"
