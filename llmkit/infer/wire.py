"""The OpenAI wire format as `RemoteLLM` writes and reads it: messages out, token usage in."""

from __future__ import annotations

from typing import Any, Mapping

from .generate import Timings


def usage_into(out: Any, timings: Timings | None) -> None:
    """The token counts of an answer's ``usage`` into `timings` (when given, and the server counted)."""
    usage = out.get("usage") if isinstance(out, dict) else None
    if timings is not None and isinstance(usage, dict):
        timings.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        timings.generated_tokens = int(usage.get("completion_tokens") or 0)


def api_message(m: Mapping[str, Any]) -> dict[str, Any]:
    """A message as the API takes it: role and content, and a tool call's or a tool result's fields."""
    out = {"role": m["role"], "content": m.get("content")}
    for key in ("tool_calls", "tool_call_id", "name"):
        if m.get(key) is not None:
            out[key] = m[key]
    return out
