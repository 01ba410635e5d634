"""AI feedback (`llmkit align label`): a judge over HTTP labels pairs of a tiny model's sampled
answers, both orders, into preference JSONL that DPO reads back."""

from __future__ import annotations

import json
import re

import pytest

from llmkit.align.prefs import read_preferences
from llmkit.cli.main import main
from tests.fake_openai import fake_openai

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def prefers_more_spaces(prompt: str) -> str:
    """A judge with a taste: the answer with more spaces wins; equal counts are a tie."""
    m = re.search(r"\[Answer A\]\n(.*)\n\n\[Answer B\]\n(.*)\n\nReply with", prompt, re.S)
    a, b = m.group(1).count(" "), m.group(2).count(" ")
    return "A" if a > b else "B" if b > a else "tie"


def test_label_writes_pairs_the_judge_prefers_and_dpo_reads_them(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "prefs.jsonl"
    with fake_openai(prefers_more_spaces) as server:
        code = main(["align", "label", "--model", str(tiny_dirs["tiny-llama"]), "--judge", server["url"],
                     "--api-key", "sk-test", "--prompts", "builtin:arith", "--limit", "12", "--max-new-tokens", "12",
                     "--out", str(out)])
        asked = len(server["requests"])
    assert code == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    summary = json.loads((tmp_path / "prefs.jsonl.summary.json").read_text())
    assert summary["pairs"] == len(rows) > 0 and f"wrote {len(rows)} preference pair(s)" in printed
    assert summary["pairs"] + summary["ties"] + summary["invalid"] + summary["identical"] == 12
    assert asked == 2 * (12 - summary["identical"])  # every pair judged in both orders
    for r in rows:  # the judge's preference, whichever order it was shown in
        assert r["chosen"].count(" ") > r["rejected"].count(" ") and r["verdicts"][0] == r["verdicts"][1]
    pairs, stats = read_preferences(out)
    assert len(pairs) == len(rows) and stats.identical == 0


def test_a_position_biased_judge_labels_nothing(tiny_dirs, tmp_path, capsys):
    with fake_openai(lambda prompt: "A") as server:  # always the first answer shown: every verdict flips
        code = main(["align", "label", "--model", str(tiny_dirs["tiny-llama"]), "--judge", server["url"],
                     "--api-key", "sk-test", "--prompts", "builtin:arith", "--limit", "4", "--max-new-tokens", "8",
                     "--out", str(tmp_path / "p.jsonl")])
    assert code == 2
    assert "no pair was labelled" in capsys.readouterr().err and not (tmp_path / "p.jsonl").exists()
