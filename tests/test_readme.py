"""The README is true for a newcomer: what its Install and Tests blocks install is enough for the
test command it gives (pytest comes with an extra named there), and `.ci/run` runs those two blocks
as written. A cheap reading of the files, no real install."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_COMMAND = "python -m pytest"


def block(heading: str, readme: str | None = None) -> list[str]:
    """The lines of the first ```bash block in the README section `## heading`."""
    readme = readme if readme is not None else (ROOT / "README.md").read_text()
    section = readme.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```bash\n(.*?)```", section, re.S)
    assert found, f"no bash block under '## {heading}'"
    return [line.strip() for line in found.group(1).splitlines() if line.strip()]


def _name(spec: str) -> str:
    return re.split(r"[\[<>=!~ ;]", spec, maxsplit=1)[0].lower().replace("_", "-")


def requirements_of(extras: set[str]) -> set[str]:
    """The distributions that `pip install -e ".[extras]"` installs directly, `llmkit[...]` expanded."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names, todo, seen = {_name(s) for s in project["dependencies"]}, list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for spec in project["optional-dependencies"][extra]:
            inner = re.fullmatch(r"llmkit\[(.*)\]", spec.strip())
            if inner:
                todo += [e.strip() for e in inner.group(1).split(",")]
            else:
                names.add(_name(spec))
    return names


def installed_before_testing(lines: list[str]) -> set[str]:
    """Distributions installed from this checkout by the commands that run before the test command."""
    extras: set[str] = set()
    for command in (c.strip() for line in lines for c in line.split("&&")):
        if command.startswith(TEST_COMMAND):
            return requirements_of(extras)
        words = shlex.split(command)
        if words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]:
            for word in words:
                local = re.fullmatch(r"\.(\[(.*)\])?", word)
                if local:
                    extras |= {e.strip() for e in (local.group(2) or "").split(",") if e.strip()}
    raise AssertionError(f"the blocks never run {TEST_COMMAND!r}")


def test_the_install_and_test_blocks_bring_pytest():
    assert "pytest" in installed_before_testing(block("Install") + block("Tests"))


def test_the_check_catches_a_readme_without_pytest():
    """The shape the README had: install `.[all]`, then a bare `python -m pytest`."""
    old = ('\n## Install\n\n```bash\npip install torch==2.13.0 && pip install -e ".[all]"\n```\n\n'
           '## Tests\n\n```bash\npython -m pytest\n```\n')
    assert "pytest" not in installed_before_testing(block("Install", old) + block("Tests", old))
    assert "pytest" in requirements_of({"dev"}) and "fastapi" in requirements_of({"all"})


def test_ci_runs_the_readme_blocks_as_written():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [re.sub(r"\s*\|\|\s*exit 1$", "", line) for line in lines if line and not line.startswith("#")]
    install, tests = block("Install"), block("Tests")
    at = [commands.index(line) for line in install + tests]  # ValueError: a README line CI does not run
    assert at == sorted(at) and at[-1] == len(commands) - 1, "CI runs the blocks in order and ends with the tests"
    exported = [i for i, c in enumerate(commands) if re.fullmatch(r'export CI="\$\{CI:-true\}"', c)]
    assert exported and exported[0] < at[-1], "CI=true is set before the test command runs"
