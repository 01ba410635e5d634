"""The built-in tools: dates (answers counted by hand, the clock stopped), the python tool through
the sandbox (output, errors and time-outs come back as observations), the docs tool's text, and the
registry (names, groups, "did you mean")."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from llmkit.apps import toolbox as bt
from llmkit.apps.toolbox import BUILTIN_TOOLS, builtin_tools, days_between, now, python_tool
from llmkit.apps.tools import ToolError
from tests.peers import peer

jsonschema = peer("jsonschema")


def tool(name: str):
    (found,) = builtin_tools(name)
    return found


# ----------------------------------------------------------------------------- dates
@pytest.mark.parametrize("start, end, days", [
    ("2024-02-03", "2024-11-23", 294),  # Feb 3 -> Mar 3: 29 (leap year), -> Nov 3: 245, -> Nov 23: 20
    ("2023-02-03", "2023-11-23", 293),  # the same dates in a common year
    ("2024-11-23", "2024-02-03", -294),
    ("2024-05-05", "2024-05-05", 0),
    ("1999-12-31", "2000-01-01", 1),
    ("2000-02-28", "2000-03-01", 2),  # 2000 is a leap year (divisible by 400)
    ("1900-02-28", "1900-03-01", 1),  # 1900 is not (divisible by 100)
])
def test_days_between_counts_calendar_days(start, end, days):
    assert days_between(start, end) == days
    assert tool("days_between").run({"start": start, "end": end}) == str(days)


def test_days_between_refuses_what_is_not_a_date():
    out = tool("days_between").run({"start": "2024-02-30", "end": "2024-11-23"})
    assert out.startswith("error:") and "start='2024-02-30' is not a date" in out and "YYYY-MM-DD" in out
    assert "end='23/11/2024'" in tool("days_between").run({"start": "2024-02-03", "end": "23/11/2024"})
    assert tool("days_between").run({"start": "2024-02-03"}).startswith("error: days_between: argument")


@pytest.fixture
def stopped_clock(monkeypatch):
    def stop(*args: int) -> None:
        monkeypatch.setattr(bt, "_utc_now", lambda: datetime(*args, tzinfo=timezone.utc))

    return stop


def test_now_gives_iso_8601_with_the_weekday_in_the_zone(stopped_clock):
    stopped_clock(2024, 11, 23, 13, 5, 9, 123456)  # a Saturday (2024-01-01 was a Monday; +327 days)
    assert now() == "Saturday, 2024-11-23T13:05:09+00:00 (UTC)"
    assert now("Europe/Paris") == "Saturday, 2024-11-23T14:05:09+01:00 (Europe/Paris)"
    assert now("europe/paris") == now("Europe/Paris")  # the one zone of that name, whatever its case
    assert now("America/Los_Angeles") == "Saturday, 2024-11-23T05:05:09-08:00 (America/Los_Angeles)"
    assert now("Pacific/Kiritimati") == "Sunday, 2024-11-24T03:05:09+14:00 (Pacific/Kiritimati)"  # past midnight
    stopped_clock(2024, 7, 1, 12, 0, 0)  # a Monday, in summer time
    assert tool("now").run({"timezone": "Europe/Paris"}) == "Monday, 2024-07-01T14:00:00+02:00 (Europe/Paris)"
    assert tool("now").run({}) == "Monday, 2024-07-01T12:00:00+00:00 (UTC)"


def test_an_unknown_zone_is_named_in_the_error():
    out = tool("now").run({"timezone": "Mars/Olympus_Mons"})
    assert out.startswith("error:") and "unknown time zone 'Mars/Olympus_Mons'" in out and "IANA" in out
    assert "did you mean 'Europe/Paris'" in tool("now").run({"timezone": "Europe/Pariss"})
    assert "unknown time zone '../etc/passwd'" in tool("now").run({"timezone": "../etc/passwd"})


# ----------------------------------------------------------------------------- python
def test_python_returns_what_the_program_prints():
    python = tool("python")
    assert python.run({"code": "print(sum(range(10)))\nprint('done')"}) == "45\ndone"
    assert python.run({"code": "x = 1"}).startswith("(the program printed nothing")
    assert "NameError" in python.run({"code": "print(x)"})  # nothing carries over between calls
    assert python.run({"code": 42}).startswith("error: python: argument code")


def test_python_errors_come_back_with_the_output_before_them():
    out = tool("python").run({"code": "print('before')\n1 / 0"})
    assert out.startswith("before\nerror: the program failed (exit status 1):")
    assert out.rstrip().endswith("ZeroDivisionError: division by zero")
    assert tool("python").run({"code": "import sys\nsys.exit(3)"}) == "error: the program failed (exit status 3)"


def test_python_is_stopped_at_its_time_limit():
    quick = python_tool(timeout=1)
    start = time.perf_counter()
    out = quick.run({"code": "print('started', flush=True)\nwhile True:\n    pass"})
    assert time.perf_counter() - start < 8
    assert out == "started\nerror: the program was stopped after 1 second (the time limit)"
    assert "at most 1 second." in quick.description


# ----------------------------------------------------------------------------- calculator and docs
def test_calculator():
    assert tool("calculator").run({"expression": "2 * (3 + 4) ** 2"}) == "98"
    assert tool("calculator").run({"expression": "__import__('os')"}).startswith("error: calculator raised")


def test_stdlib_docs_formats_hits_for_the_model(monkeypatch, tmp_path):
    peer("bm25s")
    from llmkit.apps import docs_search

    long_text = "shutil.copytree(src, dst)\n\nRecursively copy a directory tree. " + "More words. " * 200
    docs = [("function:shutil.copytree", long_text, {"title": "shutil.copytree", "kind": "function"}),
            ("module:csv", "CSV parsing and writing.", {"title": "csv", "kind": "module"})]
    monkeypatch.setattr(docs_search, "stdlib_documents", lambda: docs)
    docs_tool = bt.stdlib_docs_tool(tmp_path)
    out = docs_tool.run({"query": "copy a directory tree", "k": 3})
    assert out.startswith("1. shutil.copytree (function)\nshutil.copytree(src, dst)\n\nRecursively copy")
    assert out.endswith(" ...") and len(out) < bt.MAX_HIT_TEXT + 100 and "csv" not in out
    assert docs_tool.run({"query": "xylophone"}) == "no documentation matches 'xylophone': try other words"
    assert docs_tool.run({"query": "csv", "k": 0}).startswith("error: stdlib_docs: argument k:")
    assert docs_tool.run({"query": ""}).startswith("error: stdlib_docs raised DocsSearchError: the query is empty")


# ----------------------------------------------------------------------------- registry
def test_registry_gives_tools_by_name_in_order_once():
    assert [t.name for t in builtin_tools("calculator, python")] == ["calculator", "python"]
    assert [t.name for t in builtin_tools(["datetime"])] == ["now", "days_between"]
    assert [t.name for t in builtin_tools(["python", "datetime", "now", "python"])] == ["python", "now", "days_between"]
    assert [t.name for t in builtin_tools("stdlib-docs")] == [t.name for t in builtin_tools("stdlib_docs")] \
        == ["stdlib_docs"]
    assert builtin_tools([]) == [] and builtin_tools("") == []
    assert set(BUILTIN_TOOLS) == {"calculator", "python", "datetime", "stdlib-docs"}


def test_every_builtin_tool_describes_itself_to_the_model():
    for key in BUILTIN_TOOLS:
        for t in builtin_tools(key):
            spec = t.spec()["function"]
            jsonschema.Draft202012Validator.check_schema(spec["parameters"])
            assert len(spec["description"]) > 40, t.name
            assert all(p.get("description") for p in spec["parameters"]["properties"].values()), t.name


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ToolError, match=r"unknown tool 'pyhton': did you mean 'python'\? the built-in tools are "
                                        r"calculator, datetime, days_between, now, python, stdlib-docs, stdlib_docs"):
        builtin_tools("calculator,pyhton")
    with pytest.raises(ToolError, match=r"unknown tool 'weather': the built-in tools are calculator"):
        builtin_tools(["weather"])
