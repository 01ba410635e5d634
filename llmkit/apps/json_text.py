"""Text around JSON for structured output (`llmkit.apps.structured`): finding the JSON value in a
model's free-text answer, saying why there is none, and describing a JSON Schema as the one-line
format a model reads.

    next(json_candidates('Sure! ```json\n{"a": 1}\n```'))        # {'a': 1}
    describe_schema({"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}})
    # '{"age": <integer >= 0> (optional)}'
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator
from urllib.parse import unquote

MAX_STARTS = 64  # positions of '{' / '[' tried when looking for JSON inside free text
FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json reads NaN and Infinity; JSON has neither


DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _loads(text: str) -> Any:
    try:
        return DECODER.decode(text)
    except ValueError as e:  # JSONDecodeError is one; NaN / Infinity the other
        raise json.JSONDecodeError(str(e), text, 0) from None if not isinstance(e, json.JSONDecodeError) else e


def json_candidates(text: str) -> Iterator[Any]:
    """Every top-level JSON value found in `text`, most likely first: the whole text, each ```json
    fenced block, then the values found scanning for '{' or '[' outside the ones already read — a
    value nested inside another is never offered on its own (the whole answer must validate)."""
    try:
        yield _loads(text.strip())
        return
    except json.JSONDecodeError:
        pass
    fenced = []
    for m in FENCE.finditer(text):
        fenced.append((m.start(), m.end()))
        try:
            yield _loads(m.group(1).strip())
        except json.JSONDecodeError:
            pass
    tried, end = 0, 0
    for m in re.finditer(r"[{\[]", text):
        i = m.start()
        if i < end or any(a <= i < b for a, b in fenced) or tried >= MAX_STARTS:
            continue
        tried += 1
        try:
            value, end = DECODER.raw_decode(text, i)
        except ValueError:
            continue
        yield value


def parse_error(text: str) -> str | None:
    """Why the answer's main JSON does not parse (the whole text, else its first fenced block, else
    the value at its first '{' or '['), or None when it does."""
    stripped = text.strip()
    if not stripped:
        return "the answer is empty: it holds no JSON value"
    blocks = FENCE.findall(text)
    start = re.search(r"[{\[]", text)
    if not blocks and not start:
        try:
            _loads(stripped)
            return None
        except json.JSONDecodeError:
            return "it is not JSON: the answer holds no JSON object or array"
    try:
        if blocks:
            _loads(blocks[0].strip())
        else:
            DECODER.raw_decode(text, start.start())
    except json.JSONDecodeError as e:
        return f"it is not JSON: {e.msg} (line {e.lineno}, column {e.colno})"
    except ValueError as e:  # NaN, Infinity
        return f"it is not JSON: {e}"
    return None


def describe_schema(schema: Any, root: dict[str, Any] | None = None, depth: int = 0) -> str:
    """The shape `schema` asks for, as one line a model reads more easily than JSON Schema:
    ``{"name": <string>, "age": <integer 0 to 150>, "tags": [<string>, ...] (1 to 3 items)}``.
    A hint only (small models tend to echo a JSON Schema back instead of answering); the answer is
    validated against the schema itself."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or not schema:
        return "<any JSON>"
    if depth > 8:  # a recursive $ref
        return "..."
    s, again = schema, lambda sub: describe_schema(sub, root, depth + 1)
    if "$ref" in s:
        return again(resolve_ref(s["$ref"], root) or {})
    if "const" in s:
        return json.dumps(s["const"], ensure_ascii=False)
    if "enum" in s:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in s["enum"])
    for key in ("anyOf", "oneOf"):
        if key in s:
            return " or ".join(again(x) for x in s[key])
    if "allOf" in s:
        merged = {k: v for k, v in s.items() if k != "allOf"}
        for part in s["allOf"]:
            part = resolve_ref(part["$ref"], root) if isinstance(part, dict) and "$ref" in part else part
            merged.update(part if isinstance(part, dict) else {})
        return again(merged)
    kind = s.get("type")
    if isinstance(kind, list):
        return " or ".join(describe_schema({**s, "type": k}, root, depth) for k in kind)
    if kind == "object" or "properties" in s:
        required = set(s.get("required") or ())
        fields = [f"{json.dumps(k, ensure_ascii=False)}: {again(v)}" + ("" if k in required else " (optional)")
                  for k, v in (s.get("properties") or {}).items()]
        return "{" + ", ".join(fields) + "}"
    if kind == "array" or "items" in s:
        low, high = s.get("minItems"), s.get("maxItems")
        count = (f" ({low} items)" if low == high and low is not None else
                 f" ({low} to {high} items)" if low is not None and high is not None else
                 f" (at least {low} items)" if low else f" (at most {high} items)" if high is not None else "")
        return f"[{again(s.get('items') or {})}, ...]{count}"
    if kind == "string":
        return (f"<string matching {s['pattern']}>" if "pattern" in s else
                f"<{s['format']}>" if "format" in s else "<string>")
    if kind in ("integer", "number"):
        return f"<{kind}{_range(s)}>"
    return {"boolean": "true | false", "null": "null"}.get(str(kind), "<any JSON>")


def resolve_ref(ref: str, root: dict[str, Any]) -> Any:
    """The schema a local ``$ref`` (``#/$defs/item``) points to; None when it points nowhere."""
    node: Any = root
    if not ref.startswith("#"):
        return None
    for part in [p for p in ref[1:].split("/") if p]:
        part = unquote(part).replace("~1", "/").replace("~0", "~")  # a URI fragment, then a JSON pointer
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def _range(s: dict[str, Any]) -> str:
    low, high = s.get("minimum", s.get("exclusiveMinimum")), s.get("maximum", s.get("exclusiveMaximum"))
    if low is not None and high is not None:
        return f" {low} to {high}"
    if low is not None:
        return f" >= {low}" if "minimum" in s else f" > {low}"
    if high is not None:
        return f" <= {high}" if "maximum" in s else f" < {high}"
    return ""
