"""The house plan's room order (docs/ARCHITECTURE.md): a room may import the rooms listed
before it, never after. Every module's imports are walked, lazy ones inside functions included."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import llmkit

# ground floor first
ROOMS = ["utils", "recipe", "scaling", "quant", "tokenizer", "models", "data", "infer", "peft", "train", "eval",
         "align", "serve", "apps", "pipelines", "cli"]
ROOT = Path(llmkit.__file__).parent


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every llmkit import in the file at `path`."""
    package = ["llmkit", *path.relative_to(ROOT).parts[:-1]]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                names = [base] if node.module else [f"{base}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, n) for line, n in found if n.startswith("llmkit.")]


def room_of(module: str) -> str | None:
    name = module.split(".")[1]
    return name if name in ROOMS else None


def upward_imports() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        room = room_of("llmkit." + path.relative_to(ROOT).with_suffix("").as_posix().replace("/", "."))
        if room is None:
            continue
        for line, module in imported_modules(path):
            other = room_of(module)
            if other is not None and ROOMS.index(other) > ROOMS.index(room):
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {room} imports {module} ({other} is above it)")
    return bad


def test_every_room_is_known():
    rooms = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and not p.stem.startswith("_"))}
    assert rooms <= set(ROOMS), f"rooms missing from the order: {sorted(rooms - set(ROOMS))}"


def test_no_import_runs_up_the_house():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The walker is not blind: a train module importing eval is reported (lazy import too)."""
    fake = tmp_path / "llmkit"
    (fake / "train").mkdir(parents=True)
    (fake / "train" / "x.py").write_text("def f():\n    from ..eval.runner import evaluate\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    assert upward_imports() == ["llmkit/train/x.py:2: train imports llmkit.eval.runner (eval is above it)"]
