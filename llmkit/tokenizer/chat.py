"""Chat templates: Jinja2 rendered the way transformers renders them.

Same environment as `transformers.utils.chat_template_utils` (sandboxed, `trim_blocks`,
`lstrip_blocks`, loop controls, a no-op `{% generation %}` tag, `raise_exception`,
`strftime_now`, and a `tojson` filter that does not HTML-escape), same variables (`messages`,
`tools`, `documents`, `add_generation_prompt`, the named special tokens, extra keyword
arguments), so a checkpoint's template gives the same string here as in transformers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any, Callable

import jinja2
from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

# ChatML, the default template of tokenizers trained by llmkit.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in
    transformers; for rendering it is transparent."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


class _Namespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore names, so templates cannot reach CPython internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - same signature trick as jinja2
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set namespace attribute {name!r}")


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson HTML-escapes <, >, & and ' - chat templates want plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def compile_template(template: str) -> jinja2.Template:
    """Compile (and cache) a chat template in a transformers-compatible sandbox."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    return env.from_string(template)


def _plain(value: Any) -> Any:
    """A copy made of plain JSON-like types only: templates come from the Hub and must not be
    handed rich objects whose methods the sandbox does not know about."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _plain(value.item())
    return f"<{type(value).__name__}>"


def validate_messages(messages: Any) -> None:
    """Raise a clear error unless `messages` is a non-empty list of {"role": str, "content": ...} dicts."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, (list, tuple)):
        raise TypeError(f"messages must be a list of dicts like {{'role': 'user', 'content': 'hi'}}, "
                        f"got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty: a chat needs at least one {'role': ..., 'content': ...} message")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"messages[{i}] must be a dict with 'role' and 'content', "
                            f"got {type(m).__name__}: {m!r:.80}")
        if "role" not in m:
            raise ValueError(f"messages[{i}] has no 'role' key (keys: {sorted(map(str, m))}); "
                             f"add one of 'system', 'user', 'assistant', 'tool'")
        if not isinstance(m["role"], str):
            raise TypeError(f"messages[{i}]['role'] must be a string, got {type(m['role']).__name__}")
        content = m.get("content")
        if "content" not in m and not m.get("tool_calls"):
            raise ValueError(f"messages[{i}] (role {m['role']!r}) has no 'content' key; "
                             f"give it 'content' (a string), or 'tool_calls' for an assistant tool call")
        if content is not None and not isinstance(content, (str, list)):
            raise TypeError(f"messages[{i}]['content'] must be a string or a list of content parts, "
                            f"got {type(content).__name__}")


