"""The tools llmkit ships, ready for an agent, by name:

    builtin_tools("calculator,python")   # [Tool calculator, Tool python]
    builtin_tools(["datetime", "stdlib-docs"])   # [Tool now, Tool days_between, Tool stdlib_docs]

- ``calculator``: arithmetic (`calculate`), never `eval`.
- ``python``: runs a program in the one sandbox (`llmkit.eval.sandbox.run_code`) and returns what it
  printed, or its error, or that it was stopped at the time limit.
- ``datetime``: ``now`` (the current date and time in an IANA time zone) and ``days_between`` (two
  ISO dates), which a calculator cannot do.
- ``stdlib-docs``: keyword search over the standard library's documentation (`docs_search`).

Each is a `Tool` made by `Tool.from_function`: its docstring is what the model reads. A name may also
be the name of one tool of a group (``now``), with ``-`` and ``_`` alike.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from datetime import date, datetime
from datetime import timezone as dt_timezone

from llmkit.apps.calculator import calculate
from llmkit.apps.tools import Tool, ToolError

PYTHON_TIMEOUT = 10.0  # seconds a program of the python tool may run
PYTHON_MEMORY_MB = 512
MAX_TRACEBACK = 3_000  # characters of a failed program's stderr handed back (its end: where the error is)
MAX_HIT_TEXT = 700  # characters of each documentation hit


# ----------------------------------------------------------------------------- calculator
def calculator(expression: str) -> int | float:
    """Evaluate an arithmetic expression exactly as written and return its value. Supports numbers,
    + - * / // % ** and parentheses, the constants pi, e, tau and the functions sqrt, exp, log, log2,
    log10, sin, cos, tan, asin, acos, atan, abs, round, floor, ceil, factorial, gcd, min, max.

    Args:
        expression: the arithmetic, e.g. "2 * (3 + 4) ** 2" or "sqrt(2) / 3"
    """
    return calculate(expression)


# ----------------------------------------------------------------------------- date and time
def _utc_now() -> datetime:
    return datetime.now(dt_timezone.utc)  # one place for tests to stop the clock


def _zone(name: str):
    """The tzinfo of an IANA zone name; the error names the zone and the nearest known ones."""
    import zoneinfo

    name = name.strip()
    if name.upper() in ("UTC", "Z", "GMT"):
        return dt_timezone.utc  # needs no time zone database
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        pass
    known = zoneinfo.available_timezones()
    same = [z for z in known if z.lower() == name.lower()]
    if len(same) == 1:  # "europe/paris"
        return zoneinfo.ZoneInfo(same[0])
    lowered = {z.lower(): z for z in known}
    close = [lowered[z] for z in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)]
    hint = f"did you mean {', '.join(repr(z) for z in close)}? " if close else ""
    raise ValueError(f"unknown time zone {name!r}: {hint}use an IANA name such as 'UTC', 'Europe/Paris' or "
                     "'America/New_York'")


def now(timezone: str = "UTC") -> str:
    """The current date and time in a time zone, as ISO 8601 with the weekday, e.g.
    "Saturday, 2024-11-23T14:05:09+01:00 (Europe/Paris)".

    Args:
        timezone: an IANA time zone name, e.g. "UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo"
    """
    zone = _zone(timezone)
    moment = _utc_now().astimezone(zone).replace(microsecond=0)
    return f"{moment:%A}, {moment.isoformat()} ({getattr(zone, 'key', 'UTC')})"


def _iso_date(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a date: write it as YYYY-MM-DD, e.g. 2024-02-03") from None


def days_between(start: str, end: str) -> int:
    """The number of days from the date `start` to the date `end` (negative when `end` is earlier):
    2024-02-03 to 2024-02-10 is 7. Leap years are counted.

    Args:
        start: the first date, YYYY-MM-DD
        end: the second date, YYYY-MM-DD
    """
    return (_iso_date(end, "end") - _iso_date(start, "start")).days


# ----------------------------------------------------------------------------- python
def python_tool(timeout: float = PYTHON_TIMEOUT, memory_mb: int = PYTHON_MEMORY_MB) -> Tool:
    """The ``python`` tool: a program runs in the sandbox (a fresh interpreter in an empty temporary
    folder, no network where the machine allows, `timeout` seconds, `memory_mb` of memory)."""

    def python(code: str) -> str:
        """Run a Python program and return what it prints.

        Args:
            code: a complete Python 3 program; print() the values you want to see
        """
        from llmkit.eval.sandbox import run_code

        result = run_code(code, timeout=timeout, memory_mb=memory_mb)
        printed = result.stdout.rstrip("\n")
        if result.status == "timeout":
            note = f"error: the program was stopped after {_seconds(timeout)} (the time limit)"
        elif result.status == "memory":
            note = f"error: the program ran out of memory (the limit is {memory_mb} MB)"
        elif result.returncode != 0:
            err = result.stderr.strip()
            err = err if len(err) <= MAX_TRACEBACK else "..." + err[-MAX_TRACEBACK:]  # the end says what failed
            note = f"error: the program failed (exit status {result.returncode})" + (f":\n{err}" if err else "")
        else:
            if result.stderr.strip():  # warnings
                printed += f"\n[stderr]\n{result.stderr.strip()[-MAX_TRACEBACK:]}"
            return printed or "(the program printed nothing: print() the values you want to see)"
        return f"{printed}\n{note}" if printed else note

    description = (f"Run a Python 3 program and return what it prints (stdout), or its error. Each call is a "
                   f"fresh interpreter: nothing carries over between calls, so print() what you need. The "
                   f"standard library is available; no network, no input(), at most {_seconds(timeout)}.")
    return Tool.from_function(python, description=description)


def _seconds(value: float) -> str:
    return f"{value:g} second{'' if value == 1 else 's'}"


# ----------------------------------------------------------------------------- standard-library docs
def stdlib_docs_tool(cache_dir: str | os.PathLike | None = None) -> Tool:
    """The ``stdlib_docs`` tool: search the standard library's documentation (the index is built on
    the first search and cached under `cache_dir`, by default ``$LLMKIT_HOME/indexes``)."""

    def stdlib_docs(query: str, k: int = 5) -> str:
        """Search the documentation of the Python standard library (modules, functions, classes,
        methods and language topics) by keywords; returns the best matches with their signatures and
        docstrings.

        Args:
            query: what you want to do or know, in words, e.g. "days between two dates" or "read a CSV file"
            k: how many results, 1 to 10
        """
        from llmkit.apps.docs_search import stdlib_docs_index

        hits = stdlib_docs_index(cache_dir).search(query, k)
        if not hits:
            return f"no documentation matches {query!r}: try other words"
        parts = []
        for rank, hit in enumerate(hits, 1):
            text = hit.text if len(hit.text) <= MAX_HIT_TEXT else hit.text[:MAX_HIT_TEXT].rstrip() + " ..."
            parts.append(f"{rank}. {hit.title} ({hit.metadata.get('kind', 'document')})\n{text}")
        return "\n\n".join(parts)

    tool = Tool.from_function(stdlib_docs)
    parameters = dict(tool.parameters, properties=dict(tool.parameters["properties"]))
    parameters["properties"]["k"] = dict(parameters["properties"]["k"], minimum=1, maximum=10)
    return Tool(tool.name, tool.description, parameters, tool.fn)


# ----------------------------------------------------------------------------- registry
BUILTIN_TOOLS: dict[str, Callable[[], list[Tool]]] = {
    "calculator": lambda: [Tool.from_function(calculator)],
    "python": lambda: [python_tool()],
    "datetime": lambda: [Tool.from_function(now), Tool.from_function(days_between)],
    "stdlib-docs": lambda: [stdlib_docs_tool()],
}


def builtin_tools(names: list[str] | str) -> list[Tool]:
    """The built-in tools named (a list, or one string of comma-separated names), in that order, each
    once. A name is a key of `BUILTIN_TOOLS` or the name of one of its tools; an unknown name is a
    `ToolError` that lists the known ones."""
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n and n.strip()]
    groups = {key: factory() for key, factory in BUILTIN_TOOLS.items()}
    by_tool = {t.name.replace("_", "-"): t for tools in groups.values() for t in tools}
    chosen: dict[str, Tool] = {}
    for name in wanted:
        key = name.lower().replace("_", "-")
        if key in groups:
            found = groups[key]
        elif key in by_tool:
            found = [by_tool[key]]
        else:
            known = sorted(set(groups) | {t.name for tools in groups.values() for t in tools})
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ToolError(f"unknown tool {name!r}: {hint}the built-in tools are {', '.join(known)}")
        for tool in found:
            chosen.setdefault(tool.name, tool)
    return list(chosen.values())
