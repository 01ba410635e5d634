"""Regenerate the generated built-in tasks (arith, arith-small, sorting, stdlib-qa) into `builtin/`:

    python -m llmkit.data.build_tasks            # or only some: python -m llmkit.data.build_tasks arith

Seeded and deterministic. The JSONL outputs are committed, so the splits stay fixed even when a
new Python changes its docstrings; run this only to change the tasks on purpose (stdlib-qa then
follows the docstrings of the Python that runs it). The hand-written tasks (sentiment, perplexity,
code) live in `builtin/` as they were written.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import random
import re
from pathlib import Path

from ..utils import write_text_atomic

log = logging.getLogger(__name__)

BUILTIN = Path(__file__).parent / "builtin"

# Modules whose public functions and classes stdlib-qa asks about: common, pure-Python or always
# built in, and (apart from os and signal, asked about as they are on Linux) the same everywhere.
STDLIB_MODULES = [
    "builtins", "os", "os.path", "sys", "string", "json", "math", "cmath", "itertools", "functools", "operator", "re",
    "textwrap", "shutil", "random", "statistics", "collections", "heapq", "bisect", "base64", "binascii", "zlib",
    "gzip", "bz2", "lzma", "difflib", "fnmatch", "glob", "copy", "calendar", "html", "urllib.parse", "shlex",
    "unicodedata", "tempfile", "secrets", "uuid", "ipaddress", "inspect", "pprint", "time", "datetime", "fractions",
    "decimal", "struct", "csv", "contextlib", "dataclasses", "enum", "types", "typing", "warnings", "traceback",
    "linecache", "ast", "dis", "codecs", "locale", "platform", "sysconfig", "io", "pickle", "zipfile", "tarfile",
    "hashlib", "stat", "filecmp", "mimetypes", "email.utils", "queue", "threading", "subprocess", "logging", "weakref",
    "abc", "gc", "pathlib", "urllib.request", "argparse", "importlib.util", "fileinput", "signal", "sqlite3",
    "zoneinfo", "plistlib", "tomllib", "graphlib", "xml.sax.saxutils", "concurrent.futures",
]
# arith's fourth split, heldout, is 1600 more questions drawn as dev and test were (the same seeded
# stream, continued): with dev and test, 2000 questions that no training ever sees, for measuring
# changes of a few points (a paired interval at 2000 questions is about 0.02 wide each side)
SPLIT_SIZES = {"arith": (2000, 200, 200, 1600), "sorting": (1000, 100, 100), "arith-small": (250, 150, 350)}
SPLIT_NAMES = ("train", "dev", "test", "heldout")
PER_MODULE = 50  # at most this many questions about one module (os alone would give 130)


def _write(task: str, splits: dict[str, list[dict]]) -> None:
    for split, rows in splits.items():
        write_text_atomic(BUILTIN / task / f"{split}.jsonl",
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _arith_item(rng: random.Random) -> dict:
    op = rng.choice("+-x")
    a, b = rng.randint(0, 99), rng.randint(0, 20 if op == "x" else 99)
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return {"prompt": f"Question: What is {a} {op} {b}?\nAnswer:", "answer": str(value)}


def _arith_small_item(rng: random.Random) -> dict:
    # the difficulty was set on dev for SmolLM2-135M-Instruct asked zero-shot through its chat template:
    # arith's two-digit questions gave 4%, a two-digit number +/- a digit 16%, these 34% (between 20% and 80%,
    # where a prompting strategy's gain or loss can show)
    op = rng.choice("+-x")
    a, b = rng.randint(0, 12 if op == "x" else 30), rng.randint(0, 9)
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return {"prompt": f"Question: What is {a} {op} {b}?\nAnswer:", "answer": str(value)}


def _sorting_item(rng: random.Random) -> dict:
    nums = tuple(rng.randint(0, 99) for _ in range(rng.randint(3, 7)))
    return {"prompt": f"Sort these numbers in ascending order: {' '.join(map(str, nums))}\nAnswer:",
            "answer": " ".join(map(str, sorted(nums)))}


GENERATORS = {"arith": _arith_item, "sorting": _sorting_item, "arith-small": _arith_small_item}
# distinct questions; sorting's space is vast
CAPACITY = {"arith": 100 * 100 * 2 + 100 * 21, "arith-small": 31 * 10 * 2 + 13 * 10}


def _unique(draw, n: int, seed: int, exclude: frozenset[str] = frozenset()) -> list[dict]:
    rng = random.Random(seed)
    seen, rows = set(exclude), []
    while len(rows) < n:
        row = draw(rng)
        if row["prompt"] in seen:
            continue
        seen.add(row["prompt"])
        rows.append(row)
    return rows


def arith(sizes=SPLIT_SIZES["arith"], seed=0) -> dict[str, list[dict]]:
    """Unique questions a op b with a, b in [0, 99] (x up to 20), split without overlap."""
    return _split("arith", _unique(_arith_item, sum(sizes), seed), sizes)


def arith_small(sizes=SPLIT_SIZES["arith-small"], seed=3) -> dict[str, list[dict]]:
    """Every question a +/- b with a in [0, 30], b in [0, 9] and a x b with a in [0, 12], b in [0, 9]
    (750 in all), in a seeded order, split without overlap: test 350, dev 150, train 250."""
    return _split("arith-small", _unique(_arith_small_item, sum(sizes), seed), sizes)


def sorting(sizes=SPLIT_SIZES["sorting"], seed=1) -> dict[str, list[dict]]:
    """Unique lists of 3-7 numbers in [0, 99], split without overlap."""
    return _split("sorting", _unique(_sorting_item, sum(sizes), seed), sizes)


def fresh_train(task: str, n: int, seed: int = 1000) -> list[dict]:
    """`n` training examples of a generated task (arith, sorting) drawn from the same generator
    as its shipped splits, none of them a question of its dev, test or heldout split: a train split
    as large as wanted, for skills a small model only learns from many distinct examples. Seeded."""
    from .tasks import held_out_splits, load_task

    if task not in GENERATORS:
        raise ValueError(f"task {task!r} is not generated: only {', '.join(GENERATORS)} have fresh training examples")
    splits = held_out_splits(task)
    held = frozenset(ex.prompt for split in splits for ex in load_task(task, split))
    room = CAPACITY.get(task, 10**12) - len(held)
    if n > room:
        raise ValueError(f"{task} has only {room} distinct questions outside its {', '.join(splits)} splits; "
                         f"asked for {n}")
    rows = _unique(GENERATORS[task], n, seed, exclude=held)
    return [{"id": f"{task}-fresh-{i:05d}", **r} for i, r in enumerate(rows)]


def _split(task: str, rows: list[dict], sizes) -> dict[str, list[dict]]:
    out, start = {}, 0
    for split, size in zip(SPLIT_NAMES, sizes):
        out[split] = [{"id": f"{task}-{split}-{i:04d}", **r} for i, r in enumerate(rows[start:start + size])]
        start += size
    return out


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line ("" if there is none)."""
    if not isinstance(doc, str):
        return ""
    paragraph = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    match = re.match(r"(.+?[.!?])(\s|$)", paragraph)
    return (match.group(1) if match else paragraph).strip()


