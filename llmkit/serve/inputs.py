"""Request bodies at the border: the size limit, JSON, text that is valid Unicode, the schema, and
the `prompt` / `input` fields as token ids — each refusal a 400 (or 413) that names the field."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError

from .errors import APIError, validation_error

MAX_BODY_BYTES = 4 * 1024 * 1024

# JSON may spell an unpaired UTF-16 surrogate ("\udcff"), and json.loads also passes the raw UTF-8
# bytes of one ("surrogatepass"): a str that no tokenizer, encoder or database can take. Only
# bodies that may hold one (either spelling) are walked.
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


async def parse_body(request: Request, schema: type[BaseModel], max_bytes: int) -> Any:
    """The request body as `schema`, or the `APIError` that says what is wrong with it."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise APIError(413, f"the request body has {declared} bytes; the limit is {max_bytes}")
    body = await request.body()
    if len(body) > max_bytes:
        raise APIError(413, f"the request body has {len(body)} bytes; the limit is {max_bytes}")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(data).__name__}")
    if _MAYBE_SURROGATE.search(body):
        _refuse_surrogates(data)
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors()) from None


def _surrogate_at(text: str) -> int | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def _refuse_surrogates(data: dict) -> None:
    """Raise a 400 naming the first field (``messages.0.content``) whose text holds an unpaired
    surrogate. Iterative: the body may nest as deep as json.loads allows."""
    todo: list[tuple[tuple, Any]] = [((), data)]
    while todo:
        path, value = todo.pop()
        if isinstance(value, str):
            at = _surrogate_at(value)
            if at is not None:
                where = ".".join(map(str, path))
                raise APIError(400, f"{where} holds an unpaired UTF-16 surrogate ({value[at]!r} at character {at}): "
                                    "send text as valid Unicode", param=where, code="invalid_value")
        elif isinstance(value, dict):
            for key in value:
                if _surrogate_at(key) is not None:
                    where = ".".join(map(str, path)) or None
                    raise APIError(400, f"a field name in {where or 'the request body'} holds an unpaired UTF-16 "
                                        "surrogate: send text as valid Unicode", param=where, code="invalid_value")
            todo += [((*path, k), v) for k, v in reversed(value.items())]
        elif isinstance(value, list):
            todo += [((*path, i), v) for i, v in reversed(list(enumerate(value)))]


def token_inputs(llm, raw: Any, param: str) -> list[list[int]]:
    """Token ids of a `prompt` / `input` field: a string, a list of strings, a list of token ids,
    or a list of token-id lists; each non-empty and inside the vocabulary."""
    if isinstance(raw, str):
        out = [llm.tokenize(raw)]
    elif raw and all(isinstance(x, str) for x in raw):
        out = [llm.tokenize(x) for x in raw]
    elif raw and all(isinstance(x, int) for x in raw):
        out = [list(raw)]
    elif raw and all(isinstance(x, list) for x in raw):
        out = [list(x) for x in raw]
    else:
        raise APIError(400, f"{param} must be a string, a list of strings, a list of token ids or a list of "
                            "token-id lists, and not empty", param=param)
    for ids in out:
        if not ids:
            raise APIError(400, f"an entry of {param} is empty: give at least one token", param=param)
        check_token_ids(llm, ids, param)
    return out


def check_token_ids(llm, ids: list, param: str) -> None:
    """Refuse ids that are not tokens of `llm`'s vocabulary."""
    vocab = llm.config.vocab_size
    bad = [t for t in ids if not isinstance(t, int) or t < 0 or t >= vocab]
    if bad:
        raise APIError(400, f"token id {bad[0]} is outside the vocabulary of {vocab}", param=param)
