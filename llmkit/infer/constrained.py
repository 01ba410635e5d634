"""Constrained decoding: outputs that always parse as JSON (and validate against a JSON schema),
by masking, at every step, the tokens that would break the grammar. The grammar machinery is
xgrammar's (``pip install xgrammar``); this module adapts it to llmkit's byte-level BPE tokenizers.

    llm.generate(prompt, response_format={"type": "json_object"})   # a LocalLLM, the engine or the server
    c = json_constraint(llm.tokenizer, llm.config.vocab_size, schema={"type": "object", ...}, stop_ids=eos)
    engine.submit(ids, gen, constraint=c)

Tokens that would put a raw control character or a stray byte of a multi-byte character into
the text are masked too, so what is emitted is valid UTF-8 JSON. Whitespace between JSON tokens
is not allowed (xgrammar's ``any_whitespace=False``): with it a weak model can fill its whole
budget with spaces and newlines and never close the object.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from typing import Any

import torch

_INFO_CACHE: dict[tuple[int, int], Any] = {}
_LOCK = threading.Lock()


class ConstraintError(ValueError):
    pass


# JSON Schema keywords xgrammar accepts but does not enforce (it treats oneOf as anyOf and drops the
# others), so an answer under the grammar could still fail validation: refused, as OpenAI's strict
# mode refuses what it cannot guarantee
UNENFORCED = {"not": "use enum or a pattern instead", "if": "list the cases with anyOf", "then": "list the cases with anyOf",
              "else": "list the cases with anyOf", "oneOf": "use anyOf", "dependentRequired": "list the cases with anyOf",
              "dependentSchemas": "list the cases with anyOf", "dependencies": "list the cases with anyOf"}
MAX_REPEAT, MAX_NESTED_REPEAT = 4096, 64  # bounds on a pattern's counted repetitions: compiling them unrolls them


def unenforceable(schema: Any, path: str = "") -> str | None:
    """Why a grammar built from `schema` could accept an invalid answer, or take too long to build
    (counted repetitions nested in a pattern grow exponentially): the first offending place and a
    fix, or None."""
    if isinstance(schema, list):
        return next((r for i, v in enumerate(schema) if (r := unenforceable(v, f"{path}[{i}]"))), None)
    if not isinstance(schema, dict):
        return None
    for key, value in schema.items():
        where = f"{path}.{key}" if path else key
        if key in UNENFORCED and isinstance(value, (dict, list)):
            return f"{where}: '{key}' cannot be enforced by the grammar ({UNENFORCED[key]})"
        if key == "allOf" and isinstance(value, list) and len(value) > 1:
            return f"{where}: 'allOf' over several schemas cannot be enforced by the grammar (merge them into one)"
        if key == "uniqueItems" and value is True:
            return f"{where}: 'uniqueItems' cannot be enforced by the grammar (use an enum of the allowed items)"
        patterns = [value] if key == "pattern" and isinstance(value, str) else \
            list(value) if key == "patternProperties" and isinstance(value, dict) else []
        for pattern in patterns:
            reason = _pattern_problem(pattern)
            if reason:
                return f"{where}: the pattern {pattern!r} {reason}"
        if key in ("properties", "patternProperties", "$defs", "definitions") and isinstance(value, dict):
            found = next((r for name, sub in value.items() if (r := unenforceable(sub, f"{where}.{name}"))), None)
        elif key in ("enum", "const", "default", "examples", "pattern", "required"):
            found = None  # values, not schemas
        else:
            found = unenforceable(value, where)
        if found:
            return found
    return None


def _pattern_problem(pattern: str) -> str | None:
    import re._parser as parser  # the standard library's own regex parser, for the pattern's structure

    try:
        tree = parser.parse(pattern)
    except re.error as e:
        return f"is not a valid regular expression ({e})"

    def worst(items, depth: int, product: int) -> str | None:
        for op, arg in items:
            name = str(op)
            if name in ("ASSERT", "ASSERT_NOT"):
                return "uses a lookaround, which the grammar cannot enforce"
            if name in ("GROUPREF", "GROUPREF_EXISTS"):
                return "uses a backreference, which the grammar cannot enforce"
            if name in ("MAX_REPEAT", "MIN_REPEAT"):
                low, high, sub = arg
                bounded = high != parser.MAXREPEAT
                size = product * (high if bounded else 4)
                if bounded and (size > MAX_REPEAT or depth >= 1 and size > MAX_NESTED_REPEAT):
                    return (f"nests counted repetitions ({size} expansions; at most {MAX_NESTED_REPEAT} nested, "
                            f"{MAX_REPEAT} alone): building its grammar would take too long")
                found = worst(sub, depth + 1, size)
            elif name == "SUBPATTERN":
                found = worst(arg[-1], depth, product)
            elif name == "BRANCH":
                found = next((r for b in arg[1] if (r := worst(b, depth, product))), None)
            else:
                found = None
            if found:
                return found
        return None

    return worst(tree, 0, 1)


def _xgrammar():
    try:
        import xgrammar
    except ImportError as e:
        raise ConstraintError("structured output needs xgrammar: pip install xgrammar") from e
    return xgrammar


def _compiler(tokenizer, vocab_size: int, stop_ids: list[int]):
    """One grammar compiler per (tokenizer, vocabulary size): it caches compiled grammars."""
    xgr = _xgrammar()
    key = (id(tokenizer), vocab_size)
    with _LOCK:
        if key not in _INFO_CACHE:
            vocab = [tokenizer.id_to_token(i) or "" for i in range(tokenizer.vocab_size)]
            info = xgr.TokenizerInfo(vocab, xgr.VocabType.BYTE_LEVEL, vocab_size=vocab_size,
                                     stop_token_ids=sorted(stop_ids))
            # xgrammar lets raw control characters and stray bytes of multi-byte characters into
            # JSON strings: strict parsers reject the first, and the second decode to U+FFFD, which
            # breaks maxLength. Tokens that decode to either are never allowed (JSON has escapes).
            banned = torch.zeros(vocab_size, dtype=torch.bool)
            special = set(tokenizer.all_special_ids)
            for i in range(tokenizer.vocab_size):
                text = tokenizer.decode([i])
                if i not in special and any(ord(ch) < 0x20 or ch == "\ufffd" for ch in text):
                    banned[i] = True
            _INFO_CACHE[key] = (xgr.GrammarCompiler(info), banned)
        return _INFO_CACHE[key]


class JSONConstraint:
    """The mask of one request; `mask` before sampling, `accept` after."""

    def __init__(self, compiled, vocab_size: int, stop_ids: list[int], banned: torch.Tensor | None = None):
        xgr = _xgrammar()
        self.vocab_size, self.banned = vocab_size, banned
        self.matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=sorted(stop_ids))
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self._apply = xgr.apply_token_bitmask_inplace

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (1, vocab) with every grammar-breaking token at -inf (in place on a float copy)."""
        self.matcher.fill_next_token_bitmask(self.bitmask)
        out = logits.float().clone() if logits.device.type == "cpu" else logits.float().cpu()
        self._apply(out, self.bitmask, vocab_size=self.vocab_size)
        if self.banned is not None:
            out[:, self.banned] = float("-inf")
        return out.to(logits.device)

    def accept(self, token: int) -> None:
        if not self.matcher.accept_token(token):
            raise ConstraintError(f"token {token} breaks the grammar")

    @property
    def finished(self) -> bool:
        return self.matcher.is_terminated()