def public_names(module) -> list[tuple[str, str, object]]:
    """(name, "function" | "class", object) of a module's public API: its __all__ where it has one,
    else the names it defines itself (or in its C accelerator `_name`)."""
    exported = getattr(module, "__all__", None)
    own = {module.__name__, "_" + module.__name__.rsplit(".", 1)[-1]}
    if module.__name__ == "os":
        own.add("posix")
    out = []
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or (exported is not None and name not in exported):
            continue
        if exported is None and getattr(obj, "__module__", None) not in own and module.__name__ != "builtins":
            continue
        if inspect.isclass(obj):
            out.append((name, "class", obj))
        elif inspect.isroutine(obj):
            out.append((name, "function", obj))
    return out


def _doc(kind: str, obj) -> str:
    # a class's own docstring only: inspect.getdoc would inherit a base class's text
    return first_sentence(vars(obj).get("__doc__") if kind == "class" else getattr(obj, "__doc__", None))


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _mentions(text: str, name: str) -> bool:
    """Whether `text` gives `name` away ("shake-256" names shake_256): letters and digits compared."""
    return _squash(name) in _squash(text)


def _digest(fact: dict) -> str:
    return hashlib.sha256(f"{fact['module']}.{fact['name']}".encode()).hexdigest()


def docstring_facts() -> list[dict]:
    """One fact per public function or class whose docstring's first sentence is 20-200 characters,
    does not name the object, does not start with a call signature, and is not shared with another
    name of the same module (aliases, copied docstrings); with its candidate distractors."""
    facts = []
    for module_name in STDLIB_MODULES:
        module = importlib.import_module(module_name)
        items = [(name, kind, obj, _doc(kind, obj)) for name, kind, obj in public_names(module)]
        doc_count: dict[str, int] = {}
        for _, _, _, doc in items:
            doc_count[doc] = doc_count.get(doc, 0) + 1
        for name, kind, obj, doc in items:
            if (not 20 <= len(doc) <= 200 or doc_count[doc] > 1 or _mentions(doc, name)
                    or re.match(r"[\w.]+\(.*\)", doc)):
                continue
            # distractors: same module and kind, not the same object, not named in the docstring
            others = sorted(n for n, k, o, d in items if k == kind and n != name and o is not obj and d != doc
                            and not _mentions(doc, n))
            facts.append({"module": module_name, "name": name, "kind": kind, "doc": doc, "others": others})
    return facts


