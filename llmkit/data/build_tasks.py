"""Regenerate the generated built-in tasks (arith, sorting, stdlib-qa) into `builtin/`:

    python -m llmkit.data.build_tasks

Seeded and deterministic. The JSONL outputs are committed, so the splits stay fixed even when a
new Python changes its docstrings; run this only to change the tasks on purpose. The hand-written
tasks (sentiment, perplexity, code) live in `builtin/` as they were written.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import random
from pathlib import Path

BUILTIN = Path(__file__).parent / "builtin"

STDLIB_MODULES = ["os.path", "string", "json", "math", "itertools", "functools", "re", "textwrap", "shutil", "random",
                  "statistics", "collections", "operator", "heapq", "bisect", "base64", "binascii", "zlib", "difflib",
                  "fnmatch", "glob", "copy", "calendar", "html", "urllib.parse", "shlex", "keyword", "unicodedata",
                  "tempfile", "gzip", "colorsys", "secrets", "uuid", "cmath", "ipaddress", "inspect", "pprint"]


def _write(task: str, splits: dict[str, list[dict]]) -> None:
    folder = BUILTIN / task
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                              encoding="utf-8")


def arith(sizes=(2000, 200, 200), seed=0) -> dict[str, list[dict]]:
    """Unique questions a op b with a, b in [0, 99] (× up to 20), split without overlap."""
    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < sum(sizes):
        op = rng.choice("+-x")
        a, b = rng.randint(0, 99), rng.randint(0, 20 if op == "x" else 99)
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        value = a + b if op == "+" else a - b if op == "-" else a * b
        rows.append({"prompt": f"Question: What is {a} {op} {b}?\nAnswer:", "answer": str(value)})
    return _split("arith", rows, sizes)


def sorting(sizes=(1000, 100, 100), seed=1) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < sum(sizes):
        nums = tuple(rng.randint(0, 99) for _ in range(rng.randint(3, 7)))
        if nums in seen:
            continue
        seen.add(nums)
        rows.append({"prompt": f"Sort these numbers in ascending order: {' '.join(map(str, nums))}\nAnswer:",
                     "answer": " ".join(map(str, sorted(nums)))})
    return _split("sorting", rows, sizes)


def _split(task: str, rows: list[dict], sizes) -> dict[str, list[dict]]:
    out, start = {}, 0
    for split, size in zip(("train", "dev", "test"), sizes):
        out[split] = [{"id": f"{task}-{split}-{i:04d}", **r} for i, r in enumerate(rows[start:start + size])]
        start += size
    return out


def _docstring_facts() -> list[tuple[str, str, str]]:
    """(module, function, first docstring line) of public functions, one per distinct line."""
    facts, seen = [], set()
    for module_name in STDLIB_MODULES:
        module = importlib.import_module(module_name)
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
                continue
            doc = (inspect.getdoc(obj) or "").strip().split("\n")[0].strip()
            if not 20 <= len(doc) <= 160 or name.lower() in doc.lower() or doc in seen or "(" in doc[:len(name) + 2]:
                continue
            seen.add(doc)
            facts.append((module_name, name, doc))
    return facts


def stdlib_qa(seed=2) -> dict[str, list[dict]]:
    """Which function of a module a docstring describes; three distractors from the same module.
    The split is by a hash of module.function, so it does not move when other functions change."""
    facts = _docstring_facts()
    by_module: dict[str, list[str]] = {}
    for module, name, _ in facts:
        by_module.setdefault(module, []).append(name)
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for module, name, doc in facts:
        others = sorted(set(by_module[module]) - {name})
        if len(others) < 3:
            continue
        key = f"{module}.{name}"
        rng = random.Random(f"{seed}-{key}")
        choices = rng.sample(others, 3) + [name]
        rng.shuffle(choices)
        bucket = int(hashlib.sha256(key.encode()).hexdigest(), 16) % 10
        split = "test" if bucket < 2 else "dev" if bucket < 3 else "train"
        splits[split].append({
            "id": f"stdlib-qa-{key}",
            "prompt": f"Question: Which function of the `{module}` module does this describe: \"{doc}\"\nAnswer:",
            "answer": name, "choices": choices, "meta": {"module": module, "function": name, "doc": doc}})
    return splits


def main() -> None:
    _write("arith", arith())
    _write("sorting", sorting())
    _write("stdlib-qa", stdlib_qa())
    for task in ("arith", "sorting", "stdlib-qa"):
        sizes = {p.stem: sum(1 for _ in p.open()) for p in sorted((BUILTIN / task).glob("*.jsonl"))}
        print(task, sizes)


if __name__ == "__main__":
    main()