def json_constraint(tokenizer, vocab_size: int, schema: dict | str | None = None,
                    stop_ids: set[int] | list[int] = ()) -> JSONConstraint:
    """A constraint for a JSON object (schema None) or for JSON matching `schema`. Raises
    `ConstraintError` naming the problem for a schema xgrammar cannot compile."""
    stop = sorted(set(stop_ids))
    if not stop:
        raise ConstraintError("a JSON constraint needs an end token to finish with: the tokenizer has none")
    problem = unenforceable(json.loads(schema) if isinstance(schema, str) else schema)
    if problem:
        raise ConstraintError(f"the JSON schema cannot be used: {problem}")
    compiler, banned = _compiler(tokenizer, vocab_size, stop)
    try:
        spec = schema if schema is not None else {"type": "object"}
        compiled = compiler.compile_json_schema(json.dumps(spec) if isinstance(spec, dict) else spec,
                                                any_whitespace=False)
    except Exception as e:  # xgrammar raises RuntimeError / ValueError for bad schemas
        raise ConstraintError(f"the JSON schema cannot be used: {_reason(e)}") from None
    return JSONConstraint(compiled, vocab_size, stop, banned)


def _reason(error: Exception) -> str:
    """xgrammar's message without its C++ source location."""
    return re.sub(r"\[[\d:]+\] \S+:\d+: ", "", str(error)).strip()


@functools.lru_cache(maxsize=8)
def _newline_tokens(tokenizer, vocab_size: int) -> torch.Tensor:
    """Tokens whose only control characters are newlines (and that hold no stray byte)."""
    keep = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(tokenizer.vocab_size):
        text = tokenizer.decode([i])
        if "\n" in text and all(ch == "\n" or (ord(ch) >= 0x20 and ch != "\ufffd") for ch in text):
            keep[i] = True
    return keep


def structural_constraint(tokenizer, vocab_size: int, fmt: dict, stop_ids: set[int] | list[int]) -> JSONConstraint:
    """A constraint for an xgrammar structural tag (`fmt` is its ``format``): free text and tagged
    JSON, as tool calls need (see `llmkit.infer.tool_calls`)."""
    stop = sorted(set(stop_ids))
    if not stop:
        raise ConstraintError("a grammar constraint needs an end token to finish with: the tokenizer has none")
    compiler, banned = _compiler(tokenizer, vocab_size, stop)
    try:
        compiled = compiler.compile_structural_tag({"type": "structural_tag", "format": fmt})
    except Exception as e:
        raise ConstraintError(f"the grammar cannot be built: {_reason(e)}") from None
    if fmt.get("type") in ("triggered_tags", "any_text"):
        return JSONConstraint(compiled, vocab_size, stop)  # free text may hold any character
    # tags only (tool calls): the JSON ban, but the markers' newlines stay allowed
    return JSONConstraint(compiled, vocab_size, stop, banned & ~_newline_tokens(tokenizer, vocab_size))


def response_constraint(response_format: dict[str, Any] | None, tokenizer, vocab_size: int,
                        stop_ids: set[int] | list[int]) -> JSONConstraint | None:
    """The constraint an OpenAI `response_format` (as `GenerationConfig` checks it) asks for: None
    for plain text, a JSON object for ``json_object``, JSON matching the schema for ``json_schema``."""
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if tokenizer is None:
        raise ConstraintError(f"response_format {kind!r} needs the tokenizer to build its grammar")
    if kind == "structural_tag":
        return structural_constraint(tokenizer, vocab_size, response_format["format"], stop_ids)
    schema = response_format["json_schema"]["schema"] if kind == "json_schema" else None
    return json_constraint(tokenizer, vocab_size, schema, stop_ids)