def _prepare(messages: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Drop None values and alias reasoning fields, as transformers does before rendering."""
    chat = []
    for m in messages:
        m = _plain({k: v for k, v in m.items() if v is not None})
        reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        chat.append(m)
    return chat


def render_chat(template: str, messages: list[Mapping[str, Any]], *, add_generation_prompt: bool = False,
                tools: list[dict] | None = None, documents: list[dict] | None = None,
                continue_final_message: bool = False, special_tokens: Mapping[str, str] | None = None,
                **kwargs: Any) -> str:
    """Render `messages` with `template`; returns the same string as transformers'
    `apply_chat_template(..., tokenize=False)`."""
    validate_messages(messages)
    if tools is not None and not all(isinstance(t, Mapping) for t in tools):
        raise TypeError("tools must be a list of JSON-schema dicts ({'type': 'function', 'function': {...}})")
    if continue_final_message and add_generation_prompt:
        raise ValueError("continue_final_message and add_generation_prompt cannot both be set: the first "
                         "continues the last message, the second starts a new assistant turn")
    chat = _prepare(messages)
    final = None
    if continue_final_message:
        final = chat[-1].get("content")
        if not isinstance(final, str):
            raise ValueError("continue_final_message needs the last message's content to be a string")
        chat[-1]["content"] = final + _CONTINUE_TAG
    variables = {**(special_tokens or {}), **_plain(kwargs)}
    text = compile_template(template).render(messages=chat, tools=_plain(tools), documents=_plain(documents),
                                             add_generation_prompt=add_generation_prompt, **variables)
    if final is not None:
        tag = _CONTINUE_TAG.strip()
        if final.strip() not in text or tag not in text:
            raise ValueError("continue_final_message: the template dropped (part of) the final message, "
                             "so it cannot be continued")
        at = text.rindex(tag)
        text = text[:at] if text[at: at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()
    return text


def plain_source(messages: list[Mapping[str, Any]]) -> str:
    """What an encoder-decoder without a chat template reads for `messages`: their contents, one
    per line (so a single user turn is its text as is). Chat asks it this way and fine-tuning
    trains it this way."""
    return "\n".join(str(m.get("content") or "") for m in messages)


def source_ids(tokenizer, messages: list[Mapping[str, Any]]) -> list[int]:
    """The token ids an encoder-decoder reads for `messages`, in chat and fine-tuning alike: the
    chat template's rendering ready for the answer, else `plain_source`; encoded as any source is,
    with the tokenizer's special tokens (T5: ending with </s>)."""
    if tokenizer.chat_template is None:
        return tokenizer.encode(plain_source(messages))
    return tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def exchange_starts(messages: list[Mapping[str, Any]]) -> list[int]:
    """Where the oldest turns of a conversation (no leading system message) may be cut: its start,
    the start of each later exchange (a user message), and its last message alone. Cutting only
    there drops whole user/assistant exchanges (a tool call and its result go with their exchange)."""
    if not messages:
        return [0]
    last = len(messages) - 1
    return sorted({0, last, *(i for i, m in enumerate(messages) if m.get("role") == "user" and i < last)})


def first_fit(n: int, fits: Callable[[int], bool]) -> int | None:
    """The smallest `i` in ``range(n)`` with ``fits(i)``, for a `fits` that, once true, stays true
    (each candidate holds less than the one before); None when none fits. Tries 0 first (the
    common case: everything fits, one call), then bisects: about log2(n) calls, not n - a count
    may be an HTTP request to a server's tokenizer."""
    if n <= 0:
        return None
    if fits(0):
        return 0
    lo, hi = 1, n - 1  # the answer, if any, is in [lo, hi]; fits(hi) is not known yet
    if lo > hi or not fits(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def fit_history(messages: list[dict], budget: int, count: Callable[[list[dict]], int]) -> list[dict]:
    """Drop the oldest exchanges (never a leading system message, never the last message) until
    `count(messages)` (tokens) is at most `budget`; when even the last message alone is over, it is
    returned with the system message and the caller's model refuses it. Shared by local and
    remote models, which count differently, and by `llmkit.apps.context.assemble` (the same cut
    points, `exchange_starts`, and the same search, `first_fit`)."""
    head = list(messages[:1]) if messages and messages[0].get("role") == "system" else []
    rest = list(messages[len(head):])
    cuts = exchange_starts(rest)
    at = first_fit(len(cuts), lambda i: count(head + rest[cuts[i]:]) <= budget)
    return head + rest[cuts[-1 if at is None else at]:]


# What an unknown chat template may add around the messages: a BOS token, a default system
# preamble (Llama 3.1's dates: about 25 tokens) and the assistant's generation prompt.
ESTIMATE_FRAME_TOKENS = 32
# Per message: the template's start/end markers and separators around the role and content.
ESTIMATE_MESSAGE_TOKENS = 8


def estimate_chat_tokens(messages: list[Mapping[str, Any]]) -> int:
    """An upper bound on the tokens `messages` take with a chat template this process cannot see
    (a server without a tokenizer endpoint): one token per UTF-8 byte of each message's role,
    content and tool calls, plus `ESTIMATE_MESSAGE_TOKENS` per message and
    `ESTIMATE_FRAME_TOKENS` per conversation.

    Why bytes: a byte-level BPE token (GPT-2, Llama 3, Qwen, Mistral's byte fallback) covers at
    least one byte, so no text takes more tokens than it has bytes; anything tighter (bytes / 4 is
    typical of English with a large vocabulary) under-counts digits, code, or a small vocabulary
    (the test tokenizer needs 0.65 tokens a byte for English, 1.0 for digits). An over-count only
    drops context early; an under-count sends a prompt the server refuses."""
    total = ESTIMATE_FRAME_TOKENS
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):  # content parts
            content = "".join(str(p.get("text") or "") if isinstance(p, Mapping) else str(p) for p in content)
        text = str(m.get("role") or "") + str(content or "")
        if m.get("tool_calls"):
            text += json.dumps(_plain(m["tool_calls"]), ensure_ascii=False)
        total += len(text.encode("utf-8", "surrogatepass")) + ESTIMATE_MESSAGE_TOKENS
    return total
