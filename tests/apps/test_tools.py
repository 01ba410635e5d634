"""Tools: JSON Schema from a typed function and its docstring (checked by jsonschema's own
meta-schema and by what it accepts and refuses), arguments validated before the call, errors as
observations; the calculator evaluates arithmetic and refuses everything else."""

from __future__ import annotations

import json
import math
from typing import Literal, Optional

import pytest

from llmkit.apps import CalculatorError, Tool, ToolArgumentError, ToolError, calculate
from tests.peers import peer

jsonschema = peer("jsonschema")


def book(city: str, nights: int, budget: float = 100.0, kind: Literal["hotel", "hostel"] = "hotel",
         guests: Optional[list[str]] = None, extras: dict[str, int] | None = None) -> dict:
    """Book a room.

    Args:
        city: where to stay
        nights (int): how many nights
    """
    return {"city": city, "nights": nights, "budget": budget, "kind": kind, "guests": guests or []}


def test_schema_from_a_typed_function():
    tool = Tool.from_function(book)
    spec = tool.spec()
    assert spec["type"] == "function" and spec["function"]["name"] == "book"
    assert spec["function"]["description"] == "Book a room."
    params = spec["function"]["parameters"]
    jsonschema.Draft202012Validator.check_schema(params)
    assert params["required"] == ["city", "nights"]
    props = params["properties"]
    assert props["city"] == {"type": "string", "description": "where to stay"}
    assert props["nights"] == {"type": "integer", "description": "how many nights"}
    assert props["budget"] == {"type": "number", "default": 100.0}
    assert props["kind"]["enum"] == ["hotel", "hostel"]
    ok = jsonschema.Draft202012Validator(params)
    assert ok.is_valid({"city": "Oslo", "nights": 2, "guests": ["a"], "extras": {"breakfast": 1}})
    for bad in ({"city": "Oslo"}, {"city": "Oslo", "nights": "2"}, {"city": "Oslo", "nights": 2, "kind": "tent"},
                {"city": "Oslo", "nights": 2, "extras": {"x": "y"}}, {"city": "Oslo", "nights": 2, "pets": 1}):
        assert not ok.is_valid(bad), bad


def test_arguments_are_validated_and_errors_come_back_as_observations():
    tool = Tool.from_function(book)
    assert json.loads(tool.run('{"city": "Oslo", "nights": 2}'))["nights"] == 2
    assert tool(city="Rome", nights=1)["city"] == "Rome"
    with pytest.raises(ToolArgumentError, match=r"book: argument nights: '2' is not of type 'integer'"):
        tool.validate({"city": "Oslo", "nights": "2"})
    assert tool.run('{"city": "Oslo"}').startswith("error: book: argument (the arguments): 'nights' is a required")
    assert "not JSON" in tool.run("{city: Oslo}")
    calls = []

    def explode(x: int) -> int:
        """Fail."""
        calls.append(x)
        raise RuntimeError("disk full")

    boom = Tool.from_function(explode)
    assert boom.run({"x": 3}) == "error: explode raised RuntimeError: disk full" and calls == [3]
    assert boom.run({"x": "3"}).startswith("error:") and calls == [3]  # invalid arguments never reach the function


def test_long_results_are_cut_and_said_so():
    def spill(n: int) -> str:
        """Print a lot."""
        return "x" * n

    out = Tool.from_function(spill).run({"n": 100_000})
    assert len(out) < 20_100 and out.endswith("[output cut at 20000 of 100000 characters]")


def test_bad_tools_are_refused_by_name():
    def untyped(x):
        return x

    with pytest.raises(ToolError, match=r"parameter 'x' has no type annotation"):
        Tool.from_function(untyped)
    with pytest.raises(ToolError, match=r"not a valid JSON Schema"):
        Tool("t", "", {"type": "object", "properties": {"a": {"type": "integr"}}})
    with pytest.raises(ToolError, match=r"must be 1-64 letters"):
        Tool("has space", "", {"type": "object"})


@pytest.mark.parametrize("expression,value", [("2 * (3 + 4) ** 2", 98), ("7 // 2 + 7 % 2", 4), ("-2 ** 2", -4),
                                              ("sqrt(16) + log10(1000)", 7.0), ("max(1, 5, 3) / 2", 2.5),
                                              ("2 * pi", 2 * math.pi), ("factorial(10)", 3628800)])
def test_calculator_evaluates_arithmetic(expression, value):
    assert calculate(expression) == pytest.approx(value)


@pytest.mark.parametrize("expression,said", [
    ("__import__('os').system('id')", "not arithmetic"), ("open('/etc/passwd')", "not arithmetic"),
    ("(1).__class__", "not arithmetic"), ("x + 1", "unknown name 'x'"), ("9 ** 9 ** 9", "exponent"),
    ("(2 ** 5000) ** 5000", "digits"), ("factorial(100000)", "too large"), ("1 / 0", "division by zero"),
    ("(-8) ** 0.5", "no real value"), ("2 +", "cannot parse"), ("", "empty"), ("1" * 2000, "characters long"),
])
def test_calculator_refuses_what_is_not_safe_arithmetic(expression, said):
    with pytest.raises(CalculatorError, match=said):
        calculate(expression)


def test_a_tool_checks_its_schema_once_follows_edits_and_stays_plain_data(monkeypatch):
    import copy
    import dataclasses
    import pickle

    from llmkit.apps import tools as tools_module

    built = []
    real = tools_module._validator
    monkeypatch.setattr(tools_module, "_validator", lambda schema, name: built.append(name) or real(schema, name))
    tools_module._cached_validator.cache_clear()
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 7}}, "required": ["n"]}
    tool = Tool("count_up", "count", copy.deepcopy(schema), fn=lambda n: n)
    for n in (7, 8, 9):
        tool.validate({"n": n})
    assert len(built) == 1  # one schema, checked once for every call
    tool.parameters["properties"]["n"]["minimum"] = 100  # edited in place: the next call sees it
    with pytest.raises(ToolArgumentError, match="100"):
        tool.validate({"n": 9})
    tool.parameters = {"type": "object", "properties": {"n": {"type": "bogus"}}}
    with pytest.raises(ToolError, match="count_up.*not a valid JSON Schema"):
        tool.validate({"n": 1})
    plain = Tool("count_up", "count", schema)  # no function: plain data that pickles and copies
    assert pickle.loads(pickle.dumps(plain)) == plain
    assert set(dataclasses.asdict(plain)) == {"name", "description", "parameters", "fn"}