def stdlib_qa(seed=2) -> dict[str, list[dict]]:
    """Which function (class) of a module a docstring describes; three distractors of the same kind
    from the same module. The split is by a hash of module.name, so an example does not move when
    other functions come or go: 20% test, 10% dev, 70% train. At most PER_MODULE per module."""
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    facts = [f for f in docstring_facts() if len(f["others"]) >= 3]
    kept = set()
    for module in STDLIB_MODULES:  # the cap keeps the questions whose hash comes first: a stable choice
        kept |= {_digest(f) for f in sorted((f for f in facts if f["module"] == module), key=_digest)[:PER_MODULE]}
    for fact in facts:
        module, name = fact["module"], fact["name"]
        if _digest(fact) not in kept:
            continue
        key = f"{module}.{name}"
        rng = random.Random(f"{seed}-{key}")
        choices = rng.sample(fact["others"], 3) + [name]
        rng.shuffle(choices)
        bucket = int(_digest(fact), 16) % 10
        split = "test" if bucket < 2 else "dev" if bucket < 3 else "train"
        splits[split].append({
            "id": f"stdlib-qa-{key}",
            "prompt": f"Question: Which {fact['kind']} of the `{module}` module does this describe: "
                      f"\"{fact['doc']}\"\nAnswer:",
            "answer": name, "choices": choices, "meta": {"module": module, "kind": fact["kind"]}})
    return splits


def main(tasks: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    builders = {"arith": arith, "arith-small": arith_small, "sorting": sorting, "stdlib-qa": stdlib_qa}
    unknown = sorted(set(tasks or ()) - set(builders))
    if unknown:
        raise SystemExit(f"not a generated task: {', '.join(unknown)} (generated: {', '.join(builders)})")
    for task, build in builders.items():
        if tasks and task not in tasks:
            continue
        splits = build()
        _write(task, splits)
        log.info("%s: %s", task, {split: len(rows) for split, rows in splits.items()})


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
