"""`llmkit quickstart` end to end on a short budget (the 5-minute default is measured in the notes)."""

from __future__ import annotations

import json
import subprocess
import sys

import llmkit


def test_quickstart_one_minute(quickstart_run):
    out, r = quickstart_run
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"llmkit chat --model {out}" in r.stdout and "llmkit generate --model" in r.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["budget_s"] == 60
    assert 0.6 * 60 <= s["total_s"] <= 1.4 * 60  # the 5-minute run is held to ±20%; overheads weigh more here
    assert s["final_val_loss"] < s["unigram_entropy"]  # it learned more than token frequencies
    report = (out / "report.md").read_text()
    for needle in ("unigram entropy", "bigram cross-entropy", "loss.png", "## Samples"):
        assert needle in report
    assert (out / "loss.png").stat().st_size > 1000
    llm = llmkit.load(out)
    assert llm.generate("def ", max_new_tokens=8, temperature=0)


def test_quickstart_refuses_an_existing_run(tmp_path):
    (tmp_path / "qs").mkdir()
    (tmp_path / "qs" / "x").write_text("keep me")
    r = subprocess.run([sys.executable, "-m", "llmkit", "quickstart", "--minutes", "1", "--out", str(tmp_path / "qs")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert (tmp_path / "qs" / "x").read_text() == "keep me"
