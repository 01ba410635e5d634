"""`llmkit tools list|run|docs`: the built-in tools from the command line, in a private model cache
(LLMKIT_HOME=tmp) and, for `docs`, over a few stand-in documents (the real index is tested in
tests/apps/test_docs_search.py)."""

from __future__ import annotations

import json

import pytest

from llmkit.cli.main import main
from tests.peers import peer


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_each_tool_with_its_parameters_and_group(capsys):
    code, out, _ = run(capsys, "tools", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "calculator(expression: string)  [calculator]"
    for line in ('python(code: string)  [python]', 'now(timezone: string = "UTC")  [datetime]',
                 "days_between(start: string, end: string)  [datetime]",
                 "stdlib_docs(query: string, k: integer = 5)  [stdlib-docs]"):
        assert line in lines
        assert lines[lines.index(line) + 1].startswith("    ") and len(lines[lines.index(line) + 1]) > 40
    code, out, _ = run(capsys, "tools", "list", "--json")
    specs = json.loads(out)
    assert code == 0 and [s["function"]["name"] for s in specs] == ["calculator", "python", "now", "days_between",
                                                                    "stdlib_docs"]
    assert specs[3]["function"]["parameters"]["required"] == ["start", "end"]


def test_run_prints_the_observation(capsys):
    code, out, _ = run(capsys, "tools", "run", "days_between", '{"start": "2024-02-03", "end": "2024-11-23"}')
    assert (code, out) == (0, "294\n")
    code, out, _ = run(capsys, "tools", "run", "python", '{"code": "print(6 * 7)"}')
    assert (code, out) == (0, "42\n")
    code, out, _ = run(capsys, "tools", "run", "python", json.dumps({"code": 'print("partial")\nraise SystemExit(3)'}))
    assert code == 1 and out.startswith("partial\nerror: the program failed (exit status 3)"), out
    code, out, _ = run(capsys, "tools", "run", "calculator", '{"expression": "1 / 0"}')
    assert code == 1 and out.startswith("error: calculator raised CalculatorError:") and "division by zero" in out
    code, out, _ = run(capsys, "tools", "run", "now", "{timezone: UTC}")
    assert code == 1 and "the arguments are not JSON" in out


def test_run_refuses_unknown_and_group_names(capsys):
    code, out, err = run(capsys, "tools", "run", "pyhton", "{}")
    assert code == 2 and out == ""
    assert err.startswith("llmkit tools: error: unknown tool 'pyhton': did you mean 'python'? the built-in tools are")
    code, _, err = run(capsys, "tools", "run", "datetime")
    assert code == 2 and "'datetime' names 2 tools (now, days_between): run one of them" in err


@pytest.fixture
def stand_in_docs(monkeypatch, tmp_path):
    peer("bm25s")
    from llmkit.apps import docs_search

    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path))
    monkeypatch.setattr(docs_search, "_LOADED", {})
    docs = [("function:shutil.copytree", "shutil.copytree(src, dst)\n\nRecursively copy a directory tree.\n" +
             "\n".join(f"line {i}" for i in range(20)), {"title": "shutil.copytree", "kind": "function"}),
            ("module:csv", "CSV parsing and writing.", {"title": "csv", "kind": "module"}),
            ("topic:with", "The with statement.", {"title": "with", "kind": "topic"})]
    monkeypatch.setattr(docs_search, "stdlib_documents", lambda: docs)
    return tmp_path


def test_docs_searches_and_caches_under_llmkit_home(capsys, stand_in_docs):
    code, out, err = run(capsys, "tools", "docs", "copy a directory tree", "-k", "3")
    assert code == 0 and "building the standard-library documentation index" in err
    assert out.startswith("1. shutil.copytree (function, score ")
    assert "   Recursively copy a directory tree." in out and "line 2" in out and "line 3" not in out  # 6 lines
    assert "csv" not in out
    assert len(list((stand_in_docs / "indexes").glob("stdlib-docs-*/manifest.json"))) == 1
    code, out, err = run(capsys, "tools", "docs", "copy tree", "--full", "-v")
    assert code == 0 and err == "" and "line 19" in out  # the cache is loaded, no build
    code, out, err = run(capsys, "tools", "docs", "xylophone")
    assert (code, out) == (1, "") and "no documentation matches 'xylophone'" in err


def test_docs_refuses_a_bad_k(capsys, stand_in_docs):
    with pytest.raises(SystemExit) as stop:
        main(["tools", "docs", "csv", "-k", "0"])
    assert stop.value.code == 2 and "argument -k: 0 must be at least 1" in capsys.readouterr().err
