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


# Links: the README and docs/*.md link only files of this repository (web addresses are not checked here).
_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_TARGETS = [re.compile(r"!?\[[^\]]*\]\(\s*(<[^>]*>|[^)\s]*)"),  # [text](target "title"), ![alt](target)
            re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M),  # [ref]: target
            re.compile(r"""\b(?:href|src)\s*=\s*["']([^"']*)["']""")]  # HTML
_WEB = re.compile(r"^(https?:|mailto:)", re.I)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def link_targets(text: str) -> list[str]:
    """Every link target of a Markdown text, code blocks and code spans left out."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", text))
    return [m.group(1).strip("<>") for pattern in _TARGETS for m in pattern.finditer(text)]


def bad_links(path: Path, text: str | None = None) -> list[str]:
    """The relative links of the Markdown file at `path` that leave the repository or lead nowhere."""
    from urllib.parse import unquote

    text = text if text is not None else path.read_text(encoding="utf-8")
    bad = []
    for target in link_targets(text):
        local = unquote(re.split(r"[#?]", target, maxsplit=1)[0])
        if _WEB.match(target) or not local:  # a web address, or an anchor in this file
            continue
        where = f"{path.relative_to(ROOT)}: {target}"
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or local.startswith(("/", "\\", "~")):
            bad.append(f"{where} (not a path relative to the file)")
            continue
        resolved = (path.parent / local).resolve()
        if not resolved.is_relative_to(ROOT):
            bad.append(f"{where} (outside the repository)")
        elif not resolved.exists():
            bad.append(f"{where} (no such file)")
    return bad


def test_readme_and_docs_link_only_files_of_the_repository():
    files = markdown_files()
    assert (ROOT / "docs" / "ARCHITECTURE.md") in files
    assert [bad for path in files for bad in bad_links(path)] == []


def test_the_link_check_catches_links_that_leave_the_repository():
    """The link the README had (../shared/ARCHITECTURE.md), a missing file and an absolute path are
    caught; web addresses, anchors, existing files and links shown as code are not."""
    text = ("The design is in [`../shared/ARCHITECTURE.md`](../shared/ARCHITECTURE.md).\n"
            "[map](docs/ARCHITECTURE.md#import-order) [gone](docs/NOPE.md \"title\") ![x](/etc/passwd)\n"
            "[site](https://example.com/a) [top](#install) `[code](../x.md)` <a href=\"llmkit/\">pkg</a>\n"
            "[ref]: ../outside.md\n```\n[fenced](../fenced.md)\n```\n")
    assert bad_links(ROOT / "README.md", text) == [
        "README.md: ../shared/ARCHITECTURE.md (outside the repository)",
        "README.md: docs/NOPE.md (no such file)",
        "README.md: /etc/passwd (not a path relative to the file)",
        "README.md: ../outside.md (outside the repository)",
    ]
