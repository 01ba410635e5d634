"""tests/peers.py: a missing peer skips a developer's test and fails CI's, at module level too."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.peers import BY_HAND, PEERS, missing, peer

ROOT = Path(__file__).resolve().parents[1]
ABSENT = "llmkit_no_such_peer_module"


def test_a_present_peer_is_returned(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert peer("json") is json
    assert peer("os.path") is os.path


def test_an_absent_peer_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"cannot import {ABSENT}.*CI=true"):
        peer(ABSENT)
    with pytest.raises(pytest.fail.Exception, match="no chromium"):
        missing("no chromium")


@pytest.mark.parametrize("ci", [None, "false", "1"])
def test_an_absent_peer_skips_outside_ci(monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)  # only CI=true, what .ci/run exports, makes it fail
    with pytest.raises(pytest.skip.Exception, match=f"cannot import {ABSENT}"):
        peer(ABSENT)


def test_the_message_names_the_extra_that_installs_it(monkeypatch):
    monkeypatch.setenv("CI", "true")
    # None in sys.modules: import raises ImportError (the submodule too: an earlier test may have imported it)
    monkeypatch.setitem(sys.modules, "rouge_score", None)
    monkeypatch.setitem(sys.modules, "rouge_score.rouge_scorer", None)
    with pytest.raises(pytest.fail.Exception, match=re.escape('pip install -e ".[eval]"')):
        peer("rouge_score.rouge_scorer")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(pytest.fail.Exception, match="pip install llama-cpp-python"):
        peer("llama_cpp")


def _requirement_name(spec: str) -> str:
    return re.split(r"[\[<>=!~ ;]", spec, maxsplit=1)[0].lower().replace("_", "-")


def test_every_peer_is_in_the_extra_it_names():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {name: {_requirement_name(s) for s in specs} for name, specs in project["optional-dependencies"].items()}
    core = {_requirement_name(s) for s in project["dependencies"]}
    for module, (extra, requirement) in PEERS.items():
        names = core if extra is None else extras[extra]
        assert requirement.lower().replace("_", "-") in names, (module, extra, requirement)
    assert "all" in extras and not set(BY_HAND) & set(PEERS)


@pytest.mark.parametrize("ci, outcome", [("true", "1 error"), ("", "1 skipped")])
def test_at_module_level_it_fails_collection_under_ci(tmp_path, ci, outcome):
    """A test module that imports a missing peer at its top: under CI the run fails, never skips."""
    (tmp_path / "test_uses_a_missing_peer.py").write_text(
        f"from tests.peers import peer\n\nmod = peer({ABSENT!r})\n\n\ndef test_never_runs():\n    assert False\n")
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert outcome in r.stdout, r.stdout + r.stderr
    # 2: interrupted by the collection error; 5: nothing ran, the module was skipped
    assert r.returncode == (2 if ci == "true" else 5), r.stdout
    assert "install it with" in r.stdout  # either way the reader is told what to install


def test_no_test_imports_a_peer_around_the_helper():
    """One door: no test file calls pytest.importorskip or reads CI itself (that skipped under CI)."""
    offenders = [f"{path.relative_to(ROOT)}:{n}" for path in sorted((ROOT / "tests").rglob("*.py"))
                 if path.name not in ("peers.py", "test_peers.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if "importorskip(" in line or re.search(r"""environ(\.get\(|\[)["']CI["']""", line)]
    assert offenders == []
