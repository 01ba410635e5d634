"""`llmkit json-suite` and `llmkit json` (llmkit/cli/structured_commands.py) on SmolLM2-135M-Instruct:
files written, the JSON printed, and bad input refused before the model loads."""

from __future__ import annotations

import argparse
import json

import pytest

from llmkit.apps.structured import JSONSchemaError
from llmkit.cli.structured_commands import add_json_args, add_structured_args, run_json, run_structured
from tests.peers import peer

jsonschema = peer("jsonschema")

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "country"],
          "properties": {"city": {"type": "string", "maxLength": 30}, "country": {"type": "string", "maxLength": 30}}}


def parse(add, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add(p)
    return p.parse_args(argv)


def test_json_suite_writes_results_and_report(smollm2, tmp_path, capsys):
    peer("xgrammar")
    out = tmp_path / "suite"
    args = parse(add_structured_args, ["--model", str(smollm2.path), "--case", "mars_moons", "--case", "primary_colors",
                                       "--retries", "1", "--out", str(out)])
    assert run_structured(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert [c["id"] for c in results["cases"]] == ["primary_colors", "mars_moons"]  # the suite's order
    for case in results["cases"]:
        assert case["valid"] and case["attempts"] == 1 and json.loads(case["text"]) == case["value"]
    assert results["summary"]["valid_rate"] == 1.0 and results["summary"]["retries"] == 1
    report = (out / "report.md").read_text()
    assert "| primary_colors | yes | 1 |" in report and "| mars_moons | yes | 1 |" in report
    printed = capsys.readouterr().out
    assert "first attempt 2/2 (100.0%)" in printed and str(out / "report.md") in printed
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_json_prints_validated_json(smollm2, tmp_path, capsys):
    peer("xgrammar")
    schema = tmp_path / "place.json"
    schema.write_text(json.dumps(SCHEMA))
    args = parse(add_json_args, ["--model", str(smollm2.path), "--schema", str(schema), "--max-tokens", "48",
                                 "In which city and country is the Eiffel Tower?"])
    assert run_json(args) == 0
    printed = capsys.readouterr().out
    jsonschema.validate(json.loads(printed), SCHEMA)
    assert printed.startswith("{\n")  # indented unless --compact


@pytest.mark.parametrize("schema, error, match", [
    ('{"type": "objekt"}', JSONSchemaError, "not valid JSON Schema"),
    ("{not json", ValueError, "--schema is not JSON"),
    ("missing.json", FileNotFoundError, "no such file"),
])
def test_json_refuses_a_bad_schema_before_loading_the_model(tmp_path, monkeypatch, schema, error, match):
    monkeypatch.chdir(tmp_path)
    args = parse(add_json_args, ["--model", str(tmp_path / "no-model"), "--schema", schema, "q"])
    with pytest.raises(error, match=match):
        run_json(args)


def test_json_suite_refuses_an_unknown_case_before_loading_the_model(tmp_path):
    args = parse(add_structured_args, ["--model", str(tmp_path / "no-model"), "--case", "no_such_case"])
    with pytest.raises(ValueError, match="no case 'no_such_case'"):
        run_structured(args)


def test_retries_must_not_be_negative(capsys):
    with pytest.raises(SystemExit):
        parse(add_structured_args, ["--model", "m", "--retries", "-1"])
    assert "-1 must be 0 or more" in capsys.readouterr().err
