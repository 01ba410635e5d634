"""The ``stats.json`` report of `prepare_data`, and `format_stats`, its readable table."""

from __future__ import annotations

from typing import Any

from llmkit.data.clean import STEPS, StepStats
from llmkit.data.config import SourceConfig
from llmkit.data.corpus import SourceRead

DEDUP_STEPS = ("exact_dedup", "near_dedup")

_FIXES = {
    "unicode_nfc": "set clean.unicode_nfc=false",
    "strip_html": "the documents are only markup: set clean.strip_html=false or give text sources",
    "pii": "set clean.pii=false",
    "whitespace": "the documents are blank: give sources with text",
    "boilerplate": "every line is shared by many documents: raise clean.boilerplate_doc_fraction or set "
                   "clean.boilerplate=false",
    "quality": "relax clean.min_chars / clean.max_symbol_ratio / clean.max_repetition_ratio, or set "
               "clean.quality=false",
}


def clean_fix(step: str) -> str:
    """How to keep a cleaning step from removing every document."""
    return _FIXES.get(step, f"set clean.{step}=false")


def source_stats(name: str, src: SourceConfig, read: SourceRead, clean: dict[str, StepStats],
                 dedup: dict[str, list[int]], kept: list[str], split: tuple[list[int], list[int]],
                 proportion: float, train_stream: list[tuple[int, int]], index: int,
                 tokens: dict[str, list[int]]) -> dict[str, Any]:
    """The stats entry of one source."""
    removed = {step: {"documents": st.docs_removed, "characters": st.chars_removed} for step, st in clean.items()}
    removed.update({step: {"documents": d, "characters": c} for step, (d, c) in dedup.items()})
    train, val = split
    sampled = [i for s, i in train_stream if s == index]
    train_chars = sum(len(kept[i]) for i in train)
    sampled_chars = sum(len(kept[i]) for i in sampled)
    return {
        "name": name, "path": src.path, "kind": src.kind, "weight": src.weight,
        "files": read.files, "non_utf8_skipped": len(read.non_utf8), "non_utf8_files": read.non_utf8[:20],
        "bad_records": read.bad_records, "blank_skipped": read.empty,
        "documents": len(read.texts), "characters": sum(len(t) for t in read.texts), "bytes": read.bytes,
        "changed": {step: {"documents": st.docs_changed, "characters": st.chars_changed} for step, st in clean.items()},
        "removed": removed,
        "kept": {"documents": len(kept), "characters": sum(len(t) for t in kept)},
        "train_documents": len(train), "val_documents": len(val),
        "mixture": {"proportion": proportion, "sampled_documents": len(sampled), "sampled_characters": sampled_chars,
                    "ratio": sampled_chars / train_chars if train_chars else 0.0},
        "tokens": {"train": tokens["train"][index], "val": tokens["val"][index],
                   "total": tokens["train"][index] + tokens["val"][index]},
    }


def _num(x: float | int) -> str:
    if isinstance(x, float):
        return f"{x:.3f}"
    return f"{x:,}"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[c if isinstance(c, str) else _num(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for k, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_stats(stats: dict[str, Any]) -> str:
    """A readable report of ``stats.json``: sources, what each step did, the splits."""
    sources = stats["sources"]
    out = ["Sources"]
    out.append(_table(
        ["source", "files", "non-UTF-8", "docs read", "chars read", "docs kept", "train docs", "val docs",
         "share", "train tokens", "val tokens"],
        [[s["name"], s["files"], s["non_utf8_skipped"], s["documents"], s["characters"], s["kept"]["documents"],
          s["train_documents"], s["val_documents"], s["mixture"]["proportion"], s["tokens"]["train"],
          s["tokens"]["val"]] for s in sources]))
    steps = [st for st in (*STEPS, *DEDUP_STEPS) if any(st in s["removed"] for s in sources)]
    rows = []
    for step in steps:
        total = {k: 0 for k in ("dc", "cc", "dr", "cr")}
        for s in sources:
            changed = s["changed"].get(step, {"documents": 0, "characters": 0})
            removed = s["removed"].get(step, {"documents": 0, "characters": 0})
            total["dc"] += changed["documents"]
            total["cc"] += changed["characters"]
            total["dr"] += removed["documents"]
            total["cr"] += removed["characters"]
        rows.append([step, total["dc"], total["cc"], total["dr"], total["cr"]])
    out += ["", "Cleaning and dedup (all sources)",
            _table(["step", "docs changed", "chars changed", "docs removed", "chars removed"], rows)]
    out += ["", "Splits",
            _table(["split", "documents", "tokens", "sequences", "dropped tokens"],
                   [[k, v["documents"], v["tokens"], v["sequences"], v["dropped_tokens"]]
                    for k, v in stats["splits"].items()])]
    tok = stats.get("tokenizer", {})
    out += ["", f"mixture temperature {stats['mixture']['temperature']:g}; tokenizer "
                f"{'trained' if tok.get('trained') else 'given'}, vocab {tok.get('vocab_size', '?'):,}; "
                f"{stats.get('non_utf8_skipped', 0)} non-UTF-8 file(s) skipped"]
    return "\n".join(out)
